"""Validation of an optimizer state against its params (used when saving and loading).

An optimizer state is ``{"step": int64 tensor, "count": tree of float32, <field>: tree}``
(see ``funcurriculum.optimizer``); wrappers add tensors or numbers beside them
(``"skipped"``, ``"grad_norm"``) and chains / multi-optimizers nest such dicts. One
function, ``check_opt_state``, checks all of it, so a tampered or mismatched state
is refused with the path of the first bad entry instead of producing NaN or a wrong bias
correction at the next update.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from ._tree import PyTree, describe_mismatch, flatten_with_paths


def _is_opt_state(x: Any) -> bool:
    return isinstance(x, dict) and "step" in x and "count" in x


def _scalar_entry(x: Any) -> bool:
    return x is None or isinstance(x, (torch.Tensor, numbers.Number, str))


def check_opt_state(opt_state: Any, params: PyTree, where: str) -> None:
    """Refuse an optimizer state that does not fit ``params`` or holds impossible values.

    Checked, for the state and every nested optimizer state (a dict with ``"step"`` and
    ``"count"``): ``step`` is an int64 tensor >= 0 whose shape is every count's shape
    (0-d, or ``(E,)`` for a vmapped ensemble); every count is a finite, whole, >= 0
    float32 tensor whose shape is a prefix of its param's; every moment field is a tree
    over the same paths whose tensors have the param's dtype and shape (or are empty:
    frozen at ``init``). A nested state may cover a subset of the paths (a
    ``partition`` part); its entries over other paths (a chain's transform states) are
    not checked. At the top level every per-leaf entry must cover the params' paths. A
    state that is neither a dict nor a list of optimizer states (a custom optimizer's) is
    not checked.

    Args:
      opt_state: the state.
      params: the params pytree it belongs to.
      where: prefix of the error messages (e.g. the file name).

    Raises:
      ValueError: naming ``where`` and the offending entry and path.
    """
    ref_paths, ref, _ = flatten_with_paths(params)
    _walk(opt_state, dict(zip(ref_paths, ref)), list(ref_paths), where, "opt_state", True)


def _walk(state: Any, ref: dict, ref_paths: list, where: str, name: str, top: bool) -> None:
    group = _state_group(state)
    if group is not None:  # a list / dict of optimizer states (chains, multi-optimizers)
        for label, sub in group:
            _walk(sub, ref, ref_paths, where, f"{name}[{label!r}]", False)
        return
    if not isinstance(state, dict):
        return  # a custom optimizer's state: not checked
    opt = _is_opt_state(state)
    paths = _check_step_count(state, ref, ref_paths, where, name, top) if opt else ref_paths
    for key, sub in state.items():
        if opt and key in ("step", "count"):
            continue
        here = f"{name}[{key!r}]"
        if _scalar_entry(sub):
            continue
        if _is_opt_state(sub) or _state_group(sub) is not None:
            _walk(sub, ref, ref_paths, where, here, False)
            continue
        _check_field(sub, paths, ref, where, here, moment=opt, strict=top)


def _check_field(
    tree: Any, paths: list, ref: dict, where: str, here: str, moment: bool, strict: bool
) -> None:
    """A per-leaf tree: the paths of its state; a moment buffer has the param's dtype and
    shape (or is empty); other per-leaf entries have a prefix of the param's shape.

    An entry over other paths is an error at the top level (``strict``); inside a nested
    state it is a wrapper's own data (a chain's transform state), not checked."""
    sub_paths, leaves, _ = flatten_with_paths(tree)
    if list(sub_paths) != list(paths):
        if not strict:
            return
        raise ValueError(
            f"{where}: {here} does not match the params: " + describe_mismatch(paths, sub_paths)
        )
    for p, s in zip(sub_paths, leaves):
        if not isinstance(s, torch.Tensor):
            if moment and s is not None:
                raise ValueError(f"{where}: {here} at {p!r} is a {type(s).__name__}")
            continue
        r = ref[p]
        if moment:
            if s.numel() != 0 and s.shape != r.shape:
                raise ValueError(
                    f"{where}: {here} at {p!r} has shape {tuple(s.shape)}, param has "
                    f"{tuple(r.shape)}"
                )
            if s.dtype != r.dtype:
                raise ValueError(
                    f"{where}: {here} at {p!r} has dtype {s.dtype}, param has {r.dtype}"
                )
        elif s.numel() != 0 and r.shape[: s.dim()] != s.shape:
            raise ValueError(
                f"{where}: {here} at {p!r} has shape {tuple(s.shape)}, param has {tuple(r.shape)}"
            )


def _state_group(x: Any) -> list[tuple[Any, Any]] | None:
    """``[(label, state), ...]`` when ``x`` is a non-empty dict / list of optimizer states."""
    if isinstance(x, dict) and not _is_opt_state(x):
        items = list(x.items())
    elif isinstance(x, (list, tuple)):
        items = list(enumerate(x))
    else:
        return None
    if items and all(_is_opt_state(v) or _state_group(v) is not None for _, v in items):
        return items
    return None


def _check_step_count(
    state: dict, ref: dict, ref_paths: list, where: str, name: str, top: bool
) -> list:
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, (torch.Tensor, numbers.Integral)):
        raise ValueError(f"{where}: {name}['step'] must be an int64 tensor, got {step!r}")
    if isinstance(step, torch.Tensor):
        if step.dtype != torch.int64:
            raise ValueError(f"{where}: {name}['step'] has dtype {step.dtype}, expected int64")
        if step.numel() and bool((step < 0).any()):
            raise ValueError(f"{where}: {name}['step'] is negative ({step.tolist()})")
        step_shape = tuple(step.shape)
    else:
        if step < 0:
            raise ValueError(f"{where}: {name}['step'] is negative ({step})")
        step_shape = ()
    c_paths, counts, _ = flatten_with_paths(state["count"])
    c_paths = list(c_paths)
    if top and c_paths != list(ref_paths):
        raise ValueError(
            f"{where}: {name}['count'] does not match the params: "
            + describe_mismatch(ref_paths, c_paths)
        )
    unknown = [p for p in c_paths if p not in ref]
    if unknown:
        raise ValueError(f"{where}: {name}['count'] has paths not in the params: {unknown[:8]}")
    for p, c in zip(c_paths, counts):
        what = f"{where}: {name}['count'] at {p!r}"
        if not isinstance(c, torch.Tensor):
            raise ValueError(f"{what} must be a float32 tensor, got {type(c).__name__}")
        if c.dtype != torch.float32:
            raise ValueError(f"{what} has dtype {c.dtype}, expected float32")
        if tuple(c.shape) != step_shape:
            raise ValueError(
                f"{what} has shape {tuple(c.shape)}, the step has {step_shape} (they match: "
                "0-d, or one entry per ensemble member)"
            )
        if ref[p].shape[: c.dim()] != c.shape:
            raise ValueError(f"{what} has shape {tuple(c.shape)}, param {tuple(ref[p].shape)}")
    _check_count_values(c_paths, counts, f"{where}: {name}['count']")
    return c_paths


def _check_count_values(paths: list, counts: list, what: str) -> None:
    """Counts must be whole numbers >= 0: one reduction (one sync) per device."""
    by_dev: dict[torch.device, list[int]] = {}
    for i, c in enumerate(counts):
        if c.numel():
            by_dev.setdefault(c.device, []).append(i)
    for idx in by_dev.values():
        flat = torch.cat([counts[i].detach().reshape(-1) for i in idx])
        ok = torch.isfinite(flat) & (flat >= 0) & (flat == flat.trunc())
        if bool(ok.all()):
            continue
        for i in idx:
            values = counts[i].detach().reshape(-1).tolist()
            bad = [v for v in values if not math.isfinite(v) or v < 0 or v != int(v)]
            if bad:
                raise ValueError(
                    f"{what} at {paths[i]!r} must be a whole number >= 0, got {bad[0]!r}"
                )
