"""Freezing and unfreezing resolved to per-leaf flags, and selections that reach a leaf
through several names or kinds of layer.

Pure functions over a `ParamIndex`, per-leaf frozen flags and coefficient entries,
behind ``Curriculum.freeze`` (with ``keep=``), ``Curriculum.unfreeze`` (with the peft
``modules_to_save`` guard) and ``set_lr_coefficient`` on tied weights.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

from ._classes import describe_classes, normalize_classes, short
from ._select import Patterns, normalize_patterns
from ._selection import need_classes
from ._tree import prefixes
from .param_index import ParamIndex


def with_flags(frozen: Sequence[bool], leaves: Iterable[int], value: bool) -> tuple[bool, ...]:
    """``frozen`` with the flags of ``leaves`` (leaf indices) set to ``value``."""
    out = list(frozen)
    for i in leaves:
        if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= i < len(out):
            raise ValueError(f"{i!r} is not a leaf index in [0, {len(out)})")
        out[int(i)] = bool(value)
    return tuple(out)


def freeze(
    index: ParamIndex,
    frozen: Sequence[bool],
    names: list[str],
    keep: Any,
    *,
    stacklevel: int = 2,
) -> tuple[bool, ...]:
    """Frozen flags after ``Curriculum.freeze(names, keep=keep)``."""
    if keep is None:
        return with_flags(frozen, index.leaves_of(names), True)
    need_classes(index, "freeze(keep=...)")
    wanted = normalize_classes(keep, "keep")
    return freeze_keeping(index, frozen, names, wanted, stacklevel=stacklevel + 1)


def unfreeze(
    index: ParamIndex,
    frozen: Sequence[bool],
    names: list[str],
    patterns: Patterns | None,
    *,
    stacklevel: int = 2,
) -> tuple[bool, ...]:
    """Frozen flags after ``Curriculum.unfreeze(names)``: the originals of peft
    ``modules_to_save`` wrappers stay frozen (warned) unless a pattern that names
    ``original_module`` selects them (``".*"`` reaches them but does not name them)."""
    leaves = index.leaves_of(names)
    named = [p for p in normalize_patterns(patterns) if "original_module" in p] if patterns else []
    guarded = peft_originals(index, frozen, index.select(named) if named else [], leaves)
    if guarded:
        shown = [index.paths[i] for i in sorted(guarded)]
        warnings.warn(
            f"unfreeze({'classes=...' if patterns is None else repr(patterns)}) reaches the frozen originals of peft modules_to_save "
            f"wrappers {shown[:4]}{' ...' if len(shown) > 4 else ''}: left frozen (peft "
            "trains the '.modules_to_save.' copy); name '...original_module' to unfreeze it",
            stacklevel=stacklevel + 1,
        )
    return with_flags(frozen, leaves - guarded, False)


def freeze_keeping(
    index: ParamIndex,
    frozen: Sequence[bool],
    names: list[str],
    wanted: tuple[str, ...],
    *,
    stacklevel: int = 2,
) -> tuple[bool, ...]:
    """Frozen flags after freezing ``names`` while keeping layers of ``wanted`` classes.

    A leaf is kept when a layer of a kept class lies on the path from the selected name
    down to the module owning the leaf (both included; a selected leaf path looks at its
    owner). A tied weight kept through one name and frozen through another raises
    ``ValueError``; a keep that keeps nothing warns.
    """
    lay = index
    sel = set(names)
    fl = list(frozen)
    kept_any = False
    selected = sorted(index.leaves_of(names))
    for i in selected:
        decided: dict[str, tuple[bool, str | None]] = {}
        for n in lay.leaf_names[i]:
            chain = [*prefixes(n), n]
            start = next((k for k, q in enumerate(chain) if q in sel), None)
            if start is None:
                continue
            mods = chain[start:-1] if start < len(chain) - 1 else [(prefixes(n) or [""])[-1]]
            hit = next((m for m in mods if lay.matches_class(m, wanted)), None)
            decided[n] = (hit is not None, hit)
        verdicts = {k for k, _ in decided.values()}
        if len(verdicts) > 1:
            kept = next(n for n, (k, _) in decided.items() if k)
            froze = next(n for n, (k, _) in decided.items() if not k)
            cls = lay.classes[decided[kept][1]][0].rsplit(".", 1)[-1]
            raise ValueError(
                f"freeze(keep=...) conflicts on the tied weight {lay.paths[i]!r}: through "
                f"{kept!r} it is kept trainable (layer {decided[kept][1]!r}: {cls}) but "
                f"through {froze!r} it is frozen; select the weight through one name only, "
                "or freeze / unfreeze it explicitly"
            )
        keep_it = verdicts.pop()
        kept_any |= keep_it
        fl[i] = not keep_it
    if selected and wanted and not kept_any:
        inside = [n for n in lay.layers if any(n == r or n.startswith(f"{r}.") for r in names)]
        present = sorted({short(lay.classes[n][0]) for n in inside if n in lay.classes})
        warnings.warn(
            f"freeze({names[:3]}{' ...' if len(names) > 3 else ''}, keep="
            f"{describe_classes(wanted)}) keeps nothing: no layer of those classes inside "
            f"the frozen subtrees; layer classes there: {present[:12]}",
            stacklevel=stacklevel + 1,
        )
    return tuple(fl)


def peft_originals(
    index: ParamIndex, frozen: Sequence[bool], explicit: Sequence[str], leaves: set[int]
) -> set[int]:
    """Frozen leaves of ``leaves`` under ``<wrapper>.original_module`` of a peft
    ``ModulesToSaveWrapper``, for each wrapper none of whose original's names (nor the
    original itself) is in ``explicit``, the names selected explicitly."""
    wrappers = [n for n, mro in index.classes.items() if short(mro[0]) == "ModulesToSaveWrapper"]
    out: set[int] = set()
    for w in wrappers:
        orig = f"{w}.original_module" if w else "original_module"
        if orig not in index.leaves_under:
            continue
        if not any(n == orig or n.startswith(orig + ".") for n in explicit):
            out |= {i for i in index.leaves_under[orig] if i in leaves and frozen[i]}
    return out


def set_tied(index: ParamIndex, c: float, sel: set[str], entries: dict[str, float]) -> None:
    """Set (in ``entries``) the coefficient ``c`` of each tied weight the selection ``sel``
    governs through at least one of its names; ``ValueError`` on a conflict."""
    for lnames in index.leaf_names:
        if len(lnames) < 2:
            continue
        acted: list[str] = []
        blocked: list[tuple[str, str, float]] = []
        for n in lnames:
            chain = [*prefixes(n), n]
            if not any(q in sel for q in chain):
                continue
            gov = (
                None if n in sel else next((q for q in reversed(prefixes(n)) if q in entries), None)
            )
            if gov is None or gov in sel:
                acted.append(n)
            elif entries[gov] != c:
                blocked.append((n, gov, entries[gov]))
        if not acted:
            continue
        if blocked:
            n, gov, v = blocked[0]
            raise ValueError(
                f"set_lr_coefficient({c:g}) conflicts on the tied weight {lnames[0]!r}: "
                f"through {acted[0]!r} it would get {c:g}, but through {n!r} the more "
                f"specific entry {gov!r} keeps {v:g}; select the weight through one name "
                "only, or set the entry on the weight itself"
            )
        has_chain = any(q in entries for n in lnames for q in prefixes(n))
        if c == 1.0 and not has_chain:
            entries.pop(lnames[0], None)
        else:
            entries[lnames[0]] = c
