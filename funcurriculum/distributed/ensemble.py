"""Ensembles split over ranks: each rank runs a vmapped slice of the members."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from .._tree import PyTree, flatten, unflatten
from ._check import agree, checksum, require_group


def _bounds(n: int, world: int, rank: int) -> tuple[int, int]:
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def member_slice(n: int, group: Any = None) -> slice:
    """The contiguous slice of ``n`` ensemble members this rank runs.

    Ranks get ``n // world`` members each, the first ``n % world`` ranks one more, in
    rank order, so concatenating the ranks' slices gives ``range(n)``.

    Args:
      n: number of members.
      group: the process group (default: the world).

    Returns:
      A ``slice`` into the member dimension.
    """
    world, rank = require_group(group, "member_slice")
    return slice(*_bounds(n, world, rank))


def gather_members(values: PyTree, n: int, group: Any = None) -> PyTree:
    """Concatenate every rank's per-member results along dim 0, on every rank.

    Args:
      values: a tensor (or pytree of tensors) whose dim 0 is this rank's members, in
        the order of ``member_slice``.
      n: total number of members.
      group: the process group (default: the world).

    Returns:
      The same structure with dim 0 of size ``n`` (members in global order).
    """
    world, rank = require_group(group, "gather_members")
    leaves, spec = flatten(values)
    sizes = [_bounds(n, world, r) for r in range(world)]
    mine = sizes[rank][1] - sizes[rank][0]
    error = None
    bad = [x for x in leaves if not isinstance(x, torch.Tensor) or x.shape[:1] != (mine,)]
    if bad:
        error = ValueError(
            f"gather_members: every leaf needs dim 0 == {mine} (this rank's members)"
        )
    shapes = [tuple(x.shape[1:]) if isinstance(x, torch.Tensor) else () for x in leaves]
    agree(
        group,
        "gather_members",
        checksum([str(s) for s in shapes], [0] * len(leaves), []),
        (),
        error,
    )
    width = max(b - a for a, b in sizes)
    out = []
    for x in leaves:
        padded = x.new_zeros((width, *x.shape[1:]))
        padded[:mine] = x
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded, group=group)
        out.append(torch.cat([p[: b - a] for p, (a, b) in zip(parts, sizes)]))
    return unflatten(spec, out)
