"""Process-group plumbing shared by the distributed helpers: group checks and misuse detection.

Every collective entry point first calls ``agree``, one tiny ``all_reduce`` (MAX over a
few int64 numbers) that carries a checksum of what this rank is about to communicate (tree
paths, which leaves take part, shapes, dtypes) plus a "this rank failed locally" flag. When
the ranks disagree, every rank raises the same clear error instead of entering mismatched
collectives and hanging.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

_MASK63 = (1 << 63) - 1


def require_group(group: Any, who: str) -> tuple[int, int]:
    """``(world_size, rank)`` of ``group``; a clear ``RuntimeError`` without a process group."""
    if not dist.is_available():
        raise RuntimeError(f"{who} needs torch.distributed, which this torch build lacks")
    if not dist.is_initialized():
        raise RuntimeError(
            f"{who} needs an initialised process group: call "
            "torch.distributed.init_process_group(backend) first (torchrun sets the "
            "MASTER_ADDR / RANK / WORLD_SIZE environment it reads)"
        )
    rank = dist.get_rank(group)
    if rank < 0:
        raise RuntimeError(f"{who}: this process is not a member of the given group")
    return dist.get_world_size(group), rank


def global_rank(group: Any, rank: int) -> int:
    """The global rank of ``group``'s member ``rank`` (identity for the default group)."""
    return rank if group is None else dist.get_global_rank(group, rank)


def comm_device(group: Any) -> torch.device:
    """Device that the group's backend communicates from (CUDA for NCCL, else CPU)."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def checksum(
    paths: Sequence[str], flags: Sequence[Any], leaves: Sequence[Any], extra: str = ""
) -> int:
    """63-bit digest of paths, per-leaf flags, shapes and dtypes (equal trees -> equal digest)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(extra.encode())
    for p, f, x in zip(paths, flags, leaves):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else None
        dtype = str(x.dtype) if isinstance(x, torch.Tensor) else type(x).__name__
        h.update(f"|{p}:{f}:{shape}:{dtype}".encode())
    return int.from_bytes(h.digest(), "little") & _MASK63


def agree(
    group: Any,
    who: str,
    digest: int,
    counts: Sequence[int] = (),
    error: BaseException | None = None,
    labels: Sequence[str] | None = None,
    *,
    parts: Sequence[tuple[str, int]] = (),
) -> None:
    """Check that all ranks of ``group`` hold the same ``digest`` and that none failed.

    One ``all_reduce(MAX)`` of ``[digest, -digest, failed, c, -c, ..., d, -d, ...]``.
    Raises on every rank when the digests differ (naming the spread of ``counts``, e.g.
    leaves / elements) or when some rank hit ``error`` locally (that rank re-raises its
    own error). With ``labels`` (one per count), a mismatch names the labelled counts
    that differ (e.g. ``bucket_cap_mb``) instead of blaming the trees. ``parts``:
    further ``(name, digest)`` pairs checked in the same call; a mismatch raises
    ``ValueError`` naming ``name``.
    """
    vals = [digest, -digest, int(error is not None)]
    for c in counts:
        vals += [int(c), -int(c)]
    for _, d in parts:
        vals += [int(d), -int(d)]
    t = torch.tensor(vals, dtype=torch.int64, device=comm_device(group))
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    got = t.tolist()
    if error is not None:
        raise error
    if got[2]:
        raise RuntimeError(
            f"{who}: another rank failed with an error before communicating (see its traceback)"
        )
    base = 3 + 2 * len(counts)
    for k, (name, _) in enumerate(parts):
        if got[base + 2 * k] != -got[base + 2 * k + 1] and got[0] == -got[1]:
            raise ValueError(
                f"{who}: ranks passed different {name} (checksum mismatch). Every rank must "
                f"pass the same {name}."
            )
    if got[0] != -got[1]:
        if labels is not None:
            differ = [
                f"{lab} ({-got[3 + 2 * k + 1]}..{got[3 + 2 * k]})"
                for k, lab in enumerate(labels)
                if got[3 + 2 * k] != -got[3 + 2 * k + 1]
            ]
            if differ:
                raise ValueError(
                    f"{who}: ranks passed different values of {', '.join(differ)}; every "
                    "rank must pass the same"
                )
        spread = ", ".join(f"{-got[3 + 2 * k + 1]}..{got[3 + 2 * k]}" for k in range(len(counts)))
        raise ValueError(
            f"{who}: ranks passed different trees or masks (checksum mismatch"
            + (f"; per-rank ranges of (leaves, elements): {spread}" if counts else "")
            + "). Every rank must pass the same tree structure, shapes, dtypes and masks."
        )
