"""DTensor leaves, as a registered tree engine: updates run on the local shards.

This module registers itself (`funcurriculum.engines.registry`) as the engine for trees
holding `torch.distributed.tensor.DTensor` leaves (from ``distribute_tensor`` or FSDP2's
``fully_shard``): each DTensor param, grad and moment buffer is replaced by its local
shard, the ordinary engines run on those plain tensors (so the fused multi-tensor kernels
apply, and DTensor's per-op dispatch and its foreach memory traps are avoided), and the
results are wrapped back with the original mesh and placements. Elementwise optimizer
math on identically placed tensors needs no communication, so the result equals the
update of the full tensors. A grad whose placements differ from its param's is refused
(it would need a redistribution), never silently gathered. Per-leaf counts and the step
stay plain (replicated) 0-d tensors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed.tensor import DTensor

from .._tree import PyTree, align, flatten, spec_paths, unflatten
from ..engines import registry

Tensor = torch.Tensor


def _local(x: Any) -> Any:
    return x._local_tensor if isinstance(x, DTensor) else x


def _wrap(new: Any, old: Any, old_local: Any) -> Any:
    if not isinstance(old, DTensor):
        return new
    if new is old_local:
        return old
    out = DTensor.from_local(
        new, old.device_mesh, old.placements, run_check=False, shape=old.shape, stride=old.stride()
    )
    if old.requires_grad and not out.requires_grad:
        out.requires_grad_(True)
    return out


def _check_pair(path: str, p: Any, g: Any) -> None:
    if g is None or not isinstance(p, DTensor) and not isinstance(g, DTensor):
        return
    if not isinstance(p, DTensor) or not isinstance(g, DTensor):
        raise TypeError(
            f"leaf {path!r}: param is a {type(p).__name__} but grad a {type(g).__name__}; "
            "DTensor params need DTensor grads with the same placements"
        )
    if p.device_mesh != g.device_mesh or tuple(p.placements) != tuple(g.placements):
        raise ValueError(
            f"leaf {path!r}: grad placements {g.placements} differ from the param's "
            f"{p.placements}; redistribute the grad first (the optimizer never gathers)"
        )


def update_local(
    opt: Any,
    params: PyTree,
    grads: PyTree,
    state: dict[str, Any],
    masks: PyTree | None,
    coeffs: PyTree | None,
    donate: bool,
) -> tuple[PyTree, dict[str, Any]]:
    """``opt.update`` on the local shards of DTensor leaves, results re-wrapped."""
    leaves, spec = flatten(params)
    paths = spec_paths(spec)
    grads_l = align(grads, spec, paths, "grads", allow_missing=True)
    for path, p, g in zip(paths, leaves, grads_l):
        _check_pair(path, p, g)
    opt._check_state(state)
    fields = ("count", *opt.rule.fields)
    cols = {f: list(align(state[f], spec, paths, f"state[{f!r}]")) for f in fields}

    loc_p = [_local(x) for x in leaves]
    loc_g = [_local(x) for x in grads_l]
    loc_state = dict(state)
    loc_cols = {f: [_local(x) for x in col] for f, col in cols.items()}
    for f in fields:
        loc_state[f] = unflatten(spec, loc_cols[f])
    with torch.no_grad():
        new_p, new_state = opt.update(
            unflatten(spec, loc_p),
            unflatten(spec, loc_g),
            loc_state,
            masks,
            coeffs,
            donate=donate,
        )
    out_p = [_wrap(n, o, lo) for n, o, lo in zip(flatten(new_p)[0], leaves, loc_p)]
    for f in fields:
        new_col = flatten(new_state[f])[0]
        new_state[f] = unflatten(
            spec, [_wrap(n, o, lo) for n, o, lo in zip(new_col, cols[f], loc_cols[f])]
        )
    return unflatten(spec, out_p), new_state


def _claims(leaves: Any) -> bool:
    return any(isinstance(x, DTensor) for x in leaves)


registry.register("dtensor", _claims, update_local)
