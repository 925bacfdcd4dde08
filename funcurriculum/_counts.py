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


def _add_one_(ts: list[Tensor]) -> None:
    """``t += 1`` for every 0-d tensor of ``ts`` (one device), in place."""
    base = ts[0]._base
    if base is not None and base.dim() == 1 and base.stride(0) == 1:
        start = base.storage_offset()
        offs = [t.storage_offset() - start for t in ts if t._base is base and t.dtype == base.dtype]
        if len(offs) == len(ts) and len(set(offs)) == len(offs):
            if len(offs) == base.numel():
                base.add_(1)
            else:
                # non_blocking: a blocking host-to-device copy would wait for the stream
                index = torch.tensor(offs, dtype=torch.int64).to(base.device, non_blocking=True)
                base.index_add_(
                    0, index, torch.ones(len(offs), dtype=base.dtype, device=base.device)
                )
            return
    torch._foreach_add_(ts, 1.0)


def increment(counts: list[Tensor], active: Sequence[int], inplace: bool) -> None:
    """Add 1 to the counts of ``active`` leaves with a few batched calls per device
    (in place for a donated update, else into new views of one small tensor)."""
    by_dev: dict[torch.device, list[int]] = {}
    for i in active:
        by_dev.setdefault(counts[i].device, []).append(i)
    for idx in by_dev.values():
        ts = [counts[i] for i in idx]
        if inplace:
            _add_one_(ts)
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
