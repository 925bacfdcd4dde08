"""``GradualUnfreeze``: release groups of layers one at a time (ULMFiT style)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._rule import Rule, bound_value, group_list, leaves_of
from .curriculum import Curriculum

ORDERS = ("output_first", "input_first")


@dataclass(frozen=True)
class GradualUnfreeze(Rule):
    """Hold groups of layers frozen, then release them one group at a time.

    ``groups`` lists the groups from the input side to the output side (each group a
    pattern or a list of patterns, ``re.fullmatch``-ed against layer names and
    parameter paths, as ``Curriculum.freeze``). With ``order="output_first"``
    (ULMFiT) the last group is released first; with ``"input_first"`` the first.

    Timing, on one clock (``every_n_epochs`` or ``every_n_steps``, exactly one): every
    group is frozen from the beginning; the ``k``-th group to be released (0-based)
    becomes trainable at ``start + k * n``. ``start`` defaults to ``n``, so the first
    ``n`` epochs (steps) train only what lies outside the groups (e.g. a new head).

    Groups must not overlap. What lies outside the groups is left alone; combine
    with a ``Freezer`` to hold other layers too.

    Args:
      groups: the groups, input side first.
      every_n_epochs: epochs between two releases.
      every_n_steps: steps between two releases.
      start_epoch: epoch of the first release (with ``every_n_epochs``).
      start_step: step of the first release (with ``every_n_steps``).
      order: ``"output_first"`` (default) or ``"input_first"``.

    Example:
      >>> import torch, funcurriculum as fc
      >>> p = {f"l{i}.w": torch.zeros(1) for i in range(3)} | {"head.w": torch.zeros(1)}
      >>> s = fc.Schedule(fc.Curriculum(p), fc.GradualUnfreeze(["l0", "l1", "l2"], every_n_epochs=2))
      >>> [sorted(s.at(epoch=e).frozen) for e in (0, 2, 4, 6)]
      [['l0', 'l1', 'l2'], ['l0', 'l1'], ['l0'], []]
    """

    groups: Any
    every_n_epochs: int | None = None
    every_n_steps: int | None = None
    start_epoch: int | None = None
    start_step: int | None = None
    order: str = "output_first"

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", group_list(self.groups, "GradualUnfreeze groups"))
        for f in ("every_n_epochs", "every_n_steps"):
            object.__setattr__(self, f, bound_value(getattr(self, f), f, positive=True))
        for f in ("start_epoch", "start_step"):
            object.__setattr__(self, f, bound_value(getattr(self, f), f))
        if (self.every_n_epochs is None) == (self.every_n_steps is None):
            raise ValueError("GradualUnfreeze needs exactly one of every_n_epochs, every_n_steps")
        clock = self.clock
        other = "step" if clock == "epoch" else "epoch"
        if getattr(self, f"start_{other}") is not None:
            raise ValueError(
                f"GradualUnfreeze counts {clock}s (every_n_{clock}s); start_{other} does not "
                f"apply: give start_{clock}"
            )
        if self.order not in ORDERS:
            raise ValueError(f"GradualUnfreeze order must be one of {ORDERS}, got {self.order!r}")

    @property
    def clock(self) -> str:
        """``"epoch"`` or ``"step"``."""
        return "epoch" if self.every_n_epochs is not None else "step"

    @property
    def clocks(self) -> frozenset[str]:
        return frozenset({self.clock})

    @property
    def every(self) -> int:
        return self.every_n_epochs if self.clock == "epoch" else self.every_n_steps

    @property
    def start(self) -> int:
        s = self.start_epoch if self.clock == "epoch" else self.start_step
        return self.every if s is None else s

    def release_times(self) -> list[int]:
        """When each group (in the order given) becomes trainable, on the rule's clock.

        Example:
          >>> import funcurriculum as fc
          >>> fc.GradualUnfreeze(["a", "b", "c"], every_n_steps=100, start_step=50).release_times()
          [250, 150, 50]
        """
        n = len(self.groups)
        times = [self.start + k * self.every for k in range(n)]
        return times[::-1] if self.order == "output_first" else times

    def released(self, step: int | None = None, epoch: int | None = None) -> int:
        """How many groups are trainable at ``step`` / ``epoch``."""
        t = epoch if self.clock == "epoch" else step
        if t is None or t < self.start:
            return 0
        return min(len(self.groups), (t - self.start) // self.every + 1)

    def resolve(self, cur: Curriculum) -> tuple[frozenset[int], ...]:
        """Leaf indices of each group, in release order; raises on unknown or overlapping groups."""
        sets = []
        for g in self.groups:
            try:
                sets.append(frozenset(leaves_of(cur, cur.select(list(g)))))
            except ValueError as exc:
                raise ValueError(f"GradualUnfreeze group {list(g)}: {exc}") from None
        for i in range(len(sets)):
            for j in range(i):
                common = sets[i] & sets[j]
                if common:
                    path = cur.index.paths[min(common)]
                    raise ValueError(
                        f"GradualUnfreeze groups {list(self.groups[j])} and {list(self.groups[i])} "
                        f"overlap (both hold {path!r})"
                    )
        if self.order == "output_first":
            sets.reverse()
        return tuple(sets)

    def phase(self, step: int | None, epoch: int | None) -> int:
        return self.released(step, epoch)

    def apply_phase(self, cur: Curriculum, resolved: Any, phase: Any) -> Curriculum:
        held: set[int] = set()
        for s in resolved[phase:]:
            held |= s
        return cur.set_frozen_leaves(held) if held else cur
