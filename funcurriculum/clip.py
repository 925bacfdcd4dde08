"""Masked gradient transforms: global norm and global-norm clipping over trainable leaves.

A frozen leaf's gradient (computed anyway, e.g. without :func:`~funcurriculum.partition`)
never enters the norm and is returned untouched, so freezing a layer cannot shrink
the steps of the layers that train (the bug class of clipping the whole gradient
tree in optax-based trainers). ``None`` leaves and leaves absent from a
``partition`` part are skipped the same way.

Both functions are pure and free of data-dependent Python control flow, so they
run under ``torch.func.vmap`` (per-member norms) and ``torch.func.grad``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from ._tree import PyTree, align, flatten, spec_paths, unflatten
from .driver import _mask_value, functorch_active

Tensor = torch.Tensor


def _counted(grads: PyTree, masks: PyTree | None) -> tuple[list[Any], Any, list[int]]:
    """Leaves of ``grads``, their spec, and the indices of those that count."""
    leaves, spec = flatten(grads)
    paths = spec_paths(spec)
    if masks is None:
        flags = [True] * len(leaves)
    else:
        m_leaves, m_spec = flatten(masks)
        m_paths = spec_paths(m_spec)
        # grads may be the full tree or a partition part (a sub-tree of the masks' paths).
        aligned = align(grads, m_spec, m_paths, "grads", allow_missing=True)
        by_path = {
            p: _mask_value(m, p) for p, m, g in zip(m_paths, m_leaves, aligned) if g is not None
        }
        flags = [by_path.get(p, False) for p in paths]
    idx = []
    for i, (p, g, f) in enumerate(zip(paths, leaves, flags)):
        if not f or g is None:
            continue
        if not isinstance(g, Tensor):
            raise TypeError(f"grad at {p!r} is a {type(g).__name__}, expected a tensor or None")
        idx.append(i)
    return leaves, spec, idx


def _check_norm_type(norm_type: float) -> float:
    if isinstance(norm_type, bool) or not isinstance(norm_type, numbers.Real):
        raise TypeError(f"norm_type must be a number, got {norm_type!r}")
    norm_type = float(norm_type)
    if math.isnan(norm_type) or norm_type <= 0:
        raise ValueError(f"norm_type must be > 0 (or inf), got {norm_type}")
    return norm_type


def _check_max_norm(max_norm: Any) -> None:
    if isinstance(max_norm, Tensor):
        if max_norm.numel() != 1 and not functorch_active():
            raise ValueError(f"max_norm must be a scalar, got shape {tuple(max_norm.shape)}")
    elif isinstance(max_norm, bool) or not isinstance(max_norm, numbers.Real):
        raise TypeError(f"max_norm must be a number or a tensor, got {max_norm!r}")
    elif not (math.isfinite(max_norm) and max_norm > 0):
        raise ValueError(f"max_norm must be finite and > 0, got {max_norm}")


def _total_norm(gs: list[Tensor], norm_type: float) -> Tensor:
    if not gs:
        return torch.zeros(())
    if functorch_active() or not all(
        type(g) is Tensor and g.device.type in ("cpu", "cuda") for g in gs
    ):
        norms = [torch.linalg.vector_norm(g, norm_type) for g in gs]
    else:
        # Same grouping as torch.nn.utils.clip_grad_norm_ (per device, foreach norms).
        by_device: dict[torch.device, list[int]] = {}
        for i, g in enumerate(gs):
            by_device.setdefault(g.device, []).append(i)
        norms = [None] * len(gs)
        for idx in by_device.values():
            for i, n in zip(idx, torch._foreach_norm([gs[i] for i in idx], norm_type)):
                norms[i] = n
    first = gs[0].device
    return torch.linalg.vector_norm(torch.stack([n.to(first) for n in norms]), norm_type)


def global_norm(grads: PyTree, masks: PyTree | None = None, *, norm_type: float = 2.0) -> Tensor:
    """Norm of the trainable gradients, as if concatenated into one vector.

    Args:
      grads: gradient pytree (``None`` leaves allowed), or the trainable part from
        :func:`~funcurriculum.partition`.
      masks: bool pytree with the params' structure (True = trainable); frozen
        leaves do not count. ``None``: every non-``None`` leaf counts.
      norm_type: the p of the p-norm (``float("inf")`` for the max norm).

    Returns:
      A 0-d tensor (0 when no leaf counts), equal to what
      ``torch.nn.utils.get_total_norm`` gives on the trainable gradients.

    Example:
      >>> import torch, funcurriculum as fc
      >>> g = {"body": torch.full((4,), 100.0), "head": torch.tensor([3.0, 4.0])}
      >>> fc.global_norm(g, {"body": False, "head": True})
      tensor(5.)
    """
    norm_type = _check_norm_type(norm_type)
    leaves, _, idx = _counted(grads, masks)
    return _total_norm([leaves[i] for i in idx], norm_type)


def clip_by_global_norm(
    grads: PyTree,
    max_norm: float | Tensor,
    masks: PyTree | None = None,
    *,
    norm_type: float = 2.0,
) -> tuple[PyTree, Tensor]:
    """Scale the trainable gradients so that their global norm is at most ``max_norm``.

    torch's rule (``torch.nn.utils.clip_grad_norm_``): every counted gradient is
    multiplied by ``min(max_norm / (norm + 1e-6), 1)``. Frozen, ``None`` and absent
    leaves are neither counted nor scaled (returned as the same objects). Pure: the
    input is not modified. A non-finite norm makes the scaled gradients non-finite,
    as in torch; pair with :func:`~funcurriculum.skip_nonfinite` to skip such steps.

    Args:
      grads: gradient pytree (``None`` leaves allowed) or a ``partition`` part.
      max_norm: the bound: a number > 0, or a tensor (e.g. one per vmapped member).
      masks: bool pytree, True = trainable; ``None`` = every non-``None`` leaf.
      norm_type: the p of the p-norm.

    Returns:
      ``(clipped_grads, norm)``: the grads with ``grads``' structure, and the norm
      before clipping.

    Example:
      >>> import torch, funcurriculum as fc
      >>> g = {"body": torch.full((4,), 100.0), "head": torch.tensor([3.0, 4.0])}
      >>> clipped, norm = fc.clip_by_global_norm(g, 1.0, {"body": False, "head": True})
      >>> norm, clipped["head"], clipped["body"] is g["body"]
      (tensor(5.), tensor([0.6000, 0.8000]), True)
    """
    norm_type = _check_norm_type(norm_type)
    _check_max_norm(max_norm)
    leaves, spec, idx = _counted(grads, masks)
    gs = [leaves[i] for i in idx]
    total = _total_norm(gs, norm_type)
    if not gs:
        return unflatten(spec, leaves), total
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    out = list(leaves)
    if functorch_active():
        for i in idx:
            out[i] = leaves[i] * coef.to(leaves[i].device)
    else:
        by_device: dict[torch.device, list[int]] = {}
        for i in idx:
            by_device.setdefault(leaves[i].device, []).append(i)
        for device, group in by_device.items():
            scaled = torch._foreach_mul([leaves[i] for i in group], coef.to(device))
            for i, s in zip(group, scaled):
                out[i] = s
    return unflatten(spec, out), total


class WithClipping:
    """An optimizer whose ``update`` first clips the trainable grads (see :func:`with_clipping`)."""

    def __init__(self, opt: Any, max_norm: float | Tensor, norm_type: float):
        _check_max_norm(max_norm)
        self.inner = opt
        self.max_norm = max_norm
        self.norm_type = _check_norm_type(norm_type)

    def __repr__(self) -> str:
        return f"with_clipping({self.inner!r}, max_norm={self.max_norm!r})"

    def __getattr__(self, name: str) -> Any:  # lr, rule, name... of the wrapped optimizer
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def init(self, params: PyTree, masks: PyTree | None = None) -> dict[str, Any]:
        state = dict(self.inner.init(params, masks))
        if "grad_norm" in state:
            raise ValueError("the wrapped optimizer's state already has a 'grad_norm' entry")
        state["grad_norm"] = torch.zeros(())
        return state

    def update(self, params, grads, state, masks=None, coeffs=None, *, donate=False):
        if not isinstance(state, dict) or "grad_norm" not in state:
            raise ValueError("state lacks 'grad_norm': was it made by this optimizer's init?")
        clipped, norm = clip_by_global_norm(grads, self.max_norm, masks, norm_type=self.norm_type)
        inner = {k: v for k, v in state.items() if k != "grad_norm"}
        new_params, new_state = self.inner.update(
            params, clipped, inner, masks, coeffs, donate=donate
        )
        new_state = dict(new_state)
        new_state["grad_norm"] = norm.to(state["grad_norm"].dtype)
        return new_params, new_state

    def transition(self, state, params, old_masks, new_masks):
        inner = {k: v for k, v in state.items() if k != "grad_norm"}
        out = dict(self.inner.transition(inner, params, old_masks, new_masks))
        out["grad_norm"] = state["grad_norm"]
        return out


def with_clipping(opt: Any, max_norm: float | Tensor, *, norm_type: float = 2.0) -> WithClipping:
    """Wrap an optimizer so that each ``update`` clips the trainable grads first.

    Same ``init`` / ``update`` / ``transition`` interface; the state gains
    ``"grad_norm"`` (the last update's norm before clipping, a metric to log).

    Args:
      opt: an optimizer (``fc.adam(...)``, another wrapper...).
      max_norm: as in :func:`clip_by_global_norm`.
      norm_type: the p of the p-norm.

    Returns:
      The wrapped optimizer.

    Example:
      >>> import torch, funcurriculum as fc
      >>> opt = fc.with_clipping(fc.sgd(1.0), max_norm=1.0)
      >>> p = {"w": torch.zeros(2)}
      >>> p, s = opt.update(p, {"w": torch.tensor([3.0, 4.0])}, opt.init(p))
      >>> p["w"], s["grad_norm"]
      (tensor([-0.6000, -0.8000]), tensor(5.))
    """
    return WithClipping(opt, max_norm, norm_type)
