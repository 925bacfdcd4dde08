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
    (foreach) ops on CUDA, a for-loop of in-place ops on CPU."""
    (ms,) = bufs
    if ps[0].device.type != "cuda":  # CPU: a for-loop of in-place ops (fewer temporaries)
        for p, g, m in zip(ps, gs, ms):
            g = -g if maximize else g
            u = g * (1 - rule.beta1)
            u.add_(m * rule.beta1).sign_()
            m.mul_(rule.beta2).add_(g * (1 - rule.beta2))
            if rule.weight_decay != 0:
                u.add_(p * rule.weight_decay)
            p.sub_(u.mul_(lr.to(p.dtype) if isinstance(lr, Tensor) else lr))
        return
    if maximize:
        gs = torch._foreach_neg(gs)
    u = torch._foreach_mul(gs, 1 - rule.beta1)
    torch._foreach_add_(u, torch._foreach_mul(ms, rule.beta1))
    torch._foreach_sign_(u)
    torch._foreach_mul_(ms, rule.beta2)
    torch._foreach_add_(ms, torch._foreach_mul(gs, 1 - rule.beta2))
    if rule.weight_decay != 0:
        torch._foreach_add_(u, torch._foreach_mul(ps, rule.weight_decay))
    if isinstance(lr, Tensor):
        torch._foreach_sub_(ps, torch._foreach_mul(u, lr.to(ps[0].dtype)))
    else:
        torch._foreach_sub_(ps, torch._foreach_mul(u, lr))


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
