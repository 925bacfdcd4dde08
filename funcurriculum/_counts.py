"""Per-leaf step counts: float32 0-d tensors, views of one tensor per device.

Keeping the counts of ``Optimizer.init`` (and of a pure update) as views of one
1-D tensor lets a donated update add 1 to all of them with one ``add_`` (or one
``index_add_`` for a subset) instead of one op per leaf.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

Tensor = torch.Tensor


def zero_counts(devices: Sequence[torch.device]) -> list[Tensor]:
    """Zero counts for leaves on ``devices``: views of one tensor per device."""
    out: list[Any] = [None] * len(devices)
    by_dev: dict[torch.device, list[int]] = {}
    for i, d in enumerate(devices):
        by_dev.setdefault(d, []).append(i)
    for d, idx in by_dev.items():
        for i, t in zip(idx, torch.zeros(len(idx), dtype=torch.float32, device=d).unbind()):
            out[i] = t
    return out


def add_(ts: list[Tensor], value: float = 1.0) -> None:
    """``t += value`` for every 0-d tensor of ``ts`` (one device), in place: one op on
    the shared 1-D tensor when ``ts`` are distinct views of it."""
    shared = shared_base(ts)
    if shared is None:
        torch._foreach_add_(ts, value)
    else:
        _add_shared_(ts, value, shared)


def shared_base(ts: Sequence[Tensor]) -> Tensor | None:
    """The 1-D tensor that ``ts`` are distinct one-element views of (the counts of
    ``init`` and of a pure update are), or ``None``.

    Args:
      ts: tensors (one device).

    Returns:
      The base tensor, or ``None`` when ``ts`` are not such views of one tensor.
    """
    if not ts:
        return None
    base = ts[0]._base
    if base is None or base.dim() != 1 or base.stride(0) != 1:
        return None
    dtype = base.dtype
    if not all(t._base is base and t.dtype is dtype for t in ts):
        return None
    offs = {t.storage_offset() for t in ts}
    if len(offs) != len(ts) or len(ts) != base.numel() and any(t.dim() for t in ts):
        return None  # (all of base's elements: each view is then one element)
    return base


def _add_shared_(ts: Sequence[Tensor], value: float, base: Tensor) -> None:
    """`add_` on ``ts``, distinct 0-d views of ``base`` (`shared_base`): one op."""
    if len(ts) == base.numel():
        base.add_(value)
        return
    start = base.storage_offset()
    # non_blocking: a blocking host-to-device copy would wait for the stream
    index = torch.tensor([t.storage_offset() - start for t in ts], dtype=torch.int64)
    index = index.to(base.device, non_blocking=True)
    base.index_add_(0, index, torch.full((len(ts),), value, dtype=base.dtype, device=base.device))


def increment(
    counts: list[Tensor], active: Sequence[int], inplace: bool, shared: Tensor | None = None
) -> None:
    """Add 1 to the counts of ``active`` leaves with a few batched calls per device
    (in place for a donated update, else into new views of one small tensor).

    ``shared``: the counts' `shared_base`, when the caller has it (then one op)."""
    if not active:
        return
    if inplace and shared is not None:
        _add_shared_([counts[i] for i in active], 1.0, shared)
        return
    by_dev: dict[torch.device, list[int]] = {}
    for i in active:
        by_dev.setdefault(counts[i].device, []).append(i)
    for idx in by_dev.values():
        ts = [counts[i] for i in idx]
        if inplace:
            add_(ts)
        elif all(t.dtype == ts[0].dtype and t.dim() == 0 for t in ts):
            for i, t in zip(idx, (torch.stack(ts) + 1).unbind()):
                counts[i] = t
        else:
            for i, t in zip(idx, torch._foreach_add(ts, 1.0)):
                counts[i] = t


def first_flags(active: Sequence[int], counts: Sequence[Tensor]) -> dict[int, bool]:
    """Which leaves take their first update (counts already incremented; one host sync)."""
    if not active:
        return {}
    values = torch.stack([counts[i].to("cpu", non_blocking=False) for i in active]).tolist()
    return {i: v == 1 for i, v in zip(active, values)}
