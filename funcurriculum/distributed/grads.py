"""Data-parallel gradient averaging for functional loops (what DDP's reducer does for modules)."""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
import torch.distributed as dist

from .._tree import PyTree, flatten, spec_paths, unflatten
from .._validate import has_dtensor as _has_dtensor
from .._validate import mask_value as _mask_value
from ._check import agree, checksum, require_group

Tensor = torch.Tensor

DEFAULT_BUCKET_MB = 25.0


def _mask_flags(masks: PyTree | None, paths: tuple[str, ...]) -> list[bool]:
    if masks is None:
        return [True] * len(paths)
    m_leaves, m_spec = flatten(masks)
    index = dict(zip(spec_paths(m_spec), m_leaves))
    missing = [p for p in paths if p not in index]
    if missing:
        raise ValueError(f"masks lack entries for grads paths {missing[:8]}")
    return [_mask_value(index[p], p) for p in paths]


def buckets(idx: list[int], leaves: list[Tensor], cap_bytes: float) -> list[list[int]]:
    """Group leaf indices into buckets of one dtype/device, each at most ``cap_bytes``.

    A leaf larger than the cap gets a bucket of its own. Order within a bucket is the
    order of ``idx``; the result is the same on every rank for the same inputs.
    """
    by_kind: dict[Any, list[int]] = {}
    for i in idx:
        by_kind.setdefault((leaves[i].dtype, leaves[i].device), []).append(i)
    out: list[list[int]] = []
    for members in by_kind.values():
        cur: list[int] = []
        size = 0
        for i in members:
            nbytes = leaves[i].numel() * leaves[i].element_size()
            if cur and size + nbytes > cap_bytes:
                out.append(cur)
                cur, size = [], 0
            cur.append(i)
            size += nbytes
        if cur:
            out.append(cur)
    return out


def pack(ts: list[Tensor]) -> Tensor:
    """One flat new tensor holding ``ts`` back to back (inputs untouched)."""
    return torch.cat([t.reshape(-1) for t in ts]) if len(ts) > 1 else ts[0].reshape(-1).clone()


def unpack(flat: Tensor, like: list[Tensor]) -> list[Tensor]:
    """Views of ``flat`` shaped like ``like``."""
    parts = flat.split([t.numel() for t in like])
    return [p.view(t.shape) for p, t in zip(parts, like)]


def _cap_bytes(bucket_cap_mb: Any) -> int:
    """``bucket_cap_mb`` in bytes; a clear error for a non-number, negative or non-finite."""
    if isinstance(bucket_cap_mb, bool) or not isinstance(bucket_cap_mb, numbers.Real):
        raise TypeError(f"bucket_cap_mb must be a number, got {bucket_cap_mb!r}")
    if not math.isfinite(float(bucket_cap_mb)) or bucket_cap_mb < 0:
        raise ValueError(f"bucket_cap_mb must be finite and >= 0, got {bucket_cap_mb!r}")
    return int(bucket_cap_mb * 2**20)


def all_reduce_grads(
    grads: PyTree,
    masks: PyTree | None = None,
    *,
    group: Any = None,
    bucket_cap_mb: float = DEFAULT_BUCKET_MB,
) -> PyTree:
    """Average ``grads`` over the ranks of ``group``, frozen leaves never communicated.

    Leaves are flattened into buckets (one dtype each, at most ``bucket_cap_mb``; DDP's
    default is 25 MB) and each bucket takes one ``all_reduce``; all buckets are launched
    asynchronously before the first is waited on, so packing overlaps communication. A
    leaf is communicated only if it is a tensor and trainable: leaves frozen in
    ``masks``, ``None`` leaves and leaves absent from ``grads`` (a
    ``partition`` part) are not. Before the buckets, the ranks
    exchange a checksum of what they send, so ranks passing different trees or masks
    all raise ``ValueError`` instead of hanging.

    Args:
      grads: pytree of gradient tensors (``None`` allowed), e.g. the trainable part
        from ``torch.func.grad``.
      masks: optional bool pytree over the params (or over ``grads``); frozen leaves of
        ``grads`` are passed through untouched and uncommunicated.
      group: the process group (default: the world).
      bucket_cap_mb: bucket size cap in MiB.

    Returns:
      A new pytree like ``grads``: communicated leaves replaced by new tensors holding
      the mean over ranks (same dtypes and shapes); other leaves passed through. The
      input is not modified.

    Raises:
      RuntimeError: no process group is initialised.
      ValueError: the ranks disagree on the tree, the masks or ``bucket_cap_mb``
        (raised on every rank, before any bucket is sent).
      TypeError: a communicated leaf is a DTensor (its collectives belong to DTensor).

    Example:
      >>> import torch, funcurriculum.distributed as fcd
      >>> fcd.all_reduce_grads({"w": torch.ones(2)})  # doctest: +SKIP
      {'w': tensor([1., 1.])}
    """
    who = "all_reduce_grads"
    world, _rank = require_group(group, who)
    leaves, spec = flatten(grads)
    paths = spec_paths(spec)
    error: BaseException | None = None
    send: list[int] = []
    cap = 0
    try:
        cap = _cap_bytes(bucket_cap_mb)
        flags = _mask_flags(masks, paths)
        for i, (g, f) in enumerate(zip(leaves, flags)):
            if not f or g is None:
                continue
            if not isinstance(g, Tensor):
                raise TypeError(f"grad at {paths[i]!r} is a {type(g).__name__}, expected a tensor")
            if _has_dtensor([g]):
                raise TypeError(
                    f"grad at {paths[i]!r} is a DTensor: DTensor / FSDP2 reduce their own "
                    "gradients; all_reduce_grads averages plain (replicated) tensors only"
                )
            send.append(i)
    except (TypeError, ValueError) as exc:
        error = exc
    sent = set(send)
    digest = checksum(paths, [i in sent for i in range(len(leaves))], leaves, f"cap={cap}")
    numel = sum(leaves[i].numel() for i in send)
    agree(
        group,
        who,
        digest,
        (len(send), numel, cap),
        error,
        labels=("leaves", "elements", "bucket_cap_mb (in bytes)"),
    )

    out = list(leaves)
    if world == 1 or not send:
        return unflatten(spec, out)
    pending = []
    for b in buckets(send, leaves, cap):
        flat = pack([leaves[i] for i in b])
        pending.append((b, flat, dist.all_reduce(flat, group=group, async_op=True)))
    for b, flat, work in pending:
        work.wait()
        flat.div_(world)
        for i, v in zip(b, unpack(flat, [leaves[i] for i in b])):
            out[i] = v
    return unflatten(spec, out)
