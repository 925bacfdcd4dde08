"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"; as optax.lion)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..lr_schedules import Schedule
from ..optimizer import Optimizer
from ._common import LeafShaped, cast
from ._factory import Catalogued

Tensor = torch.Tensor


@dataclass(frozen=True)
class LionRule(LeafShaped):
    """Lion's update for one leaf (state: ``exp_avg``, optax's ``mu``)."""

    beta1: float = 0.9
    beta2: float = 0.99
    weight_decay: float = 0.0

    fields = ("exp_avg",)

    def step(self, p, g, bufs, count, lr):
        (m,) = bufs
        u = torch.sign((1 - self.beta1) * g + self.beta1 * m)
        m = (1 - self.beta2) * g + self.beta2 * m
        if self.weight_decay != 0:
            u = u + self.weight_decay * p
        return p - cast(lr, p) * u, (m,)


def _inplace(rule, ps, gs, bufs, counts, lr, *, first, maximize) -> None:
    """Lion in place on one group, the arithmetic of `LionRule.step`: multi-tensor
    (foreach) ops on CUDA, a for-loop of in-place ops on CPU (fewer temporaries there)."""
    kernel = _forloop if ps[0].is_cpu else _foreach
    kernel(rule, ps, gs, bufs, counts, lr, first=first, maximize=maximize)


def _forloop(rule, ps, gs, bufs, counts, lr, *, first, maximize) -> None:
    """Per leaf: one temporary (the update), every scale folded into an ``alpha``."""
    (ms,) = bufs
    s = -1.0 if maximize else 1.0
    b1, b2, wd = rule.beta1, rule.beta2, rule.weight_decay
    for p, g, m in zip(ps, gs, ms):
        u = torch.mul(g, s * (1 - b1))
        u.add_(m, alpha=b1).sign_()
        m.mul_(b2).add_(g, alpha=s * (1 - b2))
        if wd != 0:
            u.add_(p, alpha=wd)
        if isinstance(lr, Tensor):
            p.sub_(u.mul_(lr.to(p.dtype)))
        else:
            p.add_(u, alpha=-lr)


def _foreach(rule, ps, gs, bufs, counts, lr, *, first, maximize) -> None:
    """The same with multi-tensor ops: one list of temporaries (the updates)."""
    (ms,) = bufs
    s = -1.0 if maximize else 1.0
    b1, b2, wd = rule.beta1, rule.beta2, rule.weight_decay
    u = torch._foreach_mul(gs, s * (1 - b1))
    torch._foreach_add_(u, ms, alpha=b1)
    torch._foreach_sign_(u)
    torch._foreach_mul_(ms, b2)
    torch._foreach_add_(ms, gs, alpha=s * (1 - b2))
    if wd != 0:
        torch._foreach_add_(u, ps, alpha=wd)
    if isinstance(lr, Tensor):
        torch._foreach_mul_(u, lr.to(ps[0].dtype))
        torch._foreach_sub_(ps, u)
    else:
        torch._foreach_add_(ps, u, alpha=-lr)


_SPEC = Catalogued("lion", LionRule, inplace=_inplace)


def lion(
    lr: float | Schedule,
    betas: tuple[float, float] = (0.9, 0.99),
    weight_decay: float = 0.0,
    *,
    maximize: bool = False,
    differentiable: bool = False,
    weight_decay_mask: Any = None,
) -> Optimizer:
    """Lion: the sign of an interpolated momentum, as ``optax.lion`` computes it.

    ``u = sign((1 - b1) * g + b1 * m)``, ``m = (1 - b2) * g + b2 * m``,
    ``p = p - lr * (u + weight_decay * p)`` (decoupled decay scaled by the lr, as optax;
    optax's default ``weight_decay`` is 1e-3, ours 0.0). torch.optim has no Lion. Lion's
    updates have unit size per coordinate: use a learning rate 3-10x smaller than AdamW's.

    Args:
      lr: a float or a schedule ``step -> lr``.
      betas: interpolation coefficient of the update, and decay of the momentum.
      weight_decay: decoupled weight decay (multiplied by the lr).
      maximize: maximise the objective (the engine negates the gradients).
      differentiable: let autograd run through the update (see `Optimizer`; ``sign`` has a
        zero derivative).
      weight_decay_mask: bool pytree (or callable) saying which leaves decay.

    Returns:
      An `Optimizer` whose state holds ``exp_avg`` per leaf.

    Example:
      >>> import torch, funcurriculum as fc
      >>> opt = fc.lion(0.1)
      >>> p = {"w": torch.ones(2)}
      >>> p, state = opt.update(p, {"w": torch.tensor([2.0, -3.0])}, opt.init(p))
      >>> p["w"]
      tensor([0.9000, 1.1000])
    """
    return _SPEC.build(locals())
