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
    # Extra per-layer information, filled by ``Curriculum.from_module``: module path
    # ("" = the root) -> qualified names of its class and bases (most derived first);
    # names, not classes, so checkpoints stay code-free.
    classes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Tied weights: alias parameter name -> the leaf path it shares (the first name).
    aliases: Mapping[str, str] = field(default_factory=dict)
    # Every parameter name, aliases included, in module order (empty: ``paths``).
    names: tuple[str, ...] = ()
    leaf_names: tuple[tuple[str, ...], ...] = field(init=False)  # leaf -> all its names
    tied: Mapping[str, tuple[str, ...]] = field(init=False)  # tied leaf path -> aliases

    def __post_init__(self) -> None:
        order = self.names or self.paths
        index = {p: i for i, p in enumerate(self.paths)}
        bad = [a for a, t in self.aliases.items() if t not in index or a in index]
        if bad or sorted(order) != sorted([*self.paths, *self.aliases]):
            raise ValueError(
                f"malformed Layout: aliases {dict(self.aliases)} / names do not fit the paths"
            )
        nodes = node_names(order)
        under: dict[str, dict[int, None]] = {n: {} for n in nodes}
        names_of: list[list[str]] = [[p] for p in self.paths]
        for name in order:
            i = index[self.aliases.get(name, name)]
            if name in self.aliases:
                names_of[i].append(name)
            for q in prefixes(name):
                under[q][i] = None
            under[name][i] = None
        object.__setattr__(self, "nodes", tuple(nodes))
        object.__setattr__(self, "leaves_under", {k: tuple(sorted(v)) for k, v in under.items()})
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "leaf_names", tuple(tuple(n) for n in names_of))
        object.__setattr__(self, "tied", {n[0]: tuple(n[1:]) for n in names_of if len(n) > 1})

    def is_leaf_name(self, name: str) -> bool:
        return name in self.index or name in self.aliases

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

    @classmethod
    def from_module(cls, module: torch.nn.Module) -> Curriculum:
        """A curriculum over ``dict(module.named_parameters())`` that knows layer classes.

        Everything works as for ``Curriculum(dict(module.named_parameters()))``; in
        addition the curriculum records each layer's module class (for
        ``freeze(..., keep=...)``, ``classes=`` selections and :meth:`select_by_class`)
        and the aliases of tied weights: a parameter shared by two modules is one leaf
        (its first name), and selecting it through any of its names acts on it.

        Args:
          module: the model (read for names, classes and sizes only).

        Returns:
          A fresh ``Curriculum`` (nothing frozen, all coefficients 1.0).

        Example:
          >>> import torch, funcurriculum as fc
          >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
          >>> cur = fc.Curriculum.from_module(m).freeze(".*", keep=fc.NORM_LAYERS)
          >>> cur.masks
          {'0.weight': False, '0.bias': False, '1.weight': True, '1.bias': True}
        """
        from .modules import layout_from_module

        lay = layout_from_module(module)
        return cls._make(lay, (False,) * len(lay.paths), {})

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
        """Layer (module) names, parent before child (a layer holding only a tied
        weight's alias is listed too)."""
        lay = self._layout
        return [n for n in lay.nodes if not lay.is_leaf_name(n)]

    @property
    def tied(self) -> dict[str, tuple[str, ...]]:
        """Tied weights (from :meth:`from_module`): leaf path -> its other names."""
        return dict(self._layout.tied)

    @property
    def module_classes(self) -> dict[str, str]:
        """Layer name -> qualified class name (from :meth:`from_module`; else empty)."""
        return {n: mro[0] for n, mro in self._layout.classes.items() if n}

    def select(self, patterns: Patterns) -> list[str]:
        """Names (layers and leaf paths) matched by ``patterns``; see :func:`select_layers`."""
        return match_names(self._layout.nodes, patterns)

    def _need_classes(self, what: str) -> None:
        if not self._layout.classes:
            raise ValueError(
                f"{what} needs a curriculum that knows layer classes: build it with "
                "Curriculum.from_module(module)"
            )

    def select_by_class(self, classes: Any, under: Patterns | None = None) -> list[str]:
        """Layer names whose module is an instance of ``classes`` (subclasses included).

        Args:
          classes: a module class, a class name (``"Linear"`` or a qualified
            ``"torch.nn.modules.linear.Linear"``), or a tuple / list of them.
          under: optional patterns; only layers inside the subtrees they select
            (the selected layers included) are returned.

        Returns:
          The matching layer names in traversal order.

        Raises:
          ValueError: the curriculum was not built by :meth:`from_module`; nothing
            matches (the message names the classes, the patterns and the classes that
            are there); a pattern in ``under`` matches nothing.

        Example:
          >>> import torch, funcurriculum as fc
          >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(),
          ...                         torch.nn.Sequential(torch.nn.Linear(2, 2)))
          >>> fc.Curriculum.from_module(m).select_by_class(torch.nn.Linear, under="2")
          ['2.0']
        """
        from .modules import class_hint, class_matches, describe_classes, normalize_classes

        self._need_classes("selecting layers by class")
        wanted = normalize_classes(classes, "classes")
        lay = self._layout
        layers = [n for n in lay.nodes if n in lay.classes and not lay.is_leaf_name(n)]
        if under is not None:
            roots = self.select(under)
            layers = [n for n in layers if any(n == r or n.startswith(r + ".") for r in roots)]
        found = [n for n in layers if class_matches(lay.classes[n], wanted)]
        if not found:
            where = "" if under is None else f" under {under!r}"
            present = [lay.classes[n][0] for n in layers]
            raise ValueError(
                f"no layer of class {describe_classes(wanted)}{where}" + class_hint(wanted, present)
            )
        return found

    def _selection(self, patterns: Patterns | None, classes: Any, what: str) -> list[str]:
        if classes is not None:
            return self.select_by_class(classes, under=patterns)
        if patterns is None:
            raise TypeError(f"{what} needs patterns (or classes=)")
        return self.select(patterns)

    def _leaves_of(self, names: Sequence[str]) -> set[int]:
        out: set[int] = set()
        for name in names:
            out.update(self._layout.leaves_under[name])
        return out

    def _leaves_of_class(self, classes: Any) -> frozenset[int]:
        """Leaves with a layer of ``classes`` on the path to them (through any name).

        The rule a prefix-based selection (``Freezer``) uses for ``keep``.
        """
        from .modules import class_matches, normalize_classes

        self._need_classes("keep=")
        wanted = normalize_classes(classes, "keep")
        lay = self._layout
        out = set()
        for i, names in enumerate(lay.leaf_names):
            for n in names:
                if any(class_matches(lay.classes.get(q, ()), wanted) for q in prefixes(n)):
                    out.add(i)
        return frozenset(out)

    # -- freezing ----------------------------------------------------------------
    def _with_frozen(self, leaves: set[int], value: bool) -> Curriculum:
        fl = list(self._frozen_leaves)
        for i in leaves:
            fl[i] = value
        return Curriculum._make(self._layout, tuple(fl), self._entries)

    def freeze(
        self, patterns: Patterns | None = None, keep: Any = None, *, classes: Any = None
    ) -> Curriculum:
        """New curriculum with the selected layers' whole subtrees frozen.

        Args:
          patterns: str or list of str, matched with ``re.fullmatch`` against layer
            names and leaf paths (with ``classes``: the subtrees to look in; ``None``
            = the whole model).
          keep: a module class or a tuple of classes (or class names): layers of
            these classes inside the frozen subtrees are made trainable instead
            (fastai's / Lightning's ``train_bn`` with ``keep=fc.NORM_LAYERS``). A
            leaf is kept when a layer of a kept class lies on the path from the
            selected name down to the module owning the leaf (both included; a
            selected leaf path looks at its owner). Needs :meth:`from_module`.
          classes: select the layers of these classes (see :meth:`select_by_class`)
            instead of, or within, ``patterns``.

        Returns:
          A new ``Curriculum``.

        Raises:
          ValueError: unmatched pattern / class; ``keep`` or ``classes`` on a
            curriculum not built by :meth:`from_module`; a tied weight reached
            through two names in this call, kept through one and frozen through the
            other (the message names both).
        """
        names = self._selection(patterns, classes, "freeze")
        if keep is None:
            return self._with_frozen(self._leaves_of(names), True)
        return self._freeze_keep(names, keep)

    def _freeze_keep(self, names: list[str], keep: Any) -> Curriculum:
        from .modules import class_matches, normalize_classes

        self._need_classes("freeze(keep=...)")
        wanted = normalize_classes(keep, "keep")
        lay = self._layout
        sel = set(names)
        fl = list(self._frozen_leaves)
        for i in sorted(self._leaves_of(names)):
            decided: dict[str, tuple[bool, str | None]] = {}
            for n in lay.leaf_names[i]:
                chain = [*prefixes(n), n]
                start = next((k for k, q in enumerate(chain) if q in sel), None)
                if start is None:
                    continue
                mods = chain[start:-1] if start < len(chain) - 1 else [(prefixes(n) or [""])[-1]]
                hit = next((m for m in mods if class_matches(lay.classes.get(m, ()), wanted)), None)
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
            fl[i] = not verdicts.pop()
        return Curriculum._make(lay, tuple(fl), self._entries)

    def unfreeze(self, patterns: Patterns | None = None, *, classes: Any = None) -> Curriculum:
        """New curriculum with the selected layers' whole subtrees trainable.

        Args:
          patterns: str or list of str (see :meth:`freeze`).
          classes: select layers by class (see :meth:`select_by_class`).

        Returns:
          A new ``Curriculum``.
        """
        return self._with_frozen(
            self._leaves_of(self._selection(patterns, classes, "unfreeze")), False
        )

    # -- coefficients ----------------------------------------------------------------
    def set_lr_coefficient(
        self, coefficient: float, patterns: Patterns | None = None, *, classes: Any = None
    ) -> Curriculum:
        """New curriculum with an LR coefficient entry on each selected name.

        A leaf's coefficient is its most specific ancestor entry (the leaf path itself
        counts); an entry on a parent does not overwrite its children's own entries.
        ``1.0`` removes the entry unless an ancestor entry would then apply, in which
        case an explicit 1.0 is kept.

        A tied weight (see :meth:`from_module`) has one coefficient, stored as an
        entry on its leaf path: a call sets it when, through at least one of the
        weight's names, the call's entry becomes the most specific one; a call that
        reaches it through two names and sets it through one while the other name
        keeps a different value (a more specific entry below the selected layer)
        raises ``ValueError`` naming both.

        Args:
          coefficient: finite, >= 0 (0 = the layer still gets its state updated but
            its parameters do not move).
          patterns: str or list of str.
          classes: select layers by class (see :meth:`select_by_class`).

        Returns:
          A new ``Curriculum``.

        Raises:
          ValueError: negative, NaN or infinite coefficient; unmatched pattern;
            conflicting settings of a tied weight.
        """
        c = _check_coefficient(coefficient)
        names = self._selection(patterns, classes, "set_lr_coefficient")
        lay = self._layout
        tied = lay.tied
        tied_names = {n for p, al in tied.items() for n in (p, *al)}
        entries = dict(self._entries)
        for name in names:
            if name in tied_names:
                continue  # a tied weight's leaf-level entry is set below
            if c == 1.0 and not any(q in entries for q in prefixes(name)):
                entries.pop(name, None)
            else:
                entries[name] = c
        if tied:
            self._set_tied(c, set(names), entries)
        return Curriculum._make(lay, self._frozen_leaves, entries)

    def _set_tied(self, c: float, sel: set[str], entries: dict[str, float]) -> None:
        for lnames in self._layout.leaf_names:
            if len(lnames) < 2:
                continue
            acted: list[str] = []
            blocked: list[tuple[str, str, float]] = []
            for n in lnames:
                chain = [*prefixes(n), n]
                if not any(q in sel for q in chain):
                    continue
                gov = (
                    None
                    if n in sel
                    else next((q for q in reversed(prefixes(n)) if q in entries), None)
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

    def _leaf_coefficient(self, path: str) -> float:
        if path in self._entries:
            return self._entries[path]
        if path in self._layout.tied:
            return 1.0
        for q in reversed(prefixes(path)):
            if q in self._entries:
                return self._entries[q]
        return 1.0

    def param_groups(
        self, params: Any, lr: float, *, since: Curriculum | None = None, named: bool = False
    ) -> list[dict[str, Any]]:
        """``torch.optim`` param groups for this curriculum.

        Frozen leaves are left out; one group per distinct coefficient (in order of
        first appearance), with ``lr = lr * coefficient``; within a group, leaves keep
        traversal order. A tied weight is one leaf, so it appears once.

        Args:
          params: ``dict`` of tensors with this curriculum's structure (e.g.
            ``dict(module.named_parameters())``) or the ``nn.Module`` itself.
          lr: the base learning rate (a number or a 0-d tensor).
          since: only leaves trainable here but frozen in ``since`` (the groups to
            ``optimizer.add_param_group`` at a phase change that unfreezes them).
          named: give params as ``(name, tensor)`` pairs (torch.optim then records
            ``param_names``); every group of one optimizer must agree on this.

        Returns:
          A list of ``{"params": [...], "lr": ...}`` dicts.

        Example:
          >>> import torch, funcurriculum as fc
          >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
          >>> cur = fc.Curriculum.from_module(m).set_lr_coefficient(0.1, "0")
          >>> [(len(g["params"]), g["lr"]) for g in cur.param_groups(m, 1e-2)]
          [(2, 0.001), (2, 0.01)]
          >>> opt = torch.optim.SGD(cur.param_groups(m, 1e-2))
        """
        from .modules import param_groups

        return param_groups(self, params, lr, since=since, named=named)

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
        """A table: layer / leaf, frozen (yes / no / partial), coefficient, #params.

        A curriculum from :meth:`from_module` adds a ``class`` column, and marks tied
        weights: the leaf row lists its aliases (``tied: decoder.weight``) and an
        alias row names the leaf it shares (``= embed.weight``).
        """
        lay = self._layout
        has_cls = bool(lay.classes)
        head = ("name", "frozen", "coeff", "params") + (("class",) if has_cls else ())
        rows = [head]
        for n, f, c, k in self.rows():
            name = n
            if n in lay.tied:
                name = f"{n} (tied: {', '.join(lay.tied[n])})"
            elif n in lay.aliases:
                name = f"{n} (= {lay.aliases[n]})"
            row = (name, f, c, f"{k:,}")
            if has_cls:
                row += (lay.classes[n][0].rsplit(".", 1)[-1] if n in lay.classes else "",)
            rows.append(row)
        ncol = len(head)
        widths = [max(len(r[j]) for r in rows) for j in range(ncol)]
        lines = [
            "  ".join(
                (r[j].rjust(widths[j]) if j == 3 else r[j].ljust(widths[j])) for j in range(ncol)
            ).rstrip()
            for r in rows
        ]
        lines.insert(1, "-" * max(len(x) for x in lines))
        return "\n".join(lines)

    # -- serialisation (plain data, used by fc.save) ---------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (containers, numbers, strings) for code-free checkpoints.

        A curriculum from :meth:`from_module` also stores its layer classes (as
        qualified class names) and tied-weight aliases, so ``keep=`` / ``classes=``
        and ties work after loading.
        """
        lay = self._layout
        out: dict[str, Any] = {
            "skeleton": lay.skeleton(),
            "numels": list(lay.numels),
            "frozen_leaves": list(self._frozen_leaves),
            "lr_coefficients": dict(self._entries),
        }
        if lay.classes:
            out["classes"] = {n: mro[0] for n, mro in lay.classes.items()}
            out["class_bases"] = {mro[0]: list(mro[1:]) for mro in lay.classes.values()}
        if lay.aliases:
            out["aliases"] = dict(lay.aliases)
            out["names"] = list(lay.names)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Curriculum:
        """Inverse of :meth:`to_dict`."""
        paths, leaves, spec = flatten_with_paths(data["skeleton"])
        if list(leaves) != list(range(len(leaves))):
            raise ValueError("malformed Curriculum record: skeleton leaves out of order")
        numels, frozen = tuple(data["numels"]), tuple(data["frozen_leaves"])
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numels):
            raise ValueError("malformed Curriculum record: numels must be ints >= 0")
        if not all(isinstance(b, bool) for b in frozen):
            bad = next(b for b in frozen if not isinstance(b, bool))
            raise ValueError(
                f"malformed Curriculum record: frozen_leaves holds {bad!r}, not a bool"
            )
        if len(numels) != len(paths) or len(frozen) != len(paths):
            raise ValueError("malformed Curriculum record: lengths disagree with the skeleton")
        extra: dict[str, Any] = {}
        if "classes" in data:
            bases = data.get("class_bases", {})
            extra["classes"] = {
                str(n): (str(q), *(str(b) for b in bases.get(q, ())))
                for n, q in data["classes"].items()
            }
        if "aliases" in data:
            extra["aliases"] = {str(a): str(t) for a, t in data["aliases"].items()}
            extra["names"] = tuple(str(n) for n in data.get("names", ()))
        try:
            layout = Layout(spec=spec, paths=paths, numels=numels, **extra)
        except ValueError as exc:
            raise ValueError(f"malformed Curriculum record: {exc}") from None
        entries = {str(k): _check_coefficient(v) for k, v in data["lr_coefficients"].items()}
        unknown = [k for k in entries if k not in layout.leaves_under]
        if unknown:
            raise ValueError(
                f"malformed Curriculum record: coefficient entries for unknown names {unknown}"
            )
        return cls._make(layout, frozen, entries)
