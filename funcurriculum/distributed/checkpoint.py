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

import hashlib
import io
import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from .._state_check import check_opt_state
from .._tree import PyTree, align, flatten, spec_paths, unflatten
from .._validate import mask_value as _mask_value
from ..checkpoint import _decode, _encode
from ..curriculum import Curriculum
from ._check import agree, checksum
from ._dcp_meta import SafeFileSystemReader, read_metadata

_META = "meta"


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _dcp(fn, sd: dict[str, Any], checkpoint_id, group: Any, **kw: Any) -> None:
    """``dcp.save`` / ``dcp.load`` on ``group``, or single-process without a process group."""
    if _distributed():
        fn(sd, checkpoint_id=checkpoint_id, process_group=group, **kw)
        return
    with warnings.catch_warnings():  # "assuming the intent is ... a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        fn(sd, checkpoint_id=checkpoint_id, no_dist=True, **kw)


def _phase(group: Any, who: str, fn: Callable[[], Any], digest: Callable[[Any], int] | None = None):
    """Run the local step ``fn``, then agree with the other ranks that every one succeeded.

    A rank whose ``fn`` raised re-raises its error, the others raise ``RuntimeError``
    ("another rank failed"), all right away, instead of the healthy ranks blocking in the
    next collective until the process-group timeout. With ``digest``, the ranks must
    also agree on ``digest(result)`` (else ``ValueError`` on every rank).
    """
    out, error, d = None, None, 0
    try:
        out = fn()
        if digest is not None:
            d = digest(out)
    except Exception as exc:  # any local failure must reach the other ranks
        error = exc
    if _distributed():
        agree(group, who, d, (), error)
    elif error is not None:
        raise error
    return out


def _load_reader(checkpoint_id) -> SafeFileSystemReader:
    return SafeFileSystemReader(checkpoint_id)


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
      masks: masks in force (saved so ``load`` can rebuild the state); default:
        ``curriculum.masks`` if given, else all trainable.
      curriculum: optional ``Curriculum`` to store.
      progress: optional plain data (e.g. ``{"epoch": 3, "batch": 17}``).
      group: the process group (default: the world; no process group: single process).

    Raises:
      ValueError: on every rank, when the ranks disagree on the params tree, shapes,
        dtypes, masks, curriculum or progress (only one rank's copy would be written),
        or when ``state`` does not fit ``params`` (checked as ``load`` checks it);
        nothing is written.
      RuntimeError: on the other ranks, when one rank fails preparing its part.

    Example:
      >>> import os, tempfile, torch, funcurriculum as fc, funcurriculum.distributed as fcd
      >>> p = {"w": torch.ones(2)}
      >>> opt = fc.adam(0.1)
      >>> d = os.path.join(tempfile.mkdtemp(), "ckpt")
      >>> fcd.save(d, p, opt.init(p), progress={"epoch": 1})
      >>> fcd.load(d, {"w": torch.zeros(2)}, opt)["progress"]
      {'epoch': 1}
    """
    who = "funcurriculum.distributed.save"

    def prepare() -> tuple[dict[str, Any], int]:
        leaves, spec = flatten(params)
        paths = spec_paths(spec)
        # the state is checked as load checks it (a count tree over other paths, a
        # tampered step): a rank that fails here makes every rank raise, nothing written
        check_opt_state(state, params, who)
        m = curriculum.masks if masks is None and curriculum is not None else masks
        flags = (
            [True] * len(paths)
            if m is None
            else [_mask_value(x, p) for x, p in zip(align(m, spec, paths, "masks"), paths)]
        )
        sd: dict[str, Any] = {f"params/{p}": t.detach() for p, t in zip(paths, leaves)}
        sd.update(_state_entries(state, spec, paths))
        meta = {
            "paths": list(paths),
            "masks": flags,
            "curriculum": curriculum,
            "progress": progress,
        }
        encoded = _encode(meta, "")
        sd[_META] = _meta_tensor(meta)
        # what only one rank's copy of is written must be the same on every rank: the tree,
        # shapes and dtypes (global shapes for DTensors), masks, curriculum and progress
        fields = sorted(k for k in state if k != "step") if isinstance(state, dict) else []
        digest = checksum(
            paths, flags, leaves, hashlib.blake2b(repr((encoded, fields)).encode()).hexdigest()
        )
        return sd, digest

    sd, _ = _phase(group, who, prepare, digest=lambda r: r[1])
    _dcp(dcp.save, sd, checkpoint_id, group)


def load(
    checkpoint_id: str | os.PathLike, params: PyTree, opt: Any, *, group: Any = None
) -> dict[str, Any]:
    """Load a checkpoint written by ``save`` (collective), resharding as needed.

    The masks stored in the checkpoint decide which state is allocated:
    ``opt.init(params, masks)`` (so with a ``shard_optimizer`` each rank allocates
    and reads only what it owns in *this* run, whatever the world size at save time),
    then DCP fills params and state in place.

    Args:
      checkpoint_id: the directory given to ``save``.
      params: template pytree with the run's structure (plain tensors or DTensors with
        the placements wanted now); filled in place.
      opt: the optimizer of the resumed run (plain or sharded).
      group: the process group (default: the world; no process group: single process).

    Returns:
      ``{"params", "state", "masks", "curriculum", "progress"}``.

    Raises:
      ValueError: the checkpoint's leaf paths or shapes differ from ``params``; a
        ``.metadata`` file naming anything but DCP's metadata classes (read with a
        restricted unpickler: nothing in it runs).
      RuntimeError: on the other ranks, when one rank fails in any step (every rank
        raises right away; none waits for the process-group timeout).
    """
    who = "funcurriculum.distributed.load"
    name = os.fspath(checkpoint_id)
    leaves, spec = flatten(params)
    paths = spec_paths(spec)

    def read_md() -> Any:
        md = read_metadata(os.path.join(name, ".metadata")).state_dict_metadata
        if _META not in md:
            raise ValueError(f"{name!r} is not a funcurriculum DCP checkpoint")
        return md

    md = _phase(group, who, read_md)
    blob = {_META: torch.empty(tuple(md[_META].size), dtype=torch.uint8)}
    _dcp(dcp.load, blob, checkpoint_id, group, storage_reader=_load_reader(checkpoint_id))

    def check() -> Any:
        try:
            raw = torch.load(io.BytesIO(blob[_META].numpy().tobytes()), weights_only=True)
            meta = _decode(raw)
            meta = {k: meta[k] for k in ("paths", "masks", "curriculum", "progress")}
        except Exception as exc:  # refused globals, corrupted bytes, a malformed record
            raise ValueError(
                f"{name!r}: unreadable meta entry: {type(exc).__name__}: {exc}"
            ) from None
        if list(meta["paths"]) != list(paths):
            missing = [p for p in meta["paths"] if p not in paths]
            extra = [p for p in paths if p not in meta["paths"]]
            raise ValueError(
                f"checkpoint {name!r} was saved for other params: "
                f"missing here {missing[:8]}, not in the checkpoint {extra[:8]}"
                + ("" if missing or extra else " (same paths, different order)")
            )
        for p, t in zip(paths, leaves):
            saved = tuple(md[f"params/{p}"].size)
            if saved != tuple(t.shape):
                raise ValueError(
                    f"checkpoint leaf {p!r} has shape {saved}, params have {tuple(t.shape)}"
                )
        return meta

    meta = _phase(group, who, check)
    masks = unflatten(spec, meta["masks"])
    state = opt.init(params, masks)

    def entries() -> dict[str, Any]:
        sd: dict[str, Any] = {f"params/{p}": t for p, t in zip(paths, leaves)}
        sd.update(_state_entries(state, spec, paths))
        absent = [k for k in sd if k not in md]
        if absent:
            raise ValueError(
                f"checkpoint {name!r} lacks {absent[:8]}: was it saved with "
                "the same optimizer and masks?"
            )
        return sd

    sd = _phase(group, who, entries)
    with torch.no_grad():
        _dcp(dcp.load, sd, checkpoint_id, group, storage_reader=_load_reader(checkpoint_id))
    # the values DCP filled in (a tampered count or step) are checked like fc.load's
    _phase(group, who, lambda: check_opt_state(state, params, name))
    return {
        "params": params,
        "state": state,
        "masks": masks,
        "curriculum": meta["curriculum"],
        "progress": meta["progress"],
    }
