"""``Curriculum``: the immutable, sparse source of truth for freezing and LR coefficients."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optree
import torch

from ._select import Patterns, match_names, node_names
from ._tree import PyTree, flatten_with_paths, prefixes, unflatten


@dataclass(frozen=True, eq=False)
class Layout:
    """The structure a curriculum is defined over (shared by all derived curricula)."""

    spec: optree.PyTreeSpec
    paths: tuple[str, ...]
    numels: tuple[int, ...]
    nodes: tuple[str, ...] = field(init=False)
    leaves_under: Mapping[str, tuple[int, ...]] = field(init=False)
    index: Mapping[str, int] = field(init=False)
    # Extra per-layer information, filled by ``Curriculum.from_module``.
    classes: Mapping[str, type] = field(default_factory=dict)

    def __post_init__(self) -> None:
        nodes = node_names(self.paths)
        under: dict[str, list[int]] = {n: [] for n in nodes}
        for i, p in enumerate(self.paths):
            for q in prefixes(p):
                under[q].append(i)
            under[p].append(i)
        object.__setattr__(self, "nodes", tuple(nodes))
        object.__setattr__(self, "leaves_under", {k: tuple(v) for k, v in under.items()})
        object.__setattr__(self, "index", {p: i for i, p in enumerate(self.paths)})

    @classmethod
    def from_params(cls, params: PyTree, **extra: Any) -> Layout:
        paths, leaves, spec = flatten_with_paths(params)
        numels = []
        for p, leaf in zip(paths, leaves):
            if not isinstance(leaf, torch.Tensor):
                raise TypeError(
                    f"params leaf {p!r} is a {type(leaf).__name__}, expected a torch.Tensor"
                )
            numels.append(leaf.numel())
        if len(set(paths)) != len(paths):
            dup = sorted({p for p in paths if paths.count(p) > 1})
            raise ValueError(f"params have duplicate dotted paths {dup}")
        return cls(spec=spec, paths=paths, numels=tuple(numels), **extra)

    def skeleton(self) -> PyTree:
        """Params' container structure with leaf indices as leaves (plain data)."""
        return unflatten(self.spec, range(len(self.paths)))

    def render(self, leaves: Sequence[Any]) -> PyTree:
        return unflatten(self.spec, leaves)

    def parent(self, name: str) -> str | None:
        for q in reversed(prefixes(name)):
            if q in self.leaves_under:
                return q
        return None


def _check_coefficient(coefficient: Any) -> float:
    if isinstance(coefficient, torch.Tensor):
        if coefficient.numel() != 1:
            raise TypeError(
                f"coefficient must be a number, got a tensor of shape {tuple(coefficient.shape)}"
            )
        coefficient = coefficient.item()
    if isinstance(coefficient, bool) or not isinstance(coefficient, numbers.Real):
        raise TypeError(
            f"coefficient must be a real number, got {type(coefficient).__name__}: {coefficient!r}"
        )
    c = float(coefficient)
    if not math.isfinite(c) or c < 0:
        raise ValueError(f"coefficient must be finite and >= 0, got {coefficient!r}")
    return c


class Curriculum:
    """Which leaves are frozen and which LR coefficient each leaf gets.

    Immutable: ``freeze``, ``unfreeze`` and ``set_lr_coefficient`` return new
    curricula. The state is sparse (a set of frozen names and a dict of coefficient
    entries, absent = 1.0); ``masks`` and ``coeffs`` render it densely with the
    params' structure.

    Semantics (torch_mentor's): a selected layer freezes / unfreezes its whole
    subtree, later calls winning on the subtree they select; a coefficient entry
    applies to a leaf through its most specific ancestor entry.

    ``frozen`` is canonical: the maximal fully-frozen subtrees (a layer is listed when
    all its leaves are frozen and its parent is not fully frozen). So after
    ``freeze("backbone").unfreeze("backbone.layer4")`` it lists backbone's other
    children, not ``backbone``.

    Args:
      params: the params pytree (tensors are read for structure and sizes only).

    Example:
      >>> import torch, funcurriculum as fc
      >>> p = {"backbone.conv.weight": torch.zeros(3), "head.weight": torch.zeros(2)}
      >>> cur = fc.Curriculum(p).freeze("backbone").set_lr_coefficient(0.1, "head")
      >>> cur.masks
      {'backbone.conv.weight': False, 'head.weight': True}
      >>> cur.coeffs
      {'backbone.conv.weight': 1.0, 'head.weight': 0.1}
    """

    __slots__ = ("_layout", "_frozen_leaves", "_entries", "__weakref__")

    def __init__(self, params: PyTree):
        self._layout = Layout.from_params(params)
        self._frozen_leaves: tuple[bool, ...] = (False,) * len(self._layout.paths)
        self._entries: dict[str, float] = {}

    @classmethod
    def _make(cls, layout: Layout, frozen_leaves: tuple[bool, ...], entries: dict[str, float]):
        obj = cls.__new__(cls)
        obj._layout = layout
        obj._frozen_leaves = tuple(frozen_leaves)
        obj._entries = dict(entries)
        return obj

    def __setattr__(self, name: str, value: Any) -> None:
        if hasattr(self, "_entries"):
            raise AttributeError("Curriculum is immutable; use freeze/unfreeze/set_lr_coefficient")
        object.__setattr__(self, name, value)

    # -- structure ---------------------------------------------------------------
    @property
    def paths(self) -> list[str]:
        """Leaf paths in traversal order."""
        return list(self._layout.paths)

    @property
    def layer_names(self) -> list[str]:
        """Layer (module) names, parent before child."""
        leaf = set(self._layout.paths)
        return [n for n in self._layout.nodes if n not in leaf]

    def select(self, patterns: Patterns) -> list[str]:
        """Names (layers and leaf paths) matched by ``patterns``; see :func:`select_layers`."""
        return match_names(self._layout.nodes, patterns)

    def _selected_leaves(self, patterns: Patterns) -> set[int]:
        out: set[int] = set()
        for name in self.select(patterns):
            out.update(self._layout.leaves_under[name])
        return out

    # -- freezing ----------------------------------------------------------------
    def _with_frozen(self, leaves: set[int], value: bool) -> Curriculum:
        fl = list(self._frozen_leaves)
        for i in leaves:
            fl[i] = value
        return Curriculum._make(self._layout, tuple(fl), self._entries)

    def freeze(self, patterns: Patterns) -> Curriculum:
        """New curriculum with the selected layers' whole subtrees frozen.

        Args:
          patterns: str or list of str, matched with ``re.fullmatch`` against layer
            names and leaf paths.

        Returns:
          A new ``Curriculum``.
        """
        return self._with_frozen(self._selected_leaves(patterns), True)

    def unfreeze(self, patterns: Patterns) -> Curriculum:
        """New curriculum with the selected layers' whole subtrees trainable.

        Args:
          patterns: str or list of str (see :meth:`freeze`).

        Returns:
          A new ``Curriculum``.
        """
        return self._with_frozen(self._selected_leaves(patterns), False)

    # -- coefficients ----------------------------------------------------------------
    def set_lr_coefficient(self, coefficient: float, patterns: Patterns) -> Curriculum:
        """New curriculum with an LR coefficient entry on each selected name.

        A leaf's coefficient is its most specific ancestor entry (the leaf path itself
        counts); an entry on a parent does not overwrite its children's own entries.
        ``1.0`` removes the entry unless an ancestor entry would then apply, in which
        case an explicit 1.0 is kept.

        Args:
          coefficient: finite, >= 0 (0 = the layer still gets its state updated but
            its parameters do not move).
          patterns: str or list of str.

        Returns:
          A new ``Curriculum``.

        Raises:
          ValueError: negative, NaN or infinite coefficient; unmatched pattern.
        """
        c = _check_coefficient(coefficient)
        names = self.select(patterns)
        entries = dict(self._entries)
        for name in names:
            if c == 1.0 and not any(q in entries for q in prefixes(name)):
                entries.pop(name, None)
            else:
                entries[name] = c
        return Curriculum._make(self._layout, self._frozen_leaves, entries)

    def _leaf_coefficient(self, path: str) -> float:
        if path in self._entries:
            return self._entries[path]
        for q in reversed(prefixes(path)):
            if q in self._entries:
                return self._entries[q]
        return 1.0

    # -- views -------------------------------------------------------------------
    @property
    def frozen_leaves(self) -> tuple[bool, ...]:
        """Per-leaf frozen flags in traversal order."""
        return self._frozen_leaves

    @property
    def leaf_coefficients(self) -> tuple[float, ...]:
        """Per-leaf coefficients in traversal order."""
        return tuple(self._leaf_coefficient(p) for p in self._layout.paths)

    @property
    def masks(self) -> PyTree:
        """Dense bool pytree with the params' structure (True = trainable)."""
        return self._layout.render([not f for f in self._frozen_leaves])

    @property
    def coeffs(self) -> PyTree:
        """Dense float pytree with the params' structure (effective lr = lr * coeff)."""
        return self._layout.render(self.leaf_coefficients)

    @property
    def frozen(self) -> frozenset[str]:
        """Sparse frozen set: the maximal fully-frozen subtrees (layer names or leaf paths)."""
        lay = self._layout
        full = {n for n in lay.nodes if all(self._frozen_leaves[i] for i in lay.leaves_under[n])}
        out = set()
        for n in full:
            parent = lay.parent(n)
            if parent is None or parent not in full:
                out.add(n)
        return frozenset(out)

    @property
    def lr_coefficients(self) -> dict[str, float]:
        """Sparse coefficient entries (name -> coefficient; absent = 1.0). A copy."""
        return dict(self._entries)

    @property
    def num_params(self) -> int:
        return sum(self._layout.numels)

    @property
    def num_trainable(self) -> int:
        return sum(n for n, f in zip(self._layout.numels, self._frozen_leaves) if not f)

    # -- comparison / display -------------------------------------------------------
    def _key(self) -> tuple:
        return (self._layout.paths, self._frozen_leaves, self.leaf_coefficients)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Curriculum):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        n = len(self._layout.paths)
        k = sum(self._frozen_leaves)
        return (
            f"Curriculum({n} leaves, {k} frozen, {self.num_trainable}/{self.num_params} params "
            f"trainable, frozen={sorted(self.frozen)}, lr_coefficients={self._entries})"
        )

    def rows(self) -> list[tuple[str, str, str, int]]:
        """(name, frozen, coefficient, #params) for every layer and top-level leaf."""
        lay = self._layout
        out = []
        for n in lay.nodes:
            idx = lay.leaves_under[n]
            fz = [self._frozen_leaves[i] for i in idx]
            frozen = "yes" if all(fz) else ("partial" if any(fz) else "no")
            cs = sorted({self._leaf_coefficient(lay.paths[i]) for i in idx})
            coeff = f"{cs[0]:g}" if len(cs) == 1 else "mixed"
            out.append((n, frozen, coeff, sum(lay.numels[i] for i in idx)))
        return out

    def summary(self) -> str:
        """A table: layer / leaf, frozen (yes / no / partial), coefficient, #params."""
        rows = [("name", "frozen", "coeff", "params")] + [
            (n, f, c, f"{k:,}") for n, f, c, k in self.rows()
        ]
        widths = [max(len(r[j]) for r in rows) for j in range(4)]
        lines = [
            "  ".join((r[j].ljust(widths[j]) if j < 3 else r[j].rjust(widths[j])) for j in range(4))
            for r in rows
        ]
        lines.insert(1, "-" * len(lines[0]))
        return "\n".join(lines)

    # -- serialisation (plain data, used by fc.save) ---------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (containers, numbers, strings) for code-free checkpoints."""
        return {
            "skeleton": self._layout.skeleton(),
            "numels": list(self._layout.numels),
            "frozen_leaves": list(self._frozen_leaves),
            "lr_coefficients": dict(self._entries),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Curriculum:
        """Inverse of :meth:`to_dict`."""
        paths, leaves, spec = flatten_with_paths(data["skeleton"])
        if list(leaves) != list(range(len(leaves))):
            raise ValueError("malformed Curriculum record: skeleton leaves out of order")
        numels = tuple(int(n) for n in data["numels"])
        frozen = tuple(bool(b) for b in data["frozen_leaves"])
        if len(numels) != len(paths) or len(frozen) != len(paths):
            raise ValueError("malformed Curriculum record: lengths disagree with the skeleton")
        layout = Layout(spec=spec, paths=paths, numels=numels)
        entries = {str(k): _check_coefficient(v) for k, v in data["lr_coefficients"].items()}
        unknown = [k for k in entries if k not in layout.leaves_under]
        if unknown:
            raise ValueError(
                f"malformed Curriculum record: coefficient entries for unknown names {unknown}"
            )
        return cls._make(layout, frozen, entries)
