"""Adadelta (torch.optim.Adadelta)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.adadelta import adadelta as _torch_adadelta

from ..lr_schedules import Schedule
from ..optimizer import Optimizer
from ._common import LeafShaped, cast, decay
from ._factory import Catalogued, torch_kernel


@dataclass(frozen=True)
class AdadeltaRule(LeafShaped):
    """torch.optim.Adadelta's update for one leaf (state: ``square_avg``, ``acc_delta``)."""

    rho: float = 0.9
    eps: float = 1e-6
    weight_decay: float = 0.0

    fields = ("square_avg", "acc_delta")

    def step(self, p, g, bufs, count, lr):
        sq, acc = bufs
        p, g = decay(self, p, g, lr)
        sq = torch.addcmul(sq * self.rho, g, g, value=1 - self.rho)
        std = (sq + self.eps).sqrt()
        delta = (acc + self.eps).sqrt() / std * g
        acc = torch.addcmul(acc * self.rho, delta, delta, value=1 - self.rho)
        return p - cast(lr, p) * delta, (sq, acc)


_inplace = torch_kernel(_torch_adadelta)
_SPEC = Catalogued("adadelta", AdadeltaRule, inplace=_inplace)


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
      An `Optimizer` whose state holds ``square_avg`` and ``acc_delta`` per leaf.

    Example:
      >>> import torch, funcurriculum as fc
      >>> opt = fc.adadelta(1.0, eps=0.01)
      >>> p = {"w": torch.ones(2)}
      >>> p, state = opt.update(p, {"w": torch.ones(2)}, opt.init(p))
      >>> p["w"]
      tensor([0.6985, 0.6985])
    """
    return _SPEC.build(locals())
