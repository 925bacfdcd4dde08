"""Muon (torch.optim.Muon): momentum orthogonalised by a Newton-Schulz iteration."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..lr_schedules import Schedule
from ..optimizer import Optimizer
from ._common import cast, refuse_complex, zeros
from ._factory import Catalogued

Tensor = torch.Tensor

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(
    g: Tensor, coefficients: tuple[float, float, float], steps: int, eps: float
) -> Tensor:
    """The quintic Newton-Schulz orthogonalisation torch.optim.Muon applies (in bfloat16).

    Args:
      g: a 2-D tensor.
      coefficients: ``(a, b, c)`` of the polynomial.
      steps: number of iterations.
      eps: floor of the norm ``g`` is divided by.

    Returns:
      A bfloat16 tensor shaped like ``g`` with singular values near 1.

    Example:
      >>> import torch
      >>> o = newton_schulz(torch.eye(3) * 5, NS_COEFFICIENTS, 5, 1e-7)
      >>> o.dtype, o.shape
      (torch.bfloat16, torch.Size([3, 3]))
    """
    a, b, c = coefficients
    x = g.bfloat16()
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, poly, x, beta=a)
    return x.T if tall else x


def _lr_ratio(adjust_lr_fn: str | None, shape: torch.Size) -> float:
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, rows / cols))
    return 0.2 * math.sqrt(max(rows, cols))  # "match_rms_adamw"


@dataclass(frozen=True)
class MuonRule:
    """torch.optim.Muon's update for one 2-D leaf (state: ``momentum_buffer``)."""

    weight_decay: float = 0.1
    momentum: float = 0.95
    nesterov: bool = True
    ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS
    eps: float = 1e-7
    ns_steps: int = 5
    adjust_lr_fn: str | None = None

    fields = ("momentum_buffer",)

    def init(self, p: Tensor) -> tuple[Tensor, ...]:
        refuse_complex(p, "fc.muon")
        if p.dim() != 2:
            raise ValueError(
                f"fc.muon optimizes 2-D leaves (hidden-layer matrices) only, got a leaf of "
                f"shape {tuple(p.shape)}: route biases, norms, embeddings and the head to "
                "another optimizer (e.g. fc.adamw) with fc.multi_optimizer, or freeze it"
            )
        return (zeros(p),)

    def step(self, p, g, bufs, count, lr):
        (buf,) = bufs
        buf = torch.lerp(buf, g, 1 - self.momentum)
        update = torch.lerp(g, buf, self.momentum) if self.nesterov else buf
        update = newton_schulz(update, self.ns_coefficients, self.ns_steps, self.eps)
        lr = cast(lr, p)
        p = p * (1 - lr * self.weight_decay)
        p = p - (lr * _lr_ratio(self.adjust_lr_fn, p.shape)) * update.to(p.dtype)
        return p, (buf,)


def _inplace(rule, ps, gs, bufs, counts, lr, *, first, maximize) -> None:
    """torch.optim.Muon's for-loop in place on one group, the arithmetic of
    `MuonRule.step` (torch's Muon has no foreach implementation; ``maximize`` negates the
    gradient, which torch's Muon does not offer)."""
    (moms,) = bufs
    tensor_lr = isinstance(lr, Tensor)
    for p, g, buf in zip(ps, gs, moms):
        if maximize:
            g = -g
        buf.lerp_(g, 1 - rule.momentum)
        update = g.lerp(buf, rule.momentum) if rule.nesterov else buf
        update = newton_schulz(update, rule.ns_coefficients, rule.ns_steps, rule.eps)
        ratio = _lr_ratio(rule.adjust_lr_fn, p.shape)
        if tensor_lr:
            lr_p = lr.to(p.dtype)
            p.mul_(1 - lr_p * rule.weight_decay)
            p.sub_(update.to(p.dtype).mul_(lr_p * ratio))
        else:
            p.mul_(1 - lr * rule.weight_decay)
            p.add_(update, alpha=-lr * ratio)  # (a bfloat16 update, read as p's dtype)


_SPEC = Catalogued("muon", MuonRule, elementwise=False, inplace=_inplace)


def muon(
    lr: float | Schedule = 1e-3,
    weight_decay: float = 0.1,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    eps: float = 1e-7,
    ns_steps: int = 5,
    adjust_lr_fn: str | None = None,
    *,
    maximize: bool = False,
    differentiable: bool = False,
    weight_decay_mask: Any = None,
) -> Optimizer:
    """Muon with torch.optim.Muon's keywords, defaults and exact update rule.

    For 2-D hidden-layer matrices only: `init` raises ``ValueError`` naming any leaf that
    is not 2-D (and ``TypeError`` for a complex one, which torch refuses too). Train the
    other leaves (embeddings, head, biases, norms) with another optimizer through
    ``fc.multi_optimizer``; see the Muon recipe in docs/catalogue.md. The
    orthogonalisation runs in bfloat16, as torch's.

    Args:
      lr: a float or a schedule ``step -> lr``.
      weight_decay: decoupled decay: ``p *= 1 - lr * weight_decay``.
      momentum: momentum factor.
      nesterov: Nesterov momentum.
      ns_coefficients: ``(a, b, c)`` of the Newton-Schulz polynomial.
      eps: floor of the norm in the Newton-Schulz iteration.
      ns_steps: number of Newton-Schulz iterations (``< 100``).
      adjust_lr_fn: ``None`` / ``"original"`` (``lr * sqrt(max(1, rows / cols))``) or
        ``"match_rms_adamw"`` (``lr * 0.2 * sqrt(max(rows, cols))``).
      maximize: maximise the objective (the engine negates the gradients; torch's Muon
        has no ``maximize``).
      differentiable: let autograd run through the update (see `Optimizer`).
      weight_decay_mask: bool pytree (or callable) saying which leaves decay.

    Returns:
      An `Optimizer` whose state holds ``momentum_buffer`` per leaf.

    Example:
      >>> import torch, funcurriculum as fc
      >>> opt = fc.muon(0.02)
      >>> p = {"w": torch.zeros(4, 4)}
      >>> p, state = opt.update(p, {"w": torch.eye(4)}, opt.init(p))
      >>> round(float(p["w"][0, 0]), 2)
      -0.02
      >>> opt.init({"b": torch.zeros(4)})
      Traceback (most recent call last):
      ...
      ValueError: ...2-D leaves...multi_optimizer...
    """
    return _SPEC.build(locals())
