"""Selecting layers by module class over a `ParamIndex` (``select_by_class``,
``classes=`` selections, the leaves a ``keep=`` reaches)."""

from __future__ import annotations

import warnings
from typing import Any

from ._classes import class_hint, describe_classes, lookalike_hint, normalize_classes
from ._select import Patterns
from .param_index import ParamIndex


def need_classes(index: ParamIndex, what: str) -> None:
    """``ValueError`` when ``index`` knows no layer classes (not built from a module)."""
    if not index.has_classes:
        raise ValueError(
            f"{what} needs a curriculum that knows layer classes: build it with "
            "Curriculum.from_module(module)"
        )


def select_by_class(
    index: ParamIndex, classes: Any, under: Patterns | None = None, *, stacklevel: int = 2
) -> list[str]:
    """Layer names of ``classes`` (see ``Curriculum.select_by_class``); the lookalike
    warning (``Conv1D`` for ``Linear``) is issued ``stacklevel`` frames up."""
    need_classes(index, "selecting layers by class")
    wanted = normalize_classes(classes, "classes")
    layers = [n for n in index.layers if n in index.classes]
    if under is not None:
        roots = index.select(under)
        layers = [n for n in layers if any(n == r or n.startswith(r + ".") for r in roots)]
    found = [n for n in layers if index.matches_class(n, wanted)]
    present = [index.classes[n][0] for n in layers]
    if not found:
        where = "" if under is None else f" under {under!r}"
        raise ValueError(
            f"no layer of class {describe_classes(wanted)}{where}" + class_hint(wanted, present)
        )
    hint = lookalike_hint(wanted, present)
    if hint:
        warnings.warn(
            f"select_by_class({describe_classes(wanted)}) found {len(found)} layer(s) "
            f"{found[:4]}{hint}",
            stacklevel=stacklevel + 1,
        )
    return found


def selection(
    index: ParamIndex, patterns: Patterns | None, classes: Any, what: str, *, stacklevel: int = 2
) -> list[str]:
    """The names a ``freeze`` / ``unfreeze`` / ``set_lr_coefficient`` call selects:
    ``patterns`` matched, or the layers of ``classes`` within them."""
    if classes is not None:
        return select_by_class(index, classes, under=patterns, stacklevel=stacklevel + 1)
    if patterns is None:
        raise TypeError(f"{what} needs patterns (or classes=)")
    return index.select(patterns)


def leaves_of_class(index: ParamIndex, classes: Any, what: str = "keep=") -> frozenset[int]:
    """Leaves with a layer of ``classes`` on the path to them (through any name): the
    rule a prefix-based selection (``Freezer``) uses for ``keep``."""
    need_classes(index, what)
    return index.leaves_of_class(classes, "keep")
