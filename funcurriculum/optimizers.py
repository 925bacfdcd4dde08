"""SGD, Adam and AdamW: per-leaf rules (torch.optim's exact math) with torch's fused
kernels and the one-launch Triton kernels declared as their `fc.Kernels`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ._tree import PyTree
from .leaf_rule import Kernels
from .lr_schedules import Schedule
from .optimizer import Optimizer

Tensor = torch.Tensor


def _opmath(p: Tensor) -> torch.dtype:
    return torch.float64 if p.dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class SGDRule:
    """torch.optim.SGD's update for one leaf."""

    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0

    @property
    def fields(self) -> tuple[str, ...]:
        return ("momentum_buffer",) if self.momentum != 0 else ()

    def init(self, p: Tensor) -> tuple[Tensor, ...]:
        return tuple(torch.zeros_like(p, memory_format=torch.preserve_format) for _ in self.fields)

    def step(self, p, g, bufs, count, lr):
        if self.weight_decay != 0:
            g = g + self.weight_decay * p
        if self.momentum != 0:
            (buf,) = bufs
            later = buf * self.momentum + (1 - self.dampening) * g
            buf = torch.where(count == 1, g, later) if self.dampening != 0 else later
            g = g + self.momentum * buf if self.nesterov else buf
            bufs = (buf,)
        return p - lr * g, bufs


def _sgd_inplace(rule: SGDRule, ps, gs, bufs, counts, lr, *, first, maximize) -> None:
    torch._fused_sgd_(
        ps,
        gs,
        bufs[0] if bufs else [],
        weight_decay=rule.weight_decay,
        momentum=rule.momentum,
        lr=lr,
        dampening=rule.dampening,
        nesterov=rule.nesterov,
        maximize=maximize,
        is_first_step=first,
    )


def _sgd_multi(rule: SGDRule, ps, gs, bufs, out_ps, out_bufs, counts, lrs) -> None:
    from ._triton_kernels import sgd_multi

    sgd_multi(
        ps,
        gs,
        bufs[0] if bufs else [],
        out_ps,
        out_bufs[0] if out_bufs else [],
        counts,
        lrs,
        momentum=rule.momentum,
        dampening=rule.dampening,
        nesterov=rule.nesterov,
        weight_decay=rule.weight_decay,
    )


def _sgd_accepts(p: Tensor) -> bool:
    # torch's CPU ``_fused_sgd_`` leaves part of a float16 / bfloat16 tensor un-updated
    # (seen on torch 2.13): those leaves take the generic engine.
    return not (p.is_cpu and p.dtype in (torch.float16, torch.bfloat16))


def _sgd_kernels(rule: SGDRule) -> Kernels:
    # With zero dampening, buf = momentum * 0 + g on the first step: no flag needed.
    first = rule.momentum != 0 and rule.dampening != 0
    return Kernels(
        inplace=_sgd_inplace, multi=_sgd_multi, accepts=_sgd_accepts, needs_first_flag=first
    )


@dataclass(frozen=True)
class AdamRule:
    """torch.optim.Adam's (``decoupled=False``) or AdamW's update for one leaf."""

    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled: bool = False
    amsgrad: bool = False

    @property
    def fields(self) -> tuple[str, ...]:
        base = ("exp_avg", "exp_avg_sq")
        return (*base, "max_exp_avg_sq") if self.amsgrad else base

    def init(self, p: Tensor) -> tuple[Tensor, ...]:
        return tuple(torch.zeros_like(p, memory_format=torch.preserve_format) for _ in self.fields)

    def step(self, p, g, bufs, count, lr):
        m, v = bufs[0], bufs[1]
        if self.weight_decay != 0:
            if self.decoupled:
                p = p * (1 - lr * self.weight_decay)
            else:
                g = g + self.weight_decay * p
        m = torch.lerp(m, g, 1 - self.beta1)
        v = v * self.beta2 + (1 - self.beta2) * g * g
        c = count.to(_opmath(p))
        bc1 = 1 - self.beta1**c
        bc2 = 1 - self.beta2**c
        if self.amsgrad:
            vmax = torch.maximum(bufs[2], v)
            denom = vmax.sqrt() / bc2.sqrt() + self.eps
            return p - (lr / bc1) * (m / denom), (m, v, vmax)
        denom = v.sqrt() / bc2.sqrt() + self.eps
        return p - (lr / bc1) * (m / denom), (m, v)


def _adam_inplace(rule: AdamRule, ps, gs, bufs, counts, lr, *, first, maximize) -> None:
    fn = torch._fused_adamw_ if rule.decoupled else torch._fused_adam_
    fn(
        ps,
        gs,
        bufs[0],
        bufs[1],
        bufs[2] if rule.amsgrad else [],
        counts,
        lr=lr,
        beta1=rule.beta1,
        beta2=rule.beta2,
        weight_decay=rule.weight_decay,
        eps=rule.eps,
        amsgrad=rule.amsgrad,
        maximize=maximize,
    )


def _adam_multi(rule: AdamRule, ps, gs, bufs, out_ps, out_bufs, counts, lrs) -> None:
    from ._triton_kernels import adam_multi

    adam_multi(
        ps,
        gs,
        bufs[0],
        bufs[1],
        out_ps,
        out_bufs[0],
        out_bufs[1],
        counts,
        lrs,
        beta1=rule.beta1,
        beta2=rule.beta2,
        eps=rule.eps,
        weight_decay=rule.weight_decay,
        decoupled=rule.decoupled,
    )


def _adam_kernels(rule: AdamRule) -> Kernels:
    # The one-launch kernel has no AMSGrad variant: those take torch's fused kernel.
    return Kernels(inplace=_adam_inplace, multi=None if rule.amsgrad else _adam_multi)


def _check_hparams(**kw: float) -> None:
    for k, v in kw.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{k} must be a number, got {type(v).__name__}")
        if not v >= 0:
            raise ValueError(f"{k} must be >= 0, got {v}")


def sgd(
    lr: float | Schedule,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    *,
    maximize: bool = False,
    weight_decay_mask: PyTree | Callable[[PyTree], PyTree] | None = None,
    differentiable: bool = False,
) -> Optimizer:
    """Stochastic gradient descent with torch.optim.SGD's exact update rule.

    Args:
      lr: a float or a schedule ``step -> lr`` (``step`` = completed updates).
      momentum: momentum factor.
      dampening: dampening for momentum.
      nesterov: Nesterov momentum (needs ``momentum > 0`` and ``dampening == 0``).
      weight_decay: L2 penalty added to the gradient.
      maximize: ascend the objective instead of descending it (torch's ``maximize``).
      weight_decay_mask: a pytree of bools like params, or a callable ``params -> pytree``;
        leaves where it is False get no weight decay (torch: a ``weight_decay=0`` group).
      differentiable: make ``update`` differentiable (torch's ``differentiable``).

    Returns:
      An `fc.Optimizer`.

    Example:
      >>> import torch, funcurriculum as fc
      >>> opt = fc.sgd(0.1, momentum=0.9)
      >>> p = {"w": torch.ones(2)}
      >>> p, state = opt.update(p, {"w": torch.ones(2)}, opt.init(p))
      >>> p["w"]
      tensor([0.9000, 0.9000])
    """
    _check_hparams(momentum=momentum, dampening=dampening, weight_decay=weight_decay)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("nesterov momentum requires momentum > 0 and dampening == 0")
    rule = SGDRule(float(momentum), float(dampening), bool(nesterov), float(weight_decay))
    return Optimizer(
        rule,
        lr,
        name="sgd",
        kernels=_sgd_kernels(rule),
        elementwise=True,
        maximize=maximize,
        weight_decay_mask=weight_decay_mask,
        differentiable=differentiable,
    )


def _adam_rule(betas, eps, weight_decay, decoupled, amsgrad) -> AdamRule:
    if len(betas) != 2:
        raise ValueError(f"betas must be a pair, got {betas!r}")
    b1, b2 = betas
    _check_hparams(eps=eps, weight_decay=weight_decay, beta1=b1, beta2=b2)
    if not (b1 < 1 and b2 < 1):
        raise ValueError(f"betas must be in [0, 1), got {betas!r}")
    return AdamRule(float(b1), float(b2), float(eps), float(weight_decay), decoupled, bool(amsgrad))


def _adam_optimizer(name, lr, rule, maximize, weight_decay_mask, differentiable) -> Optimizer:
    return Optimizer(
        rule,
        lr,
        name=name,
        kernels=_adam_kernels(rule),
        elementwise=True,
        maximize=maximize,
        weight_decay_mask=weight_decay_mask,
        differentiable=differentiable,
    )


def adam(
    lr: float | Schedule,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    *,
    maximize: bool = False,
    weight_decay_mask: PyTree | Callable[[PyTree], PyTree] | None = None,
    differentiable: bool = False,
) -> Optimizer:
    """Adam with torch.optim.Adam's exact update rule (``weight_decay`` is L2 on the grad).

    Each leaf keeps its own step count, so a leaf unfrozen mid-run gets fresh bias
    correction while the lr schedule follows the global step.

    Args:
      lr: a float or a schedule ``step -> lr``.
      betas: coefficients of the running averages.
      eps: added to the denominator.
      weight_decay: L2 penalty added to the gradient.
      amsgrad: use the running maximum of the second moment (AMSGrad).
      maximize: ascend the objective instead of descending it (torch's ``maximize``).
      weight_decay_mask: a pytree of bools like params, or a callable ``params -> pytree``;
        leaves where it is False get no weight decay (torch: a ``weight_decay=0`` group).
      differentiable: make ``update`` differentiable (torch's ``differentiable``).

    Returns:
      An `fc.Optimizer`.

    Example:
      >>> import torch, funcurriculum as fc
      >>> opt = fc.adam(0.1)
      >>> p = {"w": torch.ones(2)}
      >>> p, state = opt.update(p, {"w": torch.ones(2)}, opt.init(p))
      >>> p["w"]
      tensor([0.9000, 0.9000])
    """
    rule = _adam_rule(betas, eps, weight_decay, False, amsgrad)
    return _adam_optimizer("adam", lr, rule, maximize, weight_decay_mask, differentiable)


def adamw(
    lr: float | Schedule,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    amsgrad: bool = False,
    *,
    maximize: bool = False,
    weight_decay_mask: PyTree | Callable[[PyTree], PyTree] | None = None,
    differentiable: bool = False,
) -> Optimizer:
    """AdamW with torch.optim.AdamW's exact update rule (decoupled weight decay).

    Args:
      lr: a float or a schedule ``step -> lr``.
      betas: coefficients of the running averages.
      eps: added to the denominator.
      weight_decay: decoupled decay: ``p *= 1 - lr * weight_decay`` each step.
      amsgrad: use the running maximum of the second moment (AMSGrad).
      maximize: ascend the objective instead of descending it (torch's ``maximize``).
      weight_decay_mask: a pytree of bools like params, or a callable ``params -> pytree``;
        leaves where it is False get no weight decay (the BERT / timm recipe: no decay for
        biases and norm weights; torch: a ``weight_decay=0`` group).
      differentiable: make ``update`` differentiable (torch's ``differentiable``).

    Returns:
      An `fc.Optimizer`.

    Example:
      >>> import torch, funcurriculum as fc
      >>> opt = fc.adamw(0.1, weight_decay=0.0)
      >>> p = {"w": torch.ones(2)}
      >>> p, state = opt.update(p, {"w": torch.ones(2)}, opt.init(p))
      >>> p["w"]
      tensor([0.9000, 0.9000])
    """
    rule = _adam_rule(betas, eps, weight_decay, True, amsgrad)
    return _adam_optimizer("adamw", lr, rule, maximize, weight_decay_mask, differentiable)
