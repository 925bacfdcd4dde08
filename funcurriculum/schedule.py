"""``Schedule``: a curriculum plus rules, asked "what holds at this step / epoch?"."""

from __future__ import annotations

import logging
from collections.abc import Hashable
from typing import Any

from ._rule import CLOCKS, Rule, check_clocks, clock_value
from ._tree import PyTree
from .curriculum import Curriculum

LOGGER = logging.getLogger("funcurriculum")
_CACHE_SIZE = 256


class Schedule:
    """A base curriculum and rules applied in order: phases declared as data.

    ``at(step=..., epoch=...)`` is pure: it returns the ``Curriculum`` in force.
    The base curriculum's frozen leaves stay frozen throughout; each freezing rule
    (``Freezer``, ``GradualUnfreeze``) adds the leaves it holds at that
    point, so frozen sets combine as a union. Coefficient rules
    (``SetCoefficient``) apply in order on top of the base coefficients
    (e.g. from ``layer_decay``).

    Every rule is validated against the curriculum's names here, at construction.

    Clocks: ``step`` counts completed optimizer updates (0 at the first update, as
    the lr schedules), ``epoch`` is 0-based. ``at`` raises ``ValueError`` when a rule
    depends on a clock that was not passed (``Freezer(until_epoch=5)`` needs
    ``epoch=``); a clock no rule reads may be left out.

    Args:
      curriculum: the base ``Curriculum`` (or a params pytree, meaning
        ``Curriculum(params)``).
      *rules: ``Rule`` objects.

    Example:
      >>> import torch, funcurriculum as fc
      >>> p = {"backbone.w": torch.zeros(2), "head.w": torch.zeros(2)}
      >>> s = fc.Schedule(fc.Curriculum(p), fc.Freezer(name_starts_with="backbone", until_step=100))
      >>> s.at(step=99).masks, s.at(step=100).masks
      ({'backbone.w': False, 'head.w': True}, {'backbone.w': True, 'head.w': True})
    """

    __slots__ = ("_base", "_rules", "_resolved", "_cache")

    def __init__(self, curriculum: Curriculum | PyTree, *rules: Rule):
        base = curriculum if isinstance(curriculum, Curriculum) else Curriculum(curriculum)
        for r in rules:
            if not isinstance(r, Rule):
                raise TypeError(
                    f"Schedule rules must be Freezer / GradualUnfreeze / SetCoefficient (or "
                    f"other fc.Rule) objects, got {type(r).__name__}: {r!r}"
                )
        self._base = base
        self._rules = tuple(rules)
        resolved = []
        for r in rules:  # a loop, not a generator: rules' warnings point at the caller
            resolved.append(r.resolve(base))
        self._resolved = tuple(resolved)
        self._cache: dict[tuple[Hashable, ...], Curriculum] = {}

    @property
    def curriculum(self) -> Curriculum:
        """The base curriculum."""
        return self._base

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._rules

    @property
    def clocks(self) -> frozenset[str]:
        """The clocks (``"step"``, ``"epoch"``) the rules read."""
        out: set[str] = set()
        for r in self._rules:
            out |= set(r.clocks)
        return frozenset(out)

    def phase(self, step: int | None = None, epoch: int | None = None) -> tuple[Hashable, ...]:
        """A hashable key that changes exactly when the curriculum in force changes rule state."""
        step = clock_value(step, "step")
        epoch = clock_value(epoch, "epoch")
        for r in self._rules:
            check_clocks(r, step, epoch)
        return tuple(r.phase(step, epoch) for r in self._rules)

    def at(self, step: int | None = None, epoch: int | None = None) -> Curriculum:
        """The curriculum in force at ``step`` / ``epoch`` (pure; cached per phase).

        Args:
          step: completed optimizer updates (required when a rule's timing reads steps).
          epoch: 0-based epoch (required when a rule's timing reads epochs).

        Returns:
          A ``Curriculum``.

        Raises:
          ValueError: a clock a rule depends on is missing, or a clock is negative.
        """
        key = self.phase(step, epoch)
        cur = self._cache.get(key)
        if cur is None:
            cur = self._base
            for r, res, ph in zip(self._rules, self._resolved, key):
                cur = r.apply_phase(cur, res, ph)
            if len(self._cache) >= _CACHE_SIZE:  # custom rules may have many phases
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = cur
        return cur

    def __repr__(self) -> str:
        rules = "".join(f",\n  {r!r}" for r in self._rules)
        return f"Schedule(\n  {self._base!r}{rules})"


def _names(cur: Curriculum, leaves: set[int]) -> list[str]:
    """The maximal subtrees covering exactly ``leaves``, in traversal order."""
    if not leaves:
        return []
    flags = tuple(i in leaves for i in range(len(cur.paths)))
    covered = cur.index.maximal_names(flags)
    return [n for n in cur.index.nodes if n in covered]


def describe_change(prev: Curriculum, next: Curriculum) -> str | None:
    """One line saying what froze, unfroze and which coefficients changed (``None``: nothing).

    Args:
      prev: the curriculum in force so far.
      next: the curriculum from now on (over the same params).

    Returns:
      A one-line description, or ``None`` when the two agree.

    Example:
      >>> import torch, funcurriculum as fc
      >>> c = fc.Curriculum({"a.w": torch.zeros(1), "b.w": torch.zeros(1)})
      >>> fc.describe_change(c.freeze("a"), c.set_lr_coefficient(0.5, "b"))
      "unfroze ['a']; coefficients b: 1 -> 0.5"
    """
    if prev.paths != next.paths:
        raise ValueError("describe_change: the two curricula are over different params")
    old, new = prev.frozen_leaves, next.frozen_leaves
    parts = []
    froze = _names(next, {i for i, (o, n) in enumerate(zip(old, new)) if n and not o})
    unfroze = _names(next, {i for i, (o, n) in enumerate(zip(old, new)) if o and not n})
    if froze:
        parts.append(f"froze {froze}")
    if unfroze:
        parts.append(f"unfroze {unfroze}")
    if prev.leaf_coefficients != next.leaf_coefficients:
        a, b = prev.lr_coefficients, next.lr_coefficients
        keys = [n for n in next.index.nodes if a.get(n) != b.get(n)]
        changes = ", ".join(f"{k}: {a.get(k, 1.0):g} -> {b.get(k, 1.0):g}" for k in keys)
        parts.append(f"coefficients {changes}")
    return "; ".join(parts) or None


def apply_transition(
    opt: Any,
    state: dict[str, Any],
    params: PyTree,
    prev: Curriculum | None,
    next: Curriculum,
    logger: logging.Logger | None = None,
    *,
    step: int | None = None,
    epoch: int | None = None,
) -> dict[str, Any]:
    """Move the optimizer state from the ``prev`` phase to the ``next`` one.

    Calls ``opt.transition`` only when the masks changed (so just-unfrozen leaves get
    fresh state), and logs one INFO line per phase change (what froze / unfroze, the
    coefficient changes) on ``logger`` (default ``logging.getLogger("funcurriculum")``).

    Args:
      opt: the optimizer (anything with ``transition(state, params, old, new)``).
      state: the optimizer state.
      params: the params.
      prev: the curriculum in force so far (``None``: nothing to do).
      next: the curriculum from now on.
      logger: where to log.
      step: shown in the log line.
      epoch: shown in the log line.

    Returns:
      The new state (``state`` itself when the masks did not change).

    Example:
      >>> import torch, funcurriculum as fc
      >>> p = {"a": torch.zeros(2), "b": torch.zeros(2)}
      >>> opt, cur = fc.adam(0.1), fc.Curriculum(p)
      >>> state = opt.init(p, cur.freeze("b").masks)
      >>> state = fc.apply_transition(opt, state, p, cur.freeze("b"), cur)
      >>> state["exp_avg"]["b"].shape
      torch.Size([2])
    """
    if prev is None or prev is next:
        return state
    line = describe_change(prev, next)
    if line is None:
        return state
    if prev.frozen_leaves != next.frozen_leaves:
        state = opt.transition(state, params, prev.masks, next.masks)
    where = ", ".join(f"{c} {v}" for c, v in zip(CLOCKS, (step, epoch)) if v is not None)
    (logger or LOGGER).info("phase change%s: %s", f" at {where}" if where else "", line)
    return state
