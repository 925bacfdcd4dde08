"""LR coefficient entries: validation, setting (tied weights included), per-leaf lookup.

A curriculum's coefficients are a sparse dict ``name -> coefficient`` (absent = 1.0);
a leaf takes its most specific ancestor entry (the leaf path itself counts). A tied
weight's coefficient is one entry on its leaf path (see `_resolve.set_tied`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from . import _resolve
from ._tree import prefixes
from ._validate import nonneg_real
from .param_index import ParamIndex


def check_coefficient(coefficient: Any) -> float:
    """A coefficient as a float: a real number or a one-element tensor, finite, >= 0."""
    if isinstance(coefficient, torch.Tensor):
        if coefficient.numel() != 1:
            raise TypeError(
                f"coefficient must be a number, got a tensor of shape {tuple(coefficient.shape)}"
            )
        coefficient = coefficient.item()
    return nonneg_real(coefficient, "coefficient", "a real number")


def set_entries(
    index: ParamIndex, entries: Mapping[str, float], c: float, names: Sequence[str]
) -> dict[str, float]:
    """New entries with ``c`` set on each of ``names`` (see ``Curriculum.set_lr_coefficient``).

    ``1.0`` removes an entry unless an ancestor entry would then apply; a tied weight's
    entry is resolved over all its names (``ValueError`` on a conflict).
    """
    tied = index.tied
    tied_names = {n for p, al in tied.items() for n in (p, *al)}
    out = dict(entries)
    for name in names:
        if name in tied_names:
            continue  # a tied weight's leaf-level entry is set below
        if c == 1.0 and not any(q in out for q in prefixes(name)):
            out.pop(name, None)
        else:
            out[name] = c
    if tied:
        _resolve.set_tied(index, c, set(names), out)
    return out


def leaf_coefficient(index: ParamIndex, entries: Mapping[str, float], path: str) -> float:
    """The coefficient of leaf ``path``: its most specific ancestor entry (else 1.0)."""
    if path in entries:
        return entries[path]
    if path in index.tied:
        return 1.0  # a tied weight's only entry is on its path
    for q in reversed(prefixes(path)):
        if q in entries:
            return entries[q]
    return 1.0


def leaf_coefficients(index: ParamIndex, entries: Mapping[str, float]) -> tuple[float, ...]:
    """Per-leaf coefficients in traversal order."""
    return tuple(leaf_coefficient(index, entries, p) for p in index.paths)
