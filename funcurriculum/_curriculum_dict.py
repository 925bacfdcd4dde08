"""A curriculum as plain data (containers, numbers, strings), for code-free checkpoints:
the `ParamIndex` record plus the per-leaf frozen flags and the coefficient entries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._coeffs import check_coefficient
from .param_index import ParamIndex


def to_dict(
    index: ParamIndex, frozen: Sequence[bool], entries: Mapping[str, float]
) -> dict[str, Any]:
    """The record of ``Curriculum.to_dict``."""
    out = index.to_dict()
    out["frozen_leaves"] = list(frozen)
    out["lr_coefficients"] = dict(entries)
    return out


def from_dict(
    data: Mapping[str, Any],
) -> tuple[ParamIndex, tuple[bool, ...], dict[str, float]]:
    """``(index, frozen flags, entries)`` of a record; ``ValueError`` naming what is
    malformed."""
    try:
        index = ParamIndex.from_dict(data)
    except ValueError as exc:
        raise ValueError(f"malformed Curriculum record: {exc}") from None
    frozen = tuple(data["frozen_leaves"])
    bad = [b for b in frozen if not isinstance(b, bool)]
    if bad:
        raise ValueError(f"malformed Curriculum record: frozen_leaves holds {bad[0]!r}, not a bool")
    if len(frozen) != len(index.paths):
        raise ValueError("malformed Curriculum record: lengths disagree with the skeleton")
    entries = {str(k): check_coefficient(v) for k, v in data["lr_coefficients"].items()}
    unknown = [k for k in entries if k not in index.leaves_under]
    if unknown:
        raise ValueError(
            f"malformed Curriculum record: coefficient entries for unknown names {unknown}"
        )
    return index, frozen, entries
