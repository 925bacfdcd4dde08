"""The ``torch.optim`` bridge: param groups from a curriculum's per-leaf frozen flags and
coefficients (``Curriculum.param_groups``), with the no-decay split."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ._tree import PyTree, align, describe_mismatch
from .param_index import ParamIndex


def check_lr(lr: Any) -> Any:
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1:
            raise TypeError(f"lr must be a number or a 0-d tensor, got shape {tuple(lr.shape)}")
        return lr
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
        raise TypeError(
            f"lr must be a number (torch.optim param groups need a base lr), got "
            f"{type(lr).__name__}: {lr!r}"
        )
    if not math.isfinite(lr) or lr < 0:
        raise ValueError(f"lr must be finite and >= 0, got {lr!r}")
    return float(lr)


def _check_weight_decay(wd: Any) -> float | None:
    if wd is None:
        return None
    if isinstance(wd, bool) or not isinstance(wd, numbers.Real) or not math.isfinite(wd) or wd < 0:
        raise ValueError(f"weight_decay must be a finite number >= 0, got {wd!r}")
    return float(wd)


def decay_flags(
    index: ParamIndex, params: PyTree, mask: PyTree | Callable[[PyTree], PyTree] | None
) -> list[bool]:
    """Per-leaf ``weight_decay_mask`` flags (True = decays), as the optimizers read them."""
    if mask is None:
        return [True] * len(index.paths)
    tree = mask(params) if callable(mask) else mask
    out = []
    for m, path in zip(align(tree, index.spec, index.paths, "weight_decay_mask"), index.paths):
        if not isinstance(m, bool):
            raise TypeError(f"weight_decay_mask at {path!r} must be a bool, got {type(m).__name__}")
        out.append(m)
    return out


def param_groups(
    index: ParamIndex,
    params: Any,
    lr: Any,
    frozen: Sequence[bool],
    coeffs: Sequence[float],
    skip: Sequence[bool] | None = None,
    *,
    named: bool = False,
    weight_decay: float | None = None,
    weight_decay_mask: PyTree | Callable[[PyTree], PyTree] | None = None,
) -> list[dict[str, Any]]:
    """Groups per (coefficient, decays) in order of first appearance; see
    ``Curriculum.param_groups``."""
    lr = check_lr(lr)
    wd = _check_weight_decay(weight_decay)
    if isinstance(params, nn.Module):
        params = dict(params.named_parameters())
    leaves = align(params, index.spec, index.paths, "params")
    decays = decay_flags(index, params, weight_decay_mask)
    skip = skip or [False] * len(leaves)
    groups: dict[tuple[float, bool], dict[str, Any]] = {}
    for path, leaf, fz, c, s, d in zip(index.paths, leaves, frozen, coeffs, skip, decays):
        if fz or s:
            continue
        key = (c, d)
        if key not in groups:
            g: dict[str, Any] = {"params": [], "lr": lr * c}
            if not d:
                g["weight_decay"] = 0.0
            elif wd is not None:
                g["weight_decay"] = wd
            groups[key] = g
        groups[key]["params"].append((path, leaf) if named else leaf)
    return list(groups.values())


def curriculum_groups(
    cur: Any,
    params: Any,
    lr: Any,
    since: Any = None,
    named: bool = False,
    weight_decay: float | None = None,
    weight_decay_mask: PyTree | Callable[[PyTree], PyTree] | None = None,
) -> list[dict[str, Any]]:
    """``Curriculum.param_groups`` (arguments in its order; ``since`` must be a curriculum
    of ``cur``'s type over the same paths)."""
    skip = None
    if since is not None:
        if not isinstance(since, type(cur)):
            raise TypeError(f"since must be a Curriculum, got {type(since).__name__}")
        if since.index.paths != cur.index.paths:
            raise ValueError(
                "since= is a curriculum over other params: "
                + describe_mismatch(cur.index.paths, since.index.paths)
            )
        skip = [not f for f in since.frozen_leaves]
    return param_groups(
        cur.index,
        params,
        lr,
        cur.frozen_leaves,
        cur.leaf_coefficients,
        skip,
        named=named,
        weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask,
    )
