"""RAdam (torch.optim.RAdam)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.radam import radam as _torch_radam

from ..lr_schedules import Schedule
from ..optimizer import Optimizer
from ._common import LeafShaped, cast, decay, step64
from ._factory import Catalogued, torch_kernel


@dataclass(frozen=True)
class RAdamRule(LeafShaped):
    """torch.optim.RAdam's update for one leaf (state: ``exp_avg``, ``exp_avg_sq``)."""

    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled_weight_decay: bool = False

    fields = ("exp_avg", "exp_avg_sq")

    def step(self, p, g, bufs, count, lr):
        m, v = bufs
        p, g = decay(self, p, g, lr)
        b1, b2 = self.beta1, self.beta2
        m = torch.lerp(m, g, 1 - b1)
        v = torch.addcmul(v * b2, g, g, value=1 - b2)
        t = step64(count)
        bc1 = 1 - b1**t
        bc2 = 1 - b2**t
        rho_inf = 2 / (1 - b2) - 1
        rho_t = rho_inf - 2 * t * b2**t / bc2
        rectified = rho_t > 5.0
        # the rectification term where it is taken; a harmless value elsewhere (the
        # branch not taken must stay finite for autograd with differentiable=True)
        r = torch.where(rectified, rho_t, torch.full_like(rho_t, 6.0))
        rect = ((r - 4) * (r - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * r)) ** 0.5
        base = (m / cast(bc1, p)) * cast(lr, p)
        adaptive = cast(bc2**0.5, p) / (v.sqrt() + self.eps)
        update = torch.where(rectified, base * adaptive * cast(rect, p), base)
        return p - update, (m, v)


# (torch's RAdam for-loop is 1.15x its foreach on CPU: it allocates a temporary per term)
_inplace = torch_kernel(_torch_radam, cpu_foreach=True)
_SPEC = Catalogued("radam", RAdamRule, inplace=_inplace)


def radam(
    lr: float | Schedule = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    *,
    maximize: bool = False,
    differentiable: bool = False,
    weight_decay_mask: Any = None,
) -> Optimizer:
    """RAdam with torch.optim.RAdam's keywords, defaults and exact update rule.

    The rectification (``rho_t > 5``) and bias corrections use each leaf's own count, so a
    leaf unfrozen later starts with the un-rectified SGD-with-momentum steps of a fresh
    torch optimizer.

    Args:
      lr: a float or a schedule ``step -> lr``.
      betas: coefficients of the running averages.
      eps: added to the denominator.
      weight_decay: L2 penalty (or decoupled decay, see ``decoupled_weight_decay``).
      decoupled_weight_decay: decay the params as AdamW instead of adding to the gradient.
      maximize: maximise the objective (the engine negates the gradients).
      differentiable: let autograd run through the update (see `Optimizer`).
      weight_decay_mask: bool pytree (or callable) saying which leaves decay.

    Returns:
      An `Optimizer` whose state holds ``exp_avg`` and ``exp_avg_sq`` per leaf.

    Example:
      >>> import torch, funcurriculum as fc
      >>> opt = fc.radam(0.1)
      >>> p = {"w": torch.ones(1)}
      >>> state, sizes = opt.init(p), []
      >>> for _ in range(7):  # rectified from the leaf's 6th update on
      ...     new, state = opt.update(p, {"w": torch.ones(1)}, state)
      ...     sizes.append(round(float(p["w"] - new["w"]), 4))
      ...     p = new
      >>> sizes
      [0.1, 0.1, 0.1, 0.1, 0.1, 0.0026, 0.0033]
    """
    return _SPEC.build(locals())
