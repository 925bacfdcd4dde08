"""What the catalogue's rules share: scalar arithmetic in torch.optim's precision and the
plumbing from a factory's keywords to `Optimizer`."""

from __future__ import annotations

from typing import Any

import torch

from .. import _hparams as V
from ..leaf_rule import Kernels
from ..lr_schedules import Schedule
from ..optimizer import Optimizer

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


def refuse_complex(p: Tensor, where: str) -> None:
    """Raise a ``TypeError`` for a complex leaf (for the optimizers torch refuses them)."""
    if p.is_complex():
        raise TypeError(
            f"{where} does not support complex parameters (torch.optim refuses them too), "
            f"got a {p.dtype} leaf of shape {tuple(p.shape)}: optimize its real and "
            "imaginary parts as a real tensor (torch.view_as_real) or use another optimizer"
        )


def build(
    rule: Any,
    lr: float | Schedule,
    name: str,
    *,
    maximize: bool,
    differentiable: bool,
    weight_decay_mask: Any = None,
    elementwise: bool = False,
    kernels: Any = None,
) -> Optimizer:
    """The `Optimizer` of a catalogue factory (keywords validated, passed to the engine)."""
    where = f"fc.{name}"
    if not callable(lr):
        V.number(where, "lr", lr)
    kw: dict[str, Any] = {
        "name": name,
        "elementwise": elementwise,
        "maximize": V.flag(where, "maximize", maximize),
        "differentiable": V.flag(where, "differentiable", differentiable),
        "weight_decay_mask": weight_decay_mask,
        "kernels": kernels,
    }
    return Optimizer(rule, lr, **kw)


# -- torch.optim's multi-tensor implementations as the rules' in-place kernels -------------


def torch_steps(counts: list[Tensor]) -> list[Tensor]:
    """The engine's counts for torch.optim's functional API, which increments the step
    tensors it is given: the engine passes counts that already include this update, so
    they are stepped back here in place (exact: small integers in float32) and torch
    brings them back."""
    torch._foreach_sub_(counts, 1.0)
    return counts


def _plain_float(p: Tensor) -> bool:
    # float16 / bfloat16 leaves take the engine's float32 path (torch's foreach kernels
    # round every intermediate to the half dtype); complex leaves its real-pair views
    return p.dtype in (torch.float32, torch.float64) and p.device.type in ("cpu", "cuda")


def kernels(inplace: Any, accepts: Any = _plain_float) -> Kernels:
    """The `Kernels` a rule declares: an in-place multi-tensor update and its veto."""
    return Kernels(inplace=inplace, accepts=accepts)
