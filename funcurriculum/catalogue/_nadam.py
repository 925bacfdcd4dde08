"""NAdam (torch.optim.NAdam)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.nadam import nadam as _torch_nadam

from ..lr_schedules import Schedule
from ..optimizer import Optimizer
from ._common import cast, decay, step64, zeros
from ._factory import Catalogued, torch_kernel

Tensor = torch.Tensor


@dataclass(frozen=True)
class NAdamRule:
    """torch.optim.NAdam's update for one leaf (state: ``exp_avg``, ``exp_avg_sq`` and
    ``mu_product``, the float32 product of the momentum schedule, as torch keeps it: 0-d,
    or of shape ``(1,)`` for a 0-d leaf, so that it is never taken for a buffer shaped
    like the leaf)."""

    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum_decay: float = 4e-3
    decoupled_weight_decay: bool = False

    fields = ("exp_avg", "exp_avg_sq", "mu_product")

    def init(self, p: Tensor) -> tuple[Tensor, ...]:
        shape = () if p.dim() else (1,)
        return zeros(p), zeros(p), torch.ones(shape, dtype=torch.float32, device=p.device)

    def step(self, p, g, bufs, count, lr):
        m, v, mu_product = bufs
        t = step64(count)
        p, g = decay(self, p, g, lr)
        b1, md = self.beta1, self.momentum_decay
        mu = b1 * (1.0 - 0.5 * 0.96 ** (t * md))
        mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * md))
        mu_product = mu_product * mu.to(mu_product.dtype)  # torch: a float32 tensor *= mu
        m = torch.lerp(m, g, 1 - b1)
        v = torch.addcmul(v * self.beta2, g, g, value=1 - self.beta2)
        denom = (v / cast(1 - self.beta2**t, p)).sqrt() + self.eps
        prod = mu_product.to(torch.float64).reshape(())
        c_grad = cast(-lr * (1.0 - mu) / (1.0 - prod), p)
        c_avg = cast(-lr * mu_next / (1.0 - prod * mu_next), p)
        p = p + c_grad * (g / denom)
        p = p + c_avg * (m / denom)
        return p, (m, v, mu_product)


_inplace = torch_kernel(_torch_nadam)
# not elementwise: mu_product is a 0-d buffer per leaf, not shaped like the leaf
_SPEC = Catalogued("nadam", NAdamRule, elementwise=False, inplace=_inplace)


def nadam(
    lr: float | Schedule = 2e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum_decay: float = 4e-3,
    decoupled_weight_decay: bool = False,
    *,
    maximize: bool = False,
    differentiable: bool = False,
    weight_decay_mask: Any = None,
) -> Optimizer:
    """NAdam with torch.optim.NAdam's keywords, defaults and exact update rule.

    The momentum schedule ``mu_t`` and the bias correction use each leaf's own count, and
    the product of the ``mu_t`` is a per-leaf state buffer (``mu_product``), so a leaf
    unfrozen later behaves as in a fresh torch optimizer.

    Args:
      lr: a float or a schedule ``step -> lr``.
      betas: coefficients of the running averages.
      eps: added to the denominator.
      weight_decay: L2 penalty (or decoupled decay, see ``decoupled_weight_decay``).
      momentum_decay: the momentum schedule's decay (``psi`` in the paper).
      decoupled_weight_decay: decay the params as AdamW (NAdamW) instead of adding to the
        gradient.
      maximize: maximise the objective (the engine negates the gradients).
      differentiable: let autograd run through the update (see `Optimizer`).
      weight_decay_mask: bool pytree (or callable) saying which leaves decay.

    Returns:
      An `Optimizer` whose state holds ``exp_avg``, ``exp_avg_sq`` and ``mu_product`` per leaf.

    Example:
      >>> import torch, funcurriculum as fc
      >>> opt = fc.nadam(0.1)
      >>> p = {"w": torch.ones(2)}
      >>> p, state = opt.update(p, {"w": torch.ones(2)}, opt.init(p))
      >>> sorted(state), p["w"]
      (['count', 'exp_avg', 'exp_avg_sq', 'mu_product', 'step'], tensor([0.8944, 0.8944]))
    """
    return _SPEC.build(locals())
