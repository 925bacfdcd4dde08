"""RMSprop (torch.optim.RMSprop)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.rmsprop import rmsprop as _torch_rmsprop

from ..lr_schedules import Schedule
from ..optimizer import Optimizer
from ._common import LeafShaped, cast, decay
from ._factory import Catalogued, torch_kernel


@dataclass(frozen=True)
class RMSpropRule(LeafShaped):
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

    def step(self, p, g, bufs, count, lr):
        p, g = decay(self, p, g, lr)
        lr = cast(lr, p)
        sq, rest = bufs[0], list(bufs[1:])
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


def _torch_order(rule, ps, bufs):
    """torch's order of the buffer lists (an unused one empty): square_avg, grad_avg,
    momentum_buffer."""
    b = dict(zip(rule.fields, bufs))
    return b["square_avg"], b.get("grad_avg", []), b.get("momentum_buffer", [])


_inplace = torch_kernel(_torch_rmsprop, _torch_order)
_SPEC = Catalogued("rmsprop", RMSpropRule, inplace=_inplace)


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
      An `Optimizer` whose state holds ``square_avg`` (then ``momentum_buffer`` and
      ``grad_avg`` where used) per leaf.

    Example:
      >>> import torch, funcurriculum as fc
      >>> opt = fc.rmsprop(0.01)
      >>> p = {"w": torch.ones(2)}
      >>> p, state = opt.update(p, {"w": torch.ones(2)}, opt.init(p))
      >>> p["w"]  # 0.01 / sqrt(1 - alpha)
      tensor([0.9000, 0.9000])
      >>> sorted(fc.rmsprop(0.01, momentum=0.9, centered=True).init(p))
      ['count', 'grad_avg', 'momentum_buffer', 'square_avg', 'step']
    """
    return _SPEC.build(locals())
