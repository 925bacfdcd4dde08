"""The rule protocol shared by schedule rules, and the step / epoch clock helpers."""

from __future__ import annotations

import numbers
import re
from collections.abc import Hashable, Sequence
from typing import Any

import torch

from ._select import normalize_patterns
from ._tree import close_matches
from .curriculum import Curriculum

CLOCKS = ("step", "epoch")


def clock_value(value: Any, name: str) -> int | None:
    """``None`` or a non-negative int (an integer 0-d tensor is read with ``int``)."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_floating_point() or value.dtype == torch.bool:
            raise TypeError(f"{name} must be an int, got a tensor {value!r}")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def bound_value(value: Any, name: str, *, positive: bool = False) -> int | None:
    """Validate a rule's bound (a non-negative int, or positive when ``positive``)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__}: {value!r}")
    if value < (1 if positive else 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}, got {value}")
    return int(value)


def reached(bound: int | None, value: int | None) -> bool:
    """True when ``bound`` is set and the clock ``value`` is at or past it."""
    return bound is not None and value is not None and value >= bound


def name_list(value: Any, what: str) -> tuple[str, ...] | None:
    """``None``, a str or a list / tuple of str, as a tuple (``None`` stays ``None``)."""
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)):
        for v in value:
            if not isinstance(v, str):
                raise TypeError(f"{what}: {v!r} is a {type(v).__name__}, expected str")
        return tuple(value)
    raise TypeError(f"{what} must be a str or a list of str, got {type(value).__name__}")


def group_list(groups: Any, what: str) -> tuple[tuple[str, ...], ...]:
    """A sequence of groups, each a str or a list of str patterns, as nested tuples."""
    if isinstance(groups, str) or not isinstance(groups, Sequence):
        raise TypeError(
            f"{what} must be a list of groups (each a pattern or a list of patterns), "
            f"got {type(groups).__name__}: {groups!r}"
        )
    if not groups:
        raise ValueError(f"{what} is empty: give at least one group")
    return tuple(tuple(normalize_patterns(g)) for g in groups)


def exact(names: Sequence[str]) -> list[str]:
    """Patterns that select exactly ``names`` (for ``Curriculum.set_lr_coefficient``)."""
    return [re.escape(n) for n in names]


def leaves_of(cur: Curriculum, names: Sequence[str]) -> set[int]:
    """Indices of the leaves under each of ``names`` (layer names or leaf paths)."""
    return cur.index.leaves_of(names)


def leaf_names(cur: Curriculum) -> tuple[tuple[str, ...], ...]:
    """Every name of each leaf (its path, then the aliases of a tied weight)."""
    return cur.index.leaf_names


def unknown_name_error(what: str, name: str, cur: Curriculum) -> ValueError:
    near = close_matches(name, cur.index.nodes)
    hint = f"; did you mean {near}?" if near else ""
    return ValueError(f"{what}: {name!r} is neither a parameter nor a layer name{hint}")


def check_clocks(rule: Rule, step: int | None, epoch: int | None) -> None:
    """Raise when ``rule`` needs a clock that was not given."""
    given = {"step": step, "epoch": epoch}
    missing = [c for c in CLOCKS if c in rule.clocks and given[c] is None]
    if missing:
        args = ", ".join(f"{c}=..." for c in missing)
        raise ValueError(
            f"{rule!r} depends on the {' and '.join(missing)} clock: pass {args} "
            "(a clock that is not given is never guessed)"
        )


class Rule:
    """Base class of schedule rules (``Freezer``, ``GradualUnfreeze``, ...).

    A rule is immutable data. ``Schedule`` uses four members:

    * ``clocks``: the clocks (``"step"``, ``"epoch"``) its timing reads;
    * ``resolve(cur)``: validates the rule's selection against the curriculum's
      names and returns it in resolved form (raises ``ValueError`` on a mistake);
    * ``phase(step, epoch)``: a hashable value that changes exactly when what the
      rule does changes (the schedule caches one curriculum per combination);
    * ``apply_phase(cur, resolved, phase)``: the curriculum with the rule applied.

    Freezing rules only ever freeze (they hold leaves frozen while active), so the
    rules of a schedule combine as a union of frozen sets.

    Attributes:
      clocks: the clocks this rule reads (a subclass sets or computes it).

    Example:
      >>> import torch, funcurriculum as fc
      >>> cur = fc.Curriculum({"a.w": torch.zeros(1), "b.w": torch.zeros(1)})
      >>> rule = fc.Freezer(names="a", until_step=10)
      >>> isinstance(rule, fc.Rule), sorted(rule.apply(cur, step=3).frozen)
      (True, ['a'])
    """

    clocks: frozenset[str] = frozenset()

    def resolve(self, cur: Curriculum) -> Any:
        raise NotImplementedError

    def phase(self, step: int | None, epoch: int | None) -> Hashable:
        raise NotImplementedError

    def apply_phase(self, cur: Curriculum, resolved: Any, phase: Hashable) -> Curriculum:
        raise NotImplementedError

    def apply(self, cur: Curriculum, *, step: int | None = None, epoch: int | None = None):
        """The curriculum ``cur`` with this rule applied at ``step`` / ``epoch``.

        Args:
          cur: the curriculum to start from.
          step: completed optimizer updates (needed when the rule's timing uses steps).
          epoch: the 0-based epoch (needed when the rule's timing uses epochs).

        Returns:
          A new ``Curriculum``.
        """
        step = clock_value(step, "step")
        epoch = clock_value(epoch, "epoch")
        check_clocks(self, step, epoch)
        return self.apply_phase(cur, self.resolve(cur), self.phase(step, epoch))


class Span(Rule):
    """A rule active over a span: from the first ``start_*`` reached (the beginning when
    none is given) until the first ``until_*`` reached (the end when none is given).

    Subclasses declare the four dataclass fields ``start_step``, ``start_epoch``,
    ``until_step``, ``until_epoch`` and call ``_check_span`` from ``__post_init__``.

    Attributes:
      clocks: the clocks the span's bounds read.

    Example:
      >>> import funcurriculum as fc
      >>> f = fc.Freezer(names="a", start_epoch=1, until_step=100)
      >>> isinstance(f, Span), sorted(f.clocks), f.active(step=5, epoch=1), f.active(step=100, epoch=1)
      (True, ['epoch', 'step'], True, False)
    """

    start_step: int | None
    start_epoch: int | None
    until_step: int | None
    until_epoch: int | None

    def _check_span(self, what: str, never: str = "") -> None:
        for f in ("start_step", "start_epoch", "until_step", "until_epoch"):
            object.__setattr__(self, f, bound_value(getattr(self, f), f"{what} {f}"))
        for clock in CLOCKS:
            start, until = getattr(self, f"start_{clock}"), getattr(self, f"until_{clock}")
            if start is not None and until is not None and start >= until:
                raise ValueError(
                    f"{what} start_{clock}={start} is not before until_{clock}={until}{never}"
                )

    @property
    def clocks(self) -> frozenset[str]:
        return frozenset(
            c
            for c in CLOCKS
            if getattr(self, f"start_{c}") is not None or getattr(self, f"until_{c}") is not None
        )

    def active(self, step: int | None = None, epoch: int | None = None) -> bool:
        """Whether the span covers ``step`` / ``epoch`` (a bound on a clock not given is
        not reached; ``Schedule`` refuses such calls)."""
        no_start = self.start_step is None and self.start_epoch is None
        started = no_start or reached(self.start_step, step) or reached(self.start_epoch, epoch)
        ended = reached(self.until_step, step) or reached(self.until_epoch, epoch)
        return started and not ended

    def phase(self, step: int | None, epoch: int | None) -> bool:
        return self.active(step, epoch)
