"""SGD, Adam and AdamW as per-leaf rules for the shared driver (torch.optim's exact math)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .driver import Optimizer
from .lr_schedules import Schedule

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

    @property
    def needs_first_flag(self) -> bool:
        # With zero dampening, buf = momentum * 0 + g on the first step: no flag needed.
        return self.momentum != 0 and self.dampening != 0

    def init(self, p: Tensor) -> tuple[Tensor, ...]:
        return tuple(torch.zeros_like(p, memory_format=torch.preserve_format) for _ in self.fields)

    def fusable(self, p: Tensor) -> bool:
        # torch's CPU ``_fused_sgd_`` leaves part of a float16 / bfloat16 tensor un-updated
        # (seen on torch 2.13): those leaves take the reference path.
        return not (p.device.type == "cpu" and p.dtype in (torch.float16, torch.bfloat16))

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

    def multi(self, ps, gs, bufs, out_ps, out_bufs, counts, lrs):
        from ._triton_kernels import sgd_multi

        sgd_multi(
            ps,
            gs,
            bufs[0] if bufs else [],
            out_ps,
            out_bufs[0] if out_bufs else [],
            counts,
            lrs,
            momentum=self.momentum,
            dampening=self.dampening,
            nesterov=self.nesterov,
            weight_decay=self.weight_decay,
        )

    def fused(self, ps, gs, bufs, counts, lr, first):
        torch._fused_sgd_(
            ps,
            gs,
            bufs[0] if bufs else [],
            weight_decay=self.weight_decay,
            momentum=self.momentum,
            lr=lr,
            dampening=self.dampening,
            nesterov=self.nesterov,
            maximize=False,
            is_first_step=first,
        )


@dataclass(frozen=True)
class AdamRule:
    """torch.optim.Adam's (``decoupled=False``) or AdamW's update for one leaf."""

    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled: bool = False

    fields = ("exp_avg", "exp_avg_sq")
    needs_first_flag = False

    def init(self, p: Tensor) -> tuple[Tensor, ...]:
        z = torch.zeros_like(p, memory_format=torch.preserve_format)
        return z, torch.zeros_like(z)

    def step(self, p, g, bufs, count, lr):
        m, v = bufs
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
        denom = v.sqrt() / bc2.sqrt() + self.eps
        return p - (lr / bc1) * (m / denom), (m, v)

    def multi(self, ps, gs, bufs, out_ps, out_bufs, counts, lrs):
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
            beta1=self.beta1,
            beta2=self.beta2,
            eps=self.eps,
            weight_decay=self.weight_decay,
            decoupled=self.decoupled,
        )

    def fused(self, ps, gs, bufs, counts, lr, first):
        fn = torch._fused_adamw_ if self.decoupled else torch._fused_adam_
        fn(
            ps,
            gs,
            bufs[0],
            bufs[1],
            [],
            counts,
            lr=lr,
            beta1=self.beta1,
            beta2=self.beta2,
            weight_decay=self.weight_decay,
            eps=self.eps,
            amsgrad=False,
            maximize=False,
        )


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
) -> Optimizer:
    """Stochastic gradient descent with torch.optim.SGD's exact update rule.

    Args:
      lr: a float or a schedule ``step -> lr`` (``step`` = completed updates).
      momentum: momentum factor.
      dampening: dampening for momentum.
      nesterov: Nesterov momentum (needs ``momentum > 0`` and ``dampening == 0``).
      weight_decay: L2 penalty added to the gradient.

    Returns:
      An :class:`~funcurriculum.driver.Optimizer`.

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
    return Optimizer(rule, lr, name="sgd")


def _adam_rule(betas, eps, weight_decay, decoupled) -> AdamRule:
    if len(betas) != 2:
        raise ValueError(f"betas must be a pair, got {betas!r}")
    b1, b2 = betas
    _check_hparams(eps=eps, weight_decay=weight_decay, beta1=b1, beta2=b2)
    if not (b1 < 1 and b2 < 1):
        raise ValueError(f"betas must be in [0, 1), got {betas!r}")
    return AdamRule(float(b1), float(b2), float(eps), float(weight_decay), decoupled)


def adam(
    lr: float | Schedule,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> Optimizer:
    """Adam with torch.optim.Adam's exact update rule (``weight_decay`` is L2 on the grad).

    Each leaf keeps its own step count, so a leaf unfrozen mid-run gets fresh bias
    correction while the lr schedule follows the global step.

    Args:
      lr: a float or a schedule ``step -> lr``.
      betas: coefficients of the running averages.
      eps: added to the denominator.
      weight_decay: L2 penalty added to the gradient.

    Returns:
      An :class:`~funcurriculum.driver.Optimizer`.

    Example:
      >>> import torch, funcurriculum as fc
      >>> opt = fc.adam(0.1)
      >>> p = {"w": torch.ones(2)}
      >>> p, state = opt.update(p, {"w": torch.ones(2)}, opt.init(p))
      >>> p["w"]
      tensor([0.9000, 0.9000])
    """
    return Optimizer(_adam_rule(betas, eps, weight_decay, False), lr, name="adam")


def adamw(
    lr: float | Schedule,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
) -> Optimizer:
    """AdamW with torch.optim.AdamW's exact update rule (decoupled weight decay).

    Args:
      lr: a float or a schedule ``step -> lr``.
      betas: coefficients of the running averages.
      eps: added to the denominator.
      weight_decay: decoupled decay: ``p *= 1 - lr * weight_decay`` each step.

    Returns:
      An :class:`~funcurriculum.driver.Optimizer`.

    Example:
      >>> import torch, funcurriculum as fc
      >>> opt = fc.adamw(0.1, weight_decay=0.0)
      >>> p = {"w": torch.ones(2)}
      >>> p, state = opt.update(p, {"w": torch.ones(2)}, opt.init(p))
      >>> p["w"]
      tensor([0.9000, 0.9000])
    """
    return Optimizer(_adam_rule(betas, eps, weight_decay, True), lr, name="adamw")
