"""The fused engine: a rule's declared in-place multi-tensor kernel (``Kernels.inplace``).

* ``donate=True``: the kernel runs on the caller's buffers, one call per group of leaves
  sharing device, dtype, lr value and first-step flag.
* pure (default), CPU: fresh buffers made one cache-sized wave at a time (about ``wave``
  elements: a run of leaves, or flat slices of one big leaf of an elementwise rule),
  each wave updated by the kernel while still in cache. Everything runs on the caller's
  thread (a helper copy thread left a second OpenMP team that slowed every later torch
  op, docs/performance.md).
* pure, other devices (or ``wave=0``): clone, then the kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .._counts import first_flags
from .._validate import leaf_shaped
from . import Job, keep_flag

Tensor = torch.Tensor


def run(job: Job, *, elementwise: bool = True) -> None:
    """Update ``job.idx`` with ``job.kernels.inplace`` (counts already incremented);
    the pure CPU path slices a big leaf into flat waves only for an ``elementwise``
    rule (others get the whole leaf copied, then updated)."""
    if not job.idx:
        return
    first = first_flags(job.idx, job.counts) if job.kernels.needs_first_flag else {}
    idx = job.idx
    with torch.no_grad():
        if not job.donate:
            on_cpu = [i for i in idx if job.leaves[i].is_cpu] if job.wave > 0 else []
            if on_cpu:
                _pure_waves(job, on_cpu, first, elementwise)
                done = set(on_cpu)
                idx = [i for i in idx if i not in done]
            for i in idx:  # other devices: fresh copies, then the in-place kernel
                job.leaves[i] = keep_flag(job.leaves[i].clone(), job.leaves[i])
                for b in job.cols:
                    b[i] = b[i].clone()
        calls(job, idx, first, job.leaves, job.grads, job.cols)


def _lr_arg(lr_key: Any, lr_of: dict[int, Any], device: torch.device) -> float | Tensor:
    if isinstance(lr_key, tuple):
        lr = lr_of[lr_key[1]]
        return lr.to(device=device, dtype=torch.float64 if device.type == "cpu" else torch.float32)
    return float(lr_key)


def calls(job: Job, idx: Sequence[int], first: dict[int, bool], ps, gs, cols) -> None:
    """``kernels.inplace`` on leaves ``idx`` (``ps[i]``, ``gs[i]``, ``col[i]``: lists, or
    dicts keyed by leaf), one call per group sharing device, dtype, lr and first flag."""
    for (device, _, lr_key, fst), g in _groups(job.lr_of, idx, first, ps).items():
        job.kernels.inplace(
            job.rule,
            [ps[i] for i in g],
            [gs[i] for i in g],
            [[b[i] for i in g] for b in cols],
            [job.counts[i] for i in g],
            _lr_arg(lr_key, job.lr_of, device),
            first=fst,
            maximize=job.maximize,
        )


def _groups(lr_of, idx, first, ps) -> dict[tuple, list[int]]:
    """Leaves ``idx`` by (device, dtype, lr key, first flag); a tensor lr is a group's own."""
    if not idx:
        return {}
    lrs = [lr_of[i] for i in idx]
    devices = {ps[i].device for i in idx}
    dtypes = {ps[i].dtype for i in idx}
    flags = {first.get(i, False) for i in idx} if first else {False}
    if len(devices) == len(dtypes) == len(flags) == 1 and _FLOAT.issuperset(map(type, lrs)):
        # the common case: one device, dtype and flag, float lrs (checked set by set,
        # cheaper than a key per leaf); one group per distinct lr
        if lrs.count(lrs[0]) == len(lrs):
            return {(*devices, *dtypes, lrs[0], *flags): list(idx)}
        by_lr: dict[float, list[int]] = {}
        for i, lr in zip(idx, lrs):
            by_lr.setdefault(lr, []).append(i)
        return {(*devices, *dtypes, lr, *flags): g for lr, g in by_lr.items()}
    groups: dict[tuple, list[int]] = {}
    for i, lr in zip(idx, lrs):
        p = ps[i]
        key = (p.device, p.dtype, ("tensor", i) if isinstance(lr, Tensor) else lr)
        groups.setdefault((*key, first.get(i, False)), []).append(i)
    return groups


_FLOAT = frozenset({float})


def _pure_waves(job: Job, idx: Sequence[int], first: dict[int, bool], elementwise: bool) -> None:
    wave = max(int(job.wave), 1)
    leaves, grads, cols = job.leaves, job.grads, job.cols
    nb = len(cols)
    new_ps: dict[int, Tensor] = {}
    gs: dict[int, Tensor] = {}
    new_bufs: list[dict[int, Tensor]] = [{} for _ in cols]
    size = 0

    def flush() -> None:
        calls(job, list(new_ps), first, new_ps, gs, new_bufs)
        new_ps.clear()
        gs.clear()
        for d in new_bufs:
            d.clear()

    def add(i: int, p: Tensor, g: Tensor, bufs: Sequence[Tensor]) -> None:
        new_ps[i], gs[i] = p, g
        for d, t in zip(new_bufs, bufs):
            d[i] = t

    for i in idx:
        p, g = leaves[i], grads[i]
        olds = [b[i] for b in cols]
        if (
            elementwise
            and p.numel() > wave
            and leaf_shaped(p, olds)
            and all(t.is_contiguous() for t in (p, g, *olds))
        ):
            # a big leaf: fresh buffers, then copy + update one flat slice at a time
            new_p = torch.empty_like(p, memory_format=torch.contiguous_format)
            news = [torch.empty_like(b, memory_format=torch.contiguous_format) for b in olds]
            flush()
            size = 0
            flat = [t.view(-1).split(wave) for t in (p, g, *olds, new_p, *news)]
            for ch in zip(*flat):
                src, dst = [ch[0], *ch[2 : 2 + nb]], [ch[2 + nb], *ch[3 + nb :]]
                torch._foreach_copy_(dst, src)
                add(i, dst[0], ch[1], dst[1:])
                flush()
        else:
            new_p = p.clone()
            news = [b.clone() for b in olds]
            add(i, new_p, g, news)
            size += p.numel()
            if size >= wave:
                flush()
                size = 0
        leaves[i] = keep_flag(new_p, p)
        for b, t in zip(cols, news):
            b[i] = t
    flush()
