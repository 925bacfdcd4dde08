"""Adagrad (torch.optim.Adagrad), with torch's fused CPU kernel declared."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..lr_schedules import Schedule
from ..optimizer import Optimizer
from ._common import cast, decay, step64
from ._factory import Catalogued

Tensor = torch.Tensor


@dataclass(frozen=True)
class AdagradRule:
    """torch.optim.Adagrad's update for one leaf (state: ``sum``)."""

    lr_decay: float = 0.0
    weight_decay: float = 0.0
    initial_accumulator_value: float = 0.0
    eps: float = 1e-10

    fields = ("sum",)

    def init(self, p: Tensor) -> tuple[Tensor, ...]:
        v = self.initial_accumulator_value
        # a complex leaf is a real pair: both parts start at v (torch: complex(v, v))
        fill = complex(v, v) if p.is_complex() else v
        return (torch.full_like(p, fill, memory_format=torch.preserve_format),)

    def step(self, p, g, bufs, count, lr):
        (s,) = bufs
        p, g = decay(self, p, g, lr)
        if self.lr_decay != 0:
            clr = cast(lr / (1 + (step64(count) - 1) * self.lr_decay), p)
        else:
            clr = cast(lr, p)
        s = torch.addcmul(s, g, g, value=1)
        std = s.sqrt() + self.eps
        return p - clr * (g / std), (s,)


def _fused_inplace(rule, ps, gs, bufs, counts, lr, *, first, maximize) -> None:
    """torch's fused Adagrad kernel, in place on one group (counts already incremented)."""
    torch._fused_adagrad_(
        ps,
        gs,
        bufs[0],
        counts,
        lr=lr,
        lr_decay=rule.lr_decay,
        weight_decay=rule.weight_decay,
        eps=rule.eps,
        maximize=maximize,
    )


def _fused_accepts(p: Tensor) -> bool:
    # torch's fused Adagrad is declared for CPU; float16 / bfloat16 leaves take the
    # engine's float32 path so that every path gives the same bits
    return p.is_cpu and p.dtype in (torch.float32, torch.float64)


_SPEC = Catalogued("adagrad", AdagradRule, inplace=_fused_inplace, accepts=_fused_accepts)


def adagrad(
    lr: float | Schedule = 1e-2,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
    *,
    maximize: bool = False,
    differentiable: bool = False,
    weight_decay_mask: Any = None,
) -> Optimizer:
    """Adagrad with torch.optim.Adagrad's keywords, defaults and exact update rule.

    ``lr_decay`` uses each leaf's own update count (``lr / (1 + (count - 1) * lr_decay)``),
    so a leaf unfrozen later starts undecayed, as in a fresh torch optimizer. On CPU the
    update runs torch's fused Adagrad kernel.

    Args:
      lr: a float or a schedule ``step -> lr``.
      lr_decay: learning-rate decay per update of the leaf.
      weight_decay: L2 penalty added to the gradient.
      initial_accumulator_value: starting value of the squared-gradient sum.
      eps: added to the denominator.
      maximize: maximise the objective (the engine negates the gradients).
      differentiable: let autograd run through the update (see `Optimizer`).
      weight_decay_mask: bool pytree (or callable) saying which leaves decay.

    Returns:
      An `Optimizer` whose state holds ``sum`` per leaf.

    Example:
      >>> import torch, funcurriculum as fc
      >>> opt = fc.adagrad(0.5, lr_decay=1.0)
      >>> p = {"w": torch.ones(1)}
      >>> state = opt.init(p)
      >>> for _ in range(2):  # lr 0.5, then 0.5 / 2 over sqrt(sum) = sqrt(2)
      ...     p, state = opt.update(p, {"w": torch.ones(1)}, state)
      >>> round(float(p["w"]), 4), float(state["sum"]["w"])
      (0.3232, 2.0)
    """
    return _SPEC.build(locals())
