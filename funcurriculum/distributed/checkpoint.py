"""Checkpoints of (sharded) distributed runs through ``torch.distributed.checkpoint`` (DCP).

Layout of the DCP state dict (flat string keys)::

    params/<path>              every leaf (plain replicated tensors are written once;
                               DTensors shard by shard)
    state/step                 the global step (replicated)
    state/count/<path>         per-leaf counts (replicated)
    state/<field>/<path>       moment buffers, written by the ranks that hold them: under
                               ZeRO-1 only the owner; unsharded data parallel: once
    state/<entry>              a chain transform's entry (grad_norm, skipped: replicated)
    state/<label>/...          a multi_optimizer's sub-state per label, laid out as above
    meta                       uint8 tensor: masks, Curriculum and progress, serialised
                               code-free (``torch.save`` of plain data, loaded with
                               ``weights_only=True``)

Loading onto a different world size reshards: moment buffers are stored whole per leaf
(ZeRO-1 never splits a leaf), so each rank of the new run reads the buffers of the
leaves it owns under the new ownership, and DCP reshards DTensors itself.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from .._tree import PyTree, align, flatten, spec_paths, unflatten
from ..checkpoint import _decode, _encode
from ..curriculum import Curriculum
from ..driver import _mask_value

_META = "meta"


def _dcp(fn, sd: dict[str, Any], checkpoint_id, group: Any) -> None:
    """``dcp.save`` / ``dcp.load`` on ``group``, or single-process without a process group."""
    if dist.is_available() and dist.is_initialized():
        fn(sd, checkpoint_id=checkpoint_id, process_group=group)
        return
    with warnings.catch_warnings():  # "assuming the intent is ... a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        fn(sd, checkpoint_id=checkpoint_id, no_dist=True)


def _meta_tensor(obj: Any) -> torch.Tensor:
    buf = io.BytesIO()
    torch.save(_encode(obj, ""), buf)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def _state_entries(
    state: dict[str, Any], spec, paths, prefix: str = "state"
) -> dict[str, torch.Tensor]:
    """Flat DCP keys of an optimizer state (recursing into a multi_optimizer's sub-states).

    A tensor entry (``step``, a chain transform's ``grad_norm`` / ``skipped``) is one key;
    a tree shaped like the params gives one key per leaf (zero-size buffers of leaves
    this rank does not own are left out; counts always kept); a dict of such entries
    (one label's sub-state) recurses under its name.
    """
    out: dict[str, torch.Tensor] = {}
    for key, tree in state.items():
        name = f"{prefix}/{key}"
        if isinstance(tree, torch.Tensor):
            out[name] = tree
            continue
        leaves, sub_spec = flatten(tree)
        if sub_spec == spec or list(spec_paths(sub_spec)) == list(paths):
            for p, t in zip(paths, leaves):
                if key == "count" or t.numel() > 0:
                    out[f"{name}/{p}"] = t
        elif isinstance(tree, dict):
            out.update(_state_entries(tree, spec, paths, name))
        else:
            raise TypeError(
                f"cannot checkpoint optimizer state entry {name!r}: {type(tree).__name__}"
            )
    return out


def save(
    checkpoint_id: str | os.PathLike,
    params: PyTree,
    state: dict[str, Any],
    *,
    masks: PyTree | None = None,
    curriculum: Curriculum | None = None,
    progress: dict[str, Any] | None = None,
    group: Any = None,
) -> None:
    """Save a distributed run with ``torch.distributed.checkpoint`` (collective).

    Every rank of ``group`` calls it with its own params and state: plain tensors that
    are the same on every rank are written once, ZeRO-1 moment buffers by their owner,
    DTensors shard by shard.

    Args:
      checkpoint_id: a directory (DCP writes one file per rank plus metadata).
      params: pytree of tensors (plain or DTensor).
      state: the optimizer state (sharded or not).
      masks: masks in force (saved so :func:`load` can rebuild the state); default:
        ``curriculum.masks`` if given, else all trainable.
      curriculum: optional :class:`~funcurriculum.Curriculum` to store.
      progress: optional plain data (e.g. ``{"epoch": 3, "batch": 17}``).
      group: the process group (default: the world; no process group: single process).

    Example:
      >>> import os, tempfile, torch, funcurriculum as fc, funcurriculum.distributed as fcd
      >>> p = {"w": torch.ones(2)}
      >>> opt = fc.adam(0.1)
      >>> d = os.path.join(tempfile.mkdtemp(), "ckpt")
      >>> fcd.save(d, p, opt.init(p), progress={"epoch": 1})
      >>> fcd.load(d, {"w": torch.zeros(2)}, opt)["progress"]
      {'epoch': 1}
    """
    leaves, spec = flatten(params)
    paths = spec_paths(spec)
    if masks is None and curriculum is not None:
        masks = curriculum.masks
    flags = (
        [True] * len(paths)
        if masks is None
        else [_mask_value(m, p) for m, p in zip(align(masks, spec, paths, "masks"), paths)]
    )
    sd: dict[str, Any] = {f"params/{p}": t.detach() for p, t in zip(paths, leaves)}
    sd.update(_state_entries(state, spec, paths))
    meta = {"paths": list(paths), "masks": flags, "curriculum": curriculum, "progress": progress}
    sd[_META] = _meta_tensor(meta)
    _dcp(dcp.save, sd, checkpoint_id, group)


def load(
    checkpoint_id: str | os.PathLike, params: PyTree, opt: Any, *, group: Any = None
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save` (collective), resharding as needed.

    The masks stored in the checkpoint decide which state is allocated:
    ``opt.init(params, masks)`` (so with a :func:`shard_optimizer` each rank allocates
    and reads only what it owns in *this* run, whatever the world size at save time),
    then DCP fills params and state in place.

    Args:
      checkpoint_id: the directory given to :func:`save`.
      params: template pytree with the run's structure (plain tensors or DTensors with
        the placements wanted now); filled in place.
      opt: the optimizer of the resumed run (plain or sharded).
      group: the process group (default: the world; no process group: single process).

    Returns:
      ``{"params", "state", "masks", "curriculum", "progress"}``.

    Raises:
      ValueError: the checkpoint's leaf paths or shapes differ from ``params``.
    """
    leaves, spec = flatten(params)
    paths = spec_paths(spec)
    md = dcp.FileSystemReader(checkpoint_id).read_metadata().state_dict_metadata
    if _META not in md:
        raise ValueError(f"{os.fspath(checkpoint_id)!r} is not a funcurriculum DCP checkpoint")
    blob = {_META: torch.empty(tuple(md[_META].size), dtype=torch.uint8)}
    _dcp(dcp.load, blob, checkpoint_id, group)
    meta = _decode(torch.load(io.BytesIO(blob[_META].numpy().tobytes()), weights_only=True))
    if list(meta["paths"]) != list(paths):
        missing = [p for p in meta["paths"] if p not in paths]
        extra = [p for p in paths if p not in meta["paths"]]
        raise ValueError(
            f"checkpoint {os.fspath(checkpoint_id)!r} was saved for other params: "
            f"missing here {missing[:8]}, not in the checkpoint {extra[:8]}"
            + ("" if missing or extra else " (same paths, different order)")
        )
    for p, t in zip(paths, leaves):
        saved = tuple(md[f"params/{p}"].size)
        if saved != tuple(t.shape):
            raise ValueError(
                f"checkpoint leaf {p!r} has shape {saved}, params have {tuple(t.shape)}"
            )
    masks = unflatten(spec, meta["masks"])
    state = opt.init(params, masks)
    sd: dict[str, Any] = {f"params/{p}": t for p, t in zip(paths, leaves)}
    sd.update(_state_entries(state, spec, paths))
    absent = [k for k in sd if k not in md]
    if absent:
        raise ValueError(
            f"checkpoint {os.fspath(checkpoint_id)!r} lacks {absent[:8]}: was it saved with "
            "the same optimizer and masks?"
        )
    with torch.no_grad():
        _dcp(dcp.load, sd, checkpoint_id, group)
    return {
        "params": params,
        "state": state,
        "masks": masks,
        "curriculum": meta["curriculum"],
        "progress": meta["progress"],
    }
