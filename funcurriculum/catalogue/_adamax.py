"""Adamax (torch.optim.Adamax)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.adamax import adamax as _torch_adamax

from .. import _hparams as V
from ..lr_schedules import Schedule
from ..optimizer import Optimizer
from ._common import build, cast, kernels, step64, torch_steps, zeros

Tensor = torch.Tensor


@dataclass(frozen=True)
class AdamaxRule:
    """torch.optim.Adamax's update for one leaf (state: ``exp_avg``, ``exp_inf``)."""

    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0

    fields = ("exp_avg", "exp_inf")

    def init(self, p: Tensor) -> tuple[Tensor, ...]:
        return zeros(p), zeros(p)

    def step(self, p, g, bufs, count, lr):
        m, u = bufs
        if self.weight_decay != 0:
            g = g + self.weight_decay * p
        m = torch.lerp(m, g, 1 - self.beta1)
        u = torch.maximum(u * self.beta2, g.abs() + self.eps)
        clr = cast(lr / (1 - self.beta1 ** step64(count)), p)
        return p - clr * (m / u), (m, u)


def _foreach_inplace(rule, ps, gs, bufs, counts, lr, *, first, maximize) -> None:
    """torch.optim.Adamax's multi-tensor (foreach) update, in place on one group."""
    _torch_adamax(
        ps,
        gs,
        bufs[0],
        bufs[1],
        torch_steps(counts),
        foreach=True,
        maximize=maximize,
        eps=rule.eps,
        beta1=rule.beta1,
        beta2=rule.beta2,
        lr=lr,
        weight_decay=rule.weight_decay,
    )


def adamax(
    lr: float | Schedule = 2e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    *,
    maximize: bool = False,
    differentiable: bool = False,
    weight_decay_mask: Any = None,
) -> Optimizer:
    """Adamax (Adam with an infinity norm) with torch.optim.Adamax's keywords, defaults and
    exact update rule; the bias correction uses each leaf's own count.

    Args:
      lr: a float or a schedule ``step -> lr``.
      betas: coefficients of the running average and of the infinity norm.
      eps: added to the infinity norm.
      weight_decay: L2 penalty added to the gradient.
      maximize: maximise the objective (the engine negates the gradients).
      differentiable: let autograd run through the update (see `Optimizer`).
      weight_decay_mask: bool pytree (or callable) saying which leaves decay.

    Returns:
      An `Optimizer`.

    Example:
      >>> import torch, funcurriculum as fc
      >>> opt = fc.adamax(0.1)
      >>> p = {"w": torch.ones(2)}
      >>> p, state = opt.update(p, {"w": torch.ones(2)}, opt.init(p))
      >>> p["w"]
      tensor([0.9000, 0.9000])
    """
    w = "fc.adamax"
    b1, b2 = V.betas(w, betas)
    rule = AdamaxRule(b1, b2, V.number(w, "eps", eps), V.number(w, "weight_decay", weight_decay))
    return build(
        rule,
        lr,
        "adamax",
        maximize=maximize,
        differentiable=differentiable,
        weight_decay_mask=weight_decay_mask,
        elementwise=True,
        kernels=kernels(_foreach_inplace),
    )
