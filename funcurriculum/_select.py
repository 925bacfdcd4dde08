"""Pattern selection over layer names and leaf paths (``re.fullmatch``)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ._tree import PyTree, close_matches, flatten_with_paths, prefixes

Patterns = str | Sequence[str]


def node_names(leaf_paths: Sequence[str]) -> list[str]:
    """Layer names and leaf paths in pre-order: each leaf after its (new) ancestors."""
    seen: dict[str, None] = {}
    for p in leaf_paths:
        for q in prefixes(p):
            seen.setdefault(q, None)
        seen.setdefault(p, None)
    return list(seen)


def normalize_patterns(patterns: Patterns) -> list[str]:
    """Validate ``patterns`` (a str or a non-empty list of str) and return a list."""
    if isinstance(patterns, str):
        pats = [patterns]
    elif isinstance(patterns, (list, tuple)):
        pats = list(patterns)
    else:
        raise TypeError(
            f"patterns must be a str or a list of str, got {type(patterns).__name__}: {patterns!r}"
        )
    if not pats:
        raise ValueError("patterns is empty: give at least one layer name or regex")
    for p in pats:
        if not isinstance(p, str):
            raise TypeError(f"pattern {p!r} is a {type(p).__name__}, expected str")
    return pats


def compile_pattern(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {exc}") from None


def match_names(names: Sequence[str], patterns: Patterns) -> list[str]:
    """Names (in their given order) that any pattern fully matches.

    Raises ``ValueError`` naming a pattern that matches nothing, with close matches.
    """
    pats = normalize_patterns(patterns)
    hit: set[str] = set()
    for pat in pats:
        rx = compile_pattern(pat)
        found = [n for n in names if rx.fullmatch(n)]
        if not found:
            near = close_matches(pat, names)
            hint = f"; did you mean {near}?" if near else ""
            raise ValueError(f"pattern {pat!r} matches no layer name or parameter path{hint}")
        hit.update(found)
    return [n for n in names if n in hit]


def select_layers(params: PyTree, patterns: Patterns) -> list[str]:
    """Layer names and leaf paths matched by ``patterns``.

    Each pattern is matched with ``re.fullmatch`` against every layer name and every
    leaf path, so a plain string is an exact selector and a regex selects groups.

    Args:
      params: a pytree of tensors.
      patterns: a str or a list of str (regular expressions).

    Returns:
      The matched names, deduplicated, in traversal order (a layer before its leaves).

    Raises:
      ValueError: a pattern matches nothing (the message names it and suggests close
        matches), a pattern is not a valid regex, or the list is empty.
      TypeError: ``patterns`` is not a str or a list of str.

    Example:
      >>> import torch, funcurriculum as fc
      >>> p = {"backbone.conv1.weight": torch.zeros(1), "head.weight": torch.zeros(1)}
      >>> fc.select_layers(p, [r"back.*\\.conv\\d", "head"])
      ['backbone.conv1', 'head']
    """
    return match_names(node_names(flatten_with_paths(params)[0]), patterns)
