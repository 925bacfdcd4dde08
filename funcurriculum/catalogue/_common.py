"""What the catalogue's rules share: scalar arithmetic in torch.optim's precision, fresh
buffers and weight decay."""

from __future__ import annotations

from typing import Any

import torch

Tensor = torch.Tensor


def cast(x: Any, p: Tensor) -> Any:
    """A step-dependent scalar in ``p``'s dtype.

    torch.optim computes step-dependent terms (bias corrections, ...) in Python floats and
    its kernels cast them to the param's compute dtype; a rule computes them as float64
    tensors from the leaf's count and casts them here, which gives the same values and
    keeps a 0-d leaf's dtype (a float64 0-d tensor would promote it). Python floats pass.
    """
    return x.to(p.dtype) if isinstance(x, Tensor) else x


def step64(count: Tensor) -> Tensor:
    """The leaf's count (this update included) as a float64 tensor, like torch's
    ``_get_value(step)`` Python float."""
    return count.to(torch.float64)


def lr64(lr: Any, like: Tensor) -> Tensor:
    """``lr`` (a float or a 0-d tensor) as a float64 tensor on ``like``'s device."""
    if isinstance(lr, Tensor):
        return lr.to(device=like.device, dtype=torch.float64)
    return torch.tensor(float(lr), dtype=torch.float64, device=like.device)


def zeros(p: Tensor) -> Tensor:
    return torch.zeros_like(p, memory_format=torch.preserve_format)


class LeafShaped:
    """A rule mixin: ``init`` gives one zero buffer shaped like the leaf per field."""

    fields: tuple[str, ...] = ()

    def init(self, p: Tensor) -> tuple[Tensor, ...]:
        return tuple(zeros(p) for _ in self.fields)


def decay(rule: Any, p: Tensor, g: Tensor, lr: Any) -> tuple[Tensor, Tensor]:
    """``rule.weight_decay`` as torch.optim applies it: added to the gradient (L2), or,
    with ``rule.decoupled_weight_decay``, ``p *= 1 - lr * weight_decay`` (AdamW)."""
    wd = rule.weight_decay
    if wd == 0:
        return p, g
    if getattr(rule, "decoupled_weight_decay", False):
        return p * cast(1 - lr * wd, p), g
    return p, g + wd * p


def refuse_complex(p: Tensor, where: str) -> None:
    """Raise a ``TypeError`` for a complex leaf (for the optimizers torch refuses them)."""
    if p.is_complex():
        raise TypeError(
            f"{where} does not support complex parameters (torch.optim refuses them too), "
            f"got a {p.dtype} leaf of shape {tuple(p.shape)}: optimize its real and "
            "imaginary parts as a real tensor (torch.view_as_real) or use another optimizer"
        )
