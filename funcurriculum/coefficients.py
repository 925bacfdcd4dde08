"""LR coefficient schedules: layer-wise LR decay and coefficient changes at phase boundaries."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._coeffs import check_coefficient
from ._rule import Span, exact
from ._select import Patterns, normalize_patterns
from ._tree import PyTree, prefixes
from .curriculum import Curriculum


def _owner(path: str) -> str:
    pre = prefixes(path)
    return pre[-1] if pre else path


def layer_decay(
    curriculum: Curriculum | PyTree,
    decay: float,
    groups: Sequence[Patterns] | Mapping[Any, int] | None = None,
) -> Curriculum:
    """Layer-wise LR decay (LLRD): ``coefficient = decay ** (max_id - id)`` per group.

    The group nearest the output gets 1.0 and each group towards the input one more
    factor of ``decay``, timm's ``layer_decay`` convention.

    Args:
      curriculum: a ``Curriculum`` (its other entries are kept) or a params pytree.
      decay: the factor per group, finite and > 0.
      groups: the layer grouping, from the input side to the output side:

        * ``None``: one group per parameter-owning module (the module that directly
          holds a leaf; a top-level leaf is its own group), in traversal order;
        * a list: group ``i`` (a pattern or a list of patterns, ``re.fullmatch``-ed
          against layer names and parameter paths) gets id ``i``;
        * a mapping ``{pattern or tuple of patterns: id}``: explicit ids, so several
          groups may share one (timm puts the final norm with the last block).

        Leaves in no group keep their coefficient. A tied weight (GPT-2's ``wte`` /
        ``lm_head``) takes the group of its canonical name, the first in
        ``named_parameters()`` order (``Curriculum.tied``), whatever order the groups
        come in: its alias only shares it.

    Returns:
      A new ``Curriculum`` with a coefficient entry on each selected name.

    Raises:
      ValueError: ``decay`` not finite and > 0, a pattern matching nothing, a
        negative id.

    Example:
      >>> import torch, funcurriculum as fc
      >>> p = {"emb.w": torch.zeros(1), "blocks.0.w": torch.zeros(1),
      ...      "blocks.1.w": torch.zeros(1), "head.w": torch.zeros(1)}
      >>> fc.layer_decay(p, 0.5).coeffs
      {'emb.w': 0.125, 'blocks.0.w': 0.25, 'blocks.1.w': 0.5, 'head.w': 1.0}
      >>> fc.layer_decay(p, 0.5, {"emb": 0, r"blocks\\.\\d+": 1, "head": 2}).coeffs
      {'emb.w': 0.25, 'blocks.0.w': 0.5, 'blocks.1.w': 0.5, 'head.w': 1.0}
    """
    cur = curriculum if isinstance(curriculum, Curriculum) else Curriculum(curriculum)
    if isinstance(decay, bool) or not isinstance(decay, numbers.Real):
        raise TypeError(f"decay must be a real number, got {type(decay).__name__}")
    if not math.isfinite(decay) or decay <= 0:
        raise ValueError(f"decay must be finite and > 0, got {decay}")
    if groups is None:
        owners = list(dict.fromkeys(_owner(p) for p in cur.paths))
        pairs = [(exact([o]), i) for i, o in enumerate(owners)]
    elif isinstance(groups, Mapping):
        pairs = []
        for key, gid in groups.items():
            pats = normalize_patterns(list(key) if isinstance(key, tuple) else key)
            if isinstance(gid, bool) or not isinstance(gid, numbers.Integral) or gid < 0:
                raise ValueError(f"layer_decay group {key!r}: id must be an int >= 0, got {gid!r}")
            pairs.append((pats, int(gid)))
        if not pairs:
            raise ValueError("layer_decay groups is empty")
    elif isinstance(groups, Sequence) and not isinstance(groups, str):
        if not groups:
            raise ValueError("layer_decay groups is empty")
        pairs = [(normalize_patterns(g), i) for i, g in enumerate(groups)]
    else:
        raise TypeError(
            f"layer_decay groups must be None, a list of groups or a mapping, got {groups!r}"
        )
    max_id = max(gid for _, gid in pairs)
    start = cur
    values = []
    for pats, gid in pairs:
        value = float(decay) ** (max_id - gid)
        values.append((cur.select(pats), value))
        cur = cur.set_lr_coefficient(value, pats)
    return _canonical_ties(start, cur, values)


def _canonical_ties(
    start: Curriculum, cur: Curriculum, values: Sequence[tuple[list[str], float]]
) -> Curriculum:
    """Give each tied weight the value of the group that reaches its canonical name.

    The group selecting the most specific name on the path to the weight's first name
    (``named_parameters()`` order) wins, a later group on an equally specific name
    winning as in `Curriculum.set_lr_coefficient`; a tied weight no group reaches
    through that name keeps its coefficient from before, whatever its aliases' groups.
    """
    index = cur.index
    for path in index.tied:
        chain = [*prefixes(path), path]
        best: tuple[int, float] | None = None
        for names, value in values:
            depth = max((chain.index(n) for n in names if n in chain), default=-1)
            if depth >= 0 and (best is None or depth >= best[0]):
                best = (depth, value)
        want = start.leaf_coefficients[index.index[path]] if best is None else best[1]
        if cur.leaf_coefficients[index.index[path]] != want:
            cur = cur.set_lr_coefficient(want, exact([path]))
    return cur


@dataclass(frozen=True)
class SetCoefficient(Span):
    """Set an LR coefficient on selected layers over a span of steps / epochs.

    While active (from the first ``start_*`` reached, or the beginning, until the
    first ``until_*`` reached, or the end) the rule applies
    ``cur.set_lr_coefficient(coefficient, patterns)``; otherwise the curriculum's own
    coefficients hold. Later rules win over earlier ones on what they select.

    Args:
      coefficient: finite, >= 0.
      patterns: layer names / parameter paths (regexes, ``re.fullmatch``).
      start_step: first step where it applies.
      start_epoch: first epoch where it applies.
      until_step: first step where it no longer applies.
      until_epoch: first epoch where it no longer applies.

    Example:
      >>> import torch, funcurriculum as fc
      >>> p = {"body.w": torch.zeros(1), "head.w": torch.zeros(1)}
      >>> s = fc.Schedule(fc.Curriculum(p), fc.SetCoefficient(0.1, "body", start_epoch=2))
      >>> s.at(epoch=1).coeffs, s.at(epoch=2).coeffs
      ({'body.w': 1.0, 'head.w': 1.0}, {'body.w': 0.1, 'head.w': 1.0})
    """

    coefficient: float
    patterns: Patterns
    start_step: int | None = None
    start_epoch: int | None = None
    until_step: int | None = None
    until_epoch: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "coefficient", check_coefficient(self.coefficient))
        object.__setattr__(self, "patterns", tuple(normalize_patterns(self.patterns)))
        self._check_span("SetCoefficient")

    def resolve(self, cur: Curriculum) -> list[str]:
        try:
            return exact(cur.select(list(self.patterns)))
        except ValueError as exc:
            raise ValueError(f"SetCoefficient patterns: {exc}") from None

    def apply_phase(self, cur: Curriculum, resolved: Any, phase: Any) -> Curriculum:
        return cur.set_lr_coefficient(self.coefficient, resolved) if phase else cur
