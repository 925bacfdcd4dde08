"""RMSprop (torch.optim.RMSprop)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.rmsprop import rmsprop as _torch_rmsprop

from .. import _hparams as V
from ..lr_schedules import Schedule
from ..optimizer import Optimizer
from ._common import build, cast, kernels, torch_steps, zeros

Tensor = torch.Tensor


@dataclass(frozen=True)
class RMSpropRule:
    """torch.optim.RMSprop's update for one leaf (state: ``square_avg``, then
    ``momentum_buffer`` when ``momentum > 0``, then ``grad_avg`` when ``centered``)."""

    alpha: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.0
    centered: bool = False

    @property
    def fields(self) -> tuple[str, ...]:
        return (
            ("square_avg",)
            + (("momentum_buffer",) if self.momentum > 0 else ())
            + (("grad_avg",) if self.centered else ())
        )

    def init(self, p: Tensor) -> tuple[Tensor, ...]:
        return tuple(zeros(p) for _ in self.fields)

    def step(self, p, g, bufs, count, lr):
        lr = cast(lr, p)
        sq, rest = bufs[0], list(bufs[1:])
        if self.weight_decay != 0:
            g = g + self.weight_decay * p
        sq = torch.addcmul(sq * self.alpha, g, g, value=1 - self.alpha)
        new = [sq]
        if self.centered:
            ga = torch.lerp(rest[-1], g, 1 - self.alpha)
            avg = torch.addcmul(sq, ga, ga, value=-1).sqrt()
        else:
            avg = sq.sqrt()
        avg = avg + self.eps
        if self.momentum > 0:
            buf = torch.addcdiv(rest[0] * self.momentum, g, avg)
            new.append(buf)
            p = p - lr * buf
        else:
            p = p - lr * (g / avg)
        if self.centered:
            new.append(ga)
        return p, tuple(new)


def _foreach_inplace(rule, ps, gs, bufs, counts, lr, *, first, maximize) -> None:
    """torch.optim.RMSprop's multi-tensor (foreach) update, in place on one group."""
    b = dict(zip(rule.fields, bufs))
    _torch_rmsprop(
        ps,
        gs,
        b["square_avg"],
        b.get("grad_avg", []),
        b.get("momentum_buffer", []),
        torch_steps(counts),
        foreach=True,
        maximize=maximize,
        lr=lr,
        alpha=rule.alpha,
        eps=rule.eps,
        weight_decay=rule.weight_decay,
        momentum=rule.momentum,
        centered=rule.centered,
    )


def rmsprop(
    lr: float | Schedule = 1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
    *,
    maximize: bool = False,
    differentiable: bool = False,
    weight_decay_mask: Any = None,
) -> Optimizer:
    """RMSprop with torch.optim.RMSprop's keywords, defaults and exact update rule.

    Args:
      lr: a float or a schedule ``step -> lr``.
      alpha: smoothing constant of the squared-gradient average.
      eps: added to the denominator.
      weight_decay: L2 penalty added to the gradient.
      momentum: momentum factor (0: no momentum buffer).
      centered: normalise by the estimated variance of the gradient.
      maximize: maximise the objective (the engine negates the gradients).
      differentiable: let autograd run through the update (see `Optimizer`).
      weight_decay_mask: bool pytree (or callable) saying which leaves decay.

    Returns:
      An `Optimizer`.

    Example:
      >>> import torch, funcurriculum as fc
      >>> opt = fc.rmsprop(0.01)
      >>> p = {"w": torch.ones(2)}
      >>> p, state = opt.update(p, {"w": torch.ones(2)}, opt.init(p))
      >>> p["w"]
      tensor([0.9000, 0.9000])
    """
    w = "fc.rmsprop"
    rule = RMSpropRule(
        alpha=V.number(w, "alpha", alpha),
        eps=V.number(w, "eps", eps),
        weight_decay=V.number(w, "weight_decay", weight_decay),
        momentum=V.number(w, "momentum", momentum),
        centered=V.flag(w, "centered", centered),
    )
    return build(
        rule,
        lr,
        "rmsprop",
        maximize=maximize,
        differentiable=differentiable,
        weight_decay_mask=weight_decay_mask,
        elementwise=True,
        kernels=kernels(_foreach_inplace),
    )
