"""``Freezer``: Lighter's freezing callback as an immutable schedule rule."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from ._classes import NORM_BY_NAME, describe_classes, normalize_classes
from ._rule import (
    Span,
    leaf_names,
    leaves_of,
    name_list,
    unknown_name_error,
)
from ._selection import leaves_of_class
from ._tree import PyTree, close_matches
from .curriculum import Curriculum

Names = str | list[str] | tuple[str, ...] | None


@dataclass(frozen=True)
class Freezer(Span):
    """Hold parameters frozen over a span of steps / epochs (Lighter's ``Freezer``).

    Selection (Lighter's arguments, same meanings, plus regex ``patterns``):

    * ``names``: exact parameter paths or layer names (a layer selects its subtree);
    * ``name_starts_with``: string prefixes tested on parameter paths, as Lighter
      does (``"enc.layer1"`` also selects ``"enc.layer10.w"``);
    * ``patterns``: regexes, ``re.fullmatch``-ed against layer names and parameter
      paths (as ``Curriculum.freeze``);
    * ``except_names`` / ``except_name_starts_with``: parameters that stay trainable
      even when selected.

    Timing: the selection is held frozen from the first ``start_*`` reached (from the
    beginning when none is given) until the first ``until_*`` reached (the whole run
    when none is given): frozen while ``start <= clock < until``. ``step`` is the
    number of completed updates and ``epoch`` the 0-based epoch, as Lightning's
    ``global_step`` / ``current_epoch``.

    Several freezers combine as a union: one releasing never unfreezes what another
    still holds.

    Args:
      names: exact parameter paths or layer names.
      name_starts_with: prefixes of parameter paths.
      except_names: parameter paths or layer names left trainable.
      except_name_starts_with: prefixes of parameter paths left trainable.
      patterns: regexes over layer names and parameter paths.
      until_step: release at this step.
      until_epoch: release at this epoch.
      start_step: start holding at this step.
      start_epoch: start holding at this epoch.
      keep: optional module class(es) (e.g. ``fc.NORM_LAYERS``) whose layers stay
        trainable inside the selection (fastai / Lightning ``train_bn``); needs a
        curriculum from ``Curriculum.from_module``. Default: nothing kept, as in
        Lighter.

    Raises:
      ValueError: none of ``names``, ``name_starts_with``, ``patterns`` given; a bound
        is negative; a ``start_*`` is not before the ``until_*`` of its clock. Names
        and prefixes are checked against the params by ``select`` (and by
        ``Schedule`` at construction).

    Example:
      >>> import torch, funcurriculum as fc
      >>> p = {"enc.l1.w": torch.zeros(2), "enc.l2.w": torch.zeros(2), "head.w": torch.zeros(2)}
      >>> f = fc.Freezer(name_starts_with="enc", except_names="enc.l2", until_epoch=3)
      >>> f.select(p)
      ['enc.l1.w']
      >>> fc.Schedule(fc.Curriculum(p), f).at(epoch=2).frozen
      frozenset({'enc.l1'})
    """

    names: Names = None
    name_starts_with: Names = None
    except_names: Names = None
    except_name_starts_with: Names = None
    patterns: Names = None
    until_step: int | None = None
    until_epoch: int | None = None
    start_step: int | None = None
    start_epoch: int | None = None
    keep: Any = None

    def __post_init__(self) -> None:
        if self.keep is not None:
            keep = normalize_classes(self.keep, "Freezer keep")
            # the by-name norm marker is re-derived from the classes where keep is used
            object.__setattr__(self, "keep", tuple(k for k in keep if k != NORM_BY_NAME))
        for f in (
            "names",
            "name_starts_with",
            "except_names",
            "except_name_starts_with",
            "patterns",
        ):
            object.__setattr__(self, f, name_list(getattr(self, f), f"Freezer {f}"))
        if not (self.names or self.name_starts_with or self.patterns):
            raise ValueError(
                "Freezer needs at least one of `names`, `name_starts_with` or `patterns` "
                "(a non-empty selection)"
            )
        self._check_span("Freezer", ": it would never hold anything frozen")

    # -- selection -------------------------------------------------------------------
    def _prefix_leaves(self, cur: Curriculum, prefixes: tuple[str, ...], what: str) -> set[int]:
        out: set[int] = set()
        for prefix in prefixes:
            hit = {
                i
                for i, names in enumerate(leaf_names(cur))
                if any(n.startswith(prefix) for n in names)
            }
            if not hit:
                near = close_matches(prefix, cur.index.nodes)
                hint = f"; did you mean {near}?" if near else ""
                raise ValueError(f"Freezer {what}: no parameter path starts with {prefix!r}{hint}")
            out |= hit
        return out

    def _name_leaves(self, cur: Curriculum, names: tuple[str, ...], what: str) -> set[int]:
        for n in names:
            if n not in cur.index.leaves_under:
                raise unknown_name_error(f"Freezer {what}", n, cur)
        return leaves_of(cur, names)

    def resolve(self, cur: Curriculum) -> frozenset[int]:
        """Indices of the leaves this freezer holds, checked against ``cur``'s names.

        Raises:
          ValueError: a name is unknown, a prefix or pattern matches nothing (with
            close matches), or nothing is left after the exclusions.
        """
        chosen: set[int] = set()
        if self.names:
            chosen |= self._name_leaves(cur, self.names, "names")
        if self.name_starts_with:
            chosen |= self._prefix_leaves(cur, self.name_starts_with, "name_starts_with")
        if self.patterns:
            try:
                chosen |= leaves_of(cur, cur.select(list(self.patterns)))
            except ValueError as exc:
                raise ValueError(f"Freezer patterns: {exc}") from None
        excluded: set[int] = set()
        if self.except_names:
            excluded |= self._name_leaves(cur, self.except_names, "except_names")
        if self.except_name_starts_with:
            excluded |= self._prefix_leaves(
                cur, self.except_name_starts_with, "except_name_starts_with"
            )
        chosen -= excluded
        if not chosen:
            raise ValueError(f"{self!r} selects no parameter once the exclusions are applied")
        if self.keep is not None:
            # Kept layers may empty the selection: that is the user's explicit choice.
            kept = leaves_of_class(cur.index, self.keep)
            if self.keep and not chosen & kept:
                warnings.warn(
                    f"Freezer keep={describe_classes(normalize_classes(self.keep, 'keep'))} "
                    "keeps nothing: no layer of those classes holds a selected parameter",
                    stacklevel=3,
                )
            chosen -= kept
        return frozenset(chosen)

    def select(self, params: PyTree | Curriculum) -> list[str]:
        """The parameter paths this freezer holds frozen, validated against ``params``.

        Args:
          params: a params pytree or a ``Curriculum``.

        Returns:
          The selected leaf paths in traversal order.

        Raises:
          ValueError: see ``resolve``.
        """
        cur = params if isinstance(params, Curriculum) else Curriculum(params)
        idx = self.resolve(cur)
        return [p for i, p in enumerate(cur.index.paths) if i in idx]

    # -- timing ----------------------------------------------------------------------
    def holds(self, step: int | None = None, epoch: int | None = None) -> bool:
        """Whether the selection is frozen at ``step`` / ``epoch`` (see ``Span.active``)."""
        return self.active(step, epoch)

    def apply_phase(self, cur: Curriculum, resolved: Any, phase: Any) -> Curriculum:
        return cur.set_frozen_leaves(resolved) if phase else cur
