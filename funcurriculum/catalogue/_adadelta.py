"""Adadelta (torch.optim.Adadelta)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.adadelta import adadelta as _torch_adadelta

from .. import _hparams as V
from ..lr_schedules import Schedule
from ..optimizer import Optimizer
from ._common import build, cast, kernels, torch_steps, zeros

Tensor = torch.Tensor


@dataclass(frozen=True)
class AdadeltaRule:
    """torch.optim.Adadelta's update for one leaf (state: ``square_avg``, ``acc_delta``)."""

    rho: float = 0.9
    eps: float = 1e-6
    weight_decay: float = 0.0

    fields = ("square_avg", "acc_delta")

    def init(self, p: Tensor) -> tuple[Tensor, ...]:
        return zeros(p), zeros(p)

    def step(self, p, g, bufs, count, lr):
        sq, acc = bufs
        if self.weight_decay != 0:
            g = g + self.weight_decay * p
        sq = torch.addcmul(sq * self.rho, g, g, value=1 - self.rho)
        std = (sq + self.eps).sqrt()
        delta = (acc + self.eps).sqrt() / std * g
        acc = torch.addcmul(acc * self.rho, delta, delta, value=1 - self.rho)
        return p - cast(lr, p) * delta, (sq, acc)


def _foreach_inplace(rule, ps, gs, bufs, counts, lr, *, first, maximize) -> None:
    """torch.optim.Adadelta's multi-tensor (foreach) update, in place on one group."""
    _torch_adadelta(
        ps,
        gs,
        bufs[0],
        bufs[1],
        torch_steps(counts),
        foreach=True,
        lr=lr,
        rho=rule.rho,
        eps=rule.eps,
        weight_decay=rule.weight_decay,
        maximize=maximize,
    )


def adadelta(
    lr: float | Schedule = 1.0,
    rho: float = 0.9,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    *,
    maximize: bool = False,
    differentiable: bool = False,
    weight_decay_mask: Any = None,
) -> Optimizer:
    """Adadelta with torch.optim.Adadelta's keywords, defaults and exact update rule.

    Args:
      lr: a float or a schedule ``step -> lr`` (scales the delta; torch's default 1.0).
      rho: coefficient of the running averages.
      eps: added inside both square roots.
      weight_decay: L2 penalty added to the gradient.
      maximize: maximise the objective (the engine negates the gradients).
      differentiable: let autograd run through the update (see `Optimizer`).
      weight_decay_mask: bool pytree (or callable) saying which leaves decay.

    Returns:
      An `Optimizer`.

    Example:
      >>> import torch, funcurriculum as fc
      >>> opt = fc.adadelta(1.0, eps=0.01)
      >>> p = {"w": torch.ones(2)}
      >>> p, state = opt.update(p, {"w": torch.ones(2)}, opt.init(p))
      >>> p["w"]
      tensor([0.6985, 0.6985])
    """
    w = "fc.adadelta"
    rule = AdadeltaRule(
        rho=V.number(w, "rho", rho, high=1.0),
        eps=V.number(w, "eps", eps),
        weight_decay=V.number(w, "weight_decay", weight_decay),
    )
    return build(
        rule,
        lr,
        "adadelta",
        maximize=maximize,
        differentiable=differentiable,
        weight_decay_mask=weight_decay_mask,
        elementwise=True,
        kernels=kernels(_foreach_inplace),
    )
