"""Adamax (torch.optim.Adamax)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.adamax import adamax as _torch_adamax

from ..lr_schedules import Schedule
from ..optimizer import Optimizer
from ._common import LeafShaped, cast, decay, step64
from ._factory import Catalogued, torch_kernel


@dataclass(frozen=True)
class AdamaxRule(LeafShaped):
    """torch.optim.Adamax's update for one leaf (state: ``exp_avg``, ``exp_inf``)."""

    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0

    fields = ("exp_avg", "exp_inf")

    def step(self, p, g, bufs, count, lr):
        m, u = bufs
        p, g = decay(self, p, g, lr)
        m = torch.lerp(m, g, 1 - self.beta1)
        u = torch.maximum(u * self.beta2, g.abs() + self.eps)
        clr = cast(lr / (1 - self.beta1 ** step64(count)), p)
        return p - clr * (m / u), (m, u)


_inplace = torch_kernel(_torch_adamax)
_SPEC = Catalogued("adamax", AdamaxRule, inplace=_inplace)


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
      An `Optimizer` whose state holds ``exp_avg`` and ``exp_inf`` per leaf.

    Example:
      >>> import torch, funcurriculum as fc
      >>> opt = fc.adamax(0.1)
      >>> p = {"w": torch.ones(2)}
      >>> p, state = opt.update(p, {"w": torch.tensor([1e-3, 1e3])}, opt.init(p))
      >>> p["w"]  # the first step is lr whatever the gradient's scale
      tensor([0.9000, 0.9000])
    """
    return _SPEC.build(locals())
