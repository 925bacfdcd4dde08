"""Masked gradient clipping: the global norm, clip-by-norm and clip-by-value transforms.

A frozen leaf's gradient (computed anyway, e.g. without `partition`) never enters the
norm and is returned untouched, so freezing a layer cannot shrink the steps of the
layers that train (the bug class of clipping the whole gradient tree in optax-based
trainers). ``None`` leaves and leaves absent from a ``partition`` part are skipped the
same way. Gradients keep their dtypes (torch's in-place ``clip_grad_norm_`` semantics).

Everything here is pure and free of data-dependent Python control flow, so it runs
under ``torch.func.vmap`` (per-member norms, per-member dynamic masks) and
``torch.func.grad``. `clip_grad_norm` and `clip_grad_value` are gradient transforms
for [chain][funcurriculum.chain]; `with_clipping` is ``chain(clip_grad_norm(m), opt)``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from ._masks import Flag, mask_flag
from ._tree import PyTree, align, flatten, spec_paths, unflatten
from ._validate import functorch_active

Tensor = torch.Tensor


def _counted(grads: PyTree, masks: PyTree | None) -> tuple[list[Any], Any, list[int], list[Flag]]:
    """Leaves of ``grads``, their spec, the indices of those that count and their flags.

    A flag is ``True`` (static) or a 0-d bool tensor (a dynamic mask: the leaf counts
    where it is True, selected with ``torch.where``).
    """
    leaves, spec = flatten(grads)
    paths = spec_paths(spec)
    if masks is None:
        flags: list[Flag] = [True] * len(leaves)
    else:
        m_leaves, m_spec = flatten(masks)
        m_paths = spec_paths(m_spec)
        # grads may be the full tree or a partition part (a sub-tree of the masks' paths).
        aligned = align(grads, m_spec, m_paths, "grads", allow_missing=True)
        by_path = {
            p: mask_flag(m, p) for p, m, g in zip(m_paths, m_leaves, aligned) if g is not None
        }
        flags = [by_path.get(p, False) for p in paths]
    idx, dyn = [], []
    for i, (p, g, f) in enumerate(zip(paths, leaves, flags)):
        if f is False or g is None:
            continue
        if not isinstance(g, Tensor):
            raise TypeError(f"grad at {p!r} is a {type(g).__name__}, expected a tensor or None")
        idx.append(i)
        dyn.append(f)
    return leaves, spec, idx, dyn


def _check_norm_type(norm_type: float) -> float:
    if isinstance(norm_type, bool) or not isinstance(norm_type, numbers.Real):
        raise TypeError(f"norm_type must be a number, got {norm_type!r}")
    norm_type = float(norm_type)
    if math.isnan(norm_type) or norm_type <= 0:
        raise ValueError(f"norm_type must be > 0 (or inf), got {norm_type}")
    return norm_type


def _check_bound(value: Any, name: str) -> None:
    if isinstance(value, Tensor):
        if value.numel() != 1 and not functorch_active():
            raise ValueError(f"{name} must be a scalar, got shape {tuple(value.shape)}")
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number or a tensor, got {value!r}")
    elif not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value}")


def _by_device(leaves: list[Tensor], idx: list[int]) -> dict[torch.device, list[int]]:
    groups: dict[torch.device, list[int]] = {}
    for i in idx:
        groups.setdefault(leaves[i].device, []).append(i)
    return groups


def _foreach_ok(gs: list[Tensor]) -> bool:
    return not functorch_active() and all(
        type(g) is Tensor and g.device.type in ("cpu", "cuda") for g in gs
    )


def _total_norm(gs: list[Tensor], dyn: list[Flag], norm_type: float) -> Tensor:
    if not gs:
        return torch.zeros(())
    if not _foreach_ok(gs):
        norms = [torch.linalg.vector_norm(g, norm_type) for g in gs]
    else:
        # Same grouping as torch.nn.utils.clip_grad_norm_ (per device, foreach norms).
        norms = [None] * len(gs)
        for idx in _by_device(gs, list(range(len(gs)))).values():
            for i, n in zip(idx, torch._foreach_norm([gs[i] for i in idx], norm_type)):
                norms[i] = n
    first = gs[0].device
    # A dynamically frozen leaf adds 0: nothing to a p-norm, nothing to the max norm.
    norms = [n if f is True else torch.where(f.to(n.device), n, 0) for n, f in zip(norms, dyn)]
    return torch.linalg.vector_norm(torch.stack([n.to(first) for n in norms]), norm_type)


def _same_dtype(new: Tensor, old: Tensor) -> Tensor:
    return new if new.dtype == old.dtype else new.to(old.dtype)


def _select(flag: Flag, new: Tensor, old: Tensor) -> Tensor:
    return new if flag is True else torch.where(flag.to(new.device), new, old)


def global_norm(grads: PyTree, masks: PyTree | None = None, *, norm_type: float = 2.0) -> Tensor:
    """Norm of the trainable gradients, as if concatenated into one vector.

    Args:
      grads: gradient pytree (``None`` leaves allowed), or the trainable part from
        [partition][funcurriculum.partition].
      masks: bool pytree with the params' structure (True = trainable; bool tensors
        allowed, per member under ``vmap``); frozen leaves do not count. ``None``:
        every non-``None`` leaf counts.
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
    leaves, _, idx, dyn = _counted(grads, masks)
    return _total_norm([leaves[i] for i in idx], dyn, norm_type)


def _clip_norm(grads, max_norm, masks, norm_type) -> tuple[PyTree, Tensor]:
    leaves, spec, idx, dyn = _counted(grads, masks)
    gs = [leaves[i] for i in idx]
    total = _total_norm(gs, dyn, norm_type)
    if not gs:
        return unflatten(spec, leaves), total
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    out = list(leaves)
    if not _foreach_ok(gs):
        scaled = {i: leaves[i] * coef.to(leaves[i].device) for i in idx}
    else:
        scaled = {}
        for device, group in _by_device(leaves, idx).items():
            for i, s in zip(group, torch._foreach_mul([leaves[i] for i in group], coef.to(device))):
                scaled[i] = s
    for i, f in zip(idx, dyn):
        # torch scales in place, so a grad keeps its dtype (a 0-d bfloat16 grad times a
        # 0-d float32 coefficient would otherwise come back float32).
        out[i] = _select(f, _same_dtype(scaled[i], leaves[i]), leaves[i])
    return unflatten(spec, out), total


def clip_by_global_norm(
    grads: PyTree,
    max_norm: float | Tensor,
    masks: PyTree | None = None,
    *,
    norm_type: float = 2.0,
) -> tuple[PyTree, Tensor]:
    """Scale the trainable gradients so that their global norm is at most ``max_norm``.

    torch's rule (``torch.nn.utils.clip_grad_norm_``): every counted gradient is
    multiplied by ``min(max_norm / (norm + 1e-6), 1)`` and keeps its dtype. Frozen,
    ``None`` and absent leaves are neither counted nor scaled (returned as the same
    objects). Pure: the input is not modified. A non-finite norm makes the scaled
    gradients non-finite, as in torch; pair with
    [skip_nonfinite][funcurriculum.skip_nonfinite] to skip such steps.

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
    _check_bound(max_norm, "max_norm")
    return _clip_norm(grads, max_norm, masks, norm_type)


class ClipGradNorm:
    """Gradient transform: clip the trainable grads' global norm (see `clip_grad_norm`).

    State: the last update's norm before clipping, a 0-d float32 tensor stored in the
    chain's state under ``"grad_norm"`` (a metric to log).
    """

    state_key = "grad_norm"

    def __init__(self, max_norm: float | Tensor, norm_type: float = 2.0):
        _check_bound(max_norm, "max_norm")
        self.max_norm = max_norm
        self.norm_type = _check_norm_type(norm_type)

    def __repr__(self) -> str:
        extra = "" if self.norm_type == 2.0 else f", norm_type={self.norm_type!r}"
        return f"clip_grad_norm({self.max_norm!r}{extra})"

    def init(self, params: PyTree, masks: PyTree | None = None) -> Tensor:
        """A zero norm (0-d float32)."""
        return torch.zeros(())

    def update(
        self, grads: PyTree, state: Tensor, params: PyTree, masks: PyTree | None = None
    ) -> tuple[PyTree, Tensor]:
        """The clipped grads and the norm before clipping."""
        clipped, norm = _clip_norm(grads, self.max_norm, masks, self.norm_type)
        return clipped, norm.to(state.dtype)


class ClipGradValue:
    """Gradient transform: clamp every trainable grad to ``[-clip_value, clip_value]``.

    Stateless (it adds no entry to the chain's state). See `clip_grad_value`.
    """

    state_key = None

    def __init__(self, clip_value: float | Tensor):
        _check_bound(clip_value, "clip_value")
        self.clip_value = clip_value

    def __repr__(self) -> str:
        return f"clip_grad_value({self.clip_value!r})"

    def init(self, params: PyTree, masks: PyTree | None = None) -> None:
        """No state."""
        return None

    def update(
        self, grads: PyTree, state: None, params: PyTree, masks: PyTree | None = None
    ) -> tuple[PyTree, None]:
        """The clamped grads (same dtypes, frozen leaves untouched)."""
        leaves, spec, idx, dyn = _counted(grads, masks)
        v = self.clip_value
        out = list(leaves)
        for i, f in zip(idx, dyn):
            g = leaves[i]
            if isinstance(v, Tensor):
                b = v.to(g.device)
                new = torch.minimum(torch.maximum(g, -b), b)
            else:
                new = g.clamp(-v, v)
            out[i] = _select(f, _same_dtype(new, g), g)
        return unflatten(spec, out), None


def clip_grad_norm(max_norm: float | Tensor, norm_type: float = 2.0) -> ClipGradNorm:
    """Gradient transform with ``torch.nn.utils.clip_grad_norm_``'s semantics.

    For [chain][funcurriculum.chain]: the trainable grads are scaled by
    ``min(max_norm / (norm + 1e-6), 1)``, where ``norm`` is their global norm; frozen
    leaves neither count nor change, grads keep their dtypes. The chain's state gains
    ``"grad_norm"``: the last norm before clipping. Unlike torch there is no
    ``error_if_nonfinite`` (it cannot raise under ``vmap``): add
    [nonfinite_guard][funcurriculum.nonfinite_guard] to the chain instead.

    Args:
      max_norm: the bound: a number > 0, or a tensor (e.g. one per vmapped member).
      norm_type: the p of the p-norm (``float("inf")`` for the max norm).

    Returns:
      A transform (``init`` / ``update``).

    Example:
      >>> import torch, funcurriculum as fc
      >>> opt = fc.chain(fc.clip_grad_norm(1.0), fc.sgd(1.0))
      >>> p = {"w": torch.zeros(2)}
      >>> p, s = opt.update(p, {"w": torch.tensor([3.0, 4.0])}, opt.init(p))
      >>> p["w"], s["grad_norm"]
      (tensor([-0.6000, -0.8000]), tensor(5.))
    """
    return ClipGradNorm(max_norm, norm_type)


def clip_grad_value(clip_value: float | Tensor) -> ClipGradValue:
    """Gradient transform with ``torch.nn.utils.clip_grad_value_``'s semantics.

    For [chain][funcurriculum.chain]: every trainable grad is clamped to
    ``[-clip_value, clip_value]``; frozen leaves are untouched, dtypes kept. Stateless.

    Args:
      clip_value: the bound: a number > 0, or a tensor (e.g. one per vmapped member).

    Returns:
      A transform (``init`` / ``update``).

    Example:
      >>> import torch, funcurriculum as fc
      >>> opt = fc.chain(fc.clip_grad_value(0.5), fc.sgd(1.0))
      >>> p = {"w": torch.zeros(2)}
      >>> opt.update(p, {"w": torch.tensor([3.0, -0.25])}, opt.init(p))[0]["w"]
      tensor([-0.5000,  0.2500])
    """
    return ClipGradValue(clip_value)


def with_clipping(opt: Any, max_norm: float | Tensor, *, norm_type: float = 2.0) -> Any:
    """Make each ``update`` of ``opt`` clip the trainable grads first.

    Exactly ``fc.chain(fc.clip_grad_norm(max_norm, norm_type), opt)``: same ``init`` /
    ``update`` / ``transition``; the state gains ``"grad_norm"`` (the last update's
    norm before clipping, a metric to log).

    Args:
      opt: an optimizer (``fc.adam(...)``, a chain...).
      max_norm: as in `clip_by_global_norm`.
      norm_type: the p of the p-norm.

    Returns:
      The chain.

    Example:
      >>> import torch, funcurriculum as fc
      >>> opt = fc.with_clipping(fc.sgd(1.0), max_norm=1.0)
      >>> p = {"w": torch.zeros(2)}
      >>> p, s = opt.update(p, {"w": torch.tensor([3.0, 4.0])}, opt.init(p))
      >>> p["w"], s["grad_norm"]
      (tensor([-0.6000, -0.8000]), tensor(5.))
    """
    from .chain import chain

    return chain(ClipGradNorm(max_norm, norm_type), opt)
