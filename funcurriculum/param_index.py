"""``ParamIndex``: the names a curriculum is defined over.

Leaf paths, layer names (every parameter-bearing module path), which leaves lie under
each name, the aliases of tied weights and, for an index built from a module, each
layer's class (as qualified names, so checkpoints stay code-free). It is plain,
immutable data shared by every curriculum derived from one another, and the one
public way for schedules, inspection and the ``torch.optim`` bridge to ask about
structure (``curriculum.index``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optree
import torch
from torch import nn

from ._classes import class_matches, class_mro_names, normalize_classes
from ._select import Patterns, match_names, node_names
from ._tree import PyTree, flatten_with_paths, prefixes, unflatten

__all__ = ["ParamIndex"]


@dataclass(frozen=True, eq=False)
class ParamIndex:
    """The structure of a params pytree: paths, layer names, tied weights, classes.

    Build it with `ParamIndex.from_params` or `ParamIndex.from_module`; every
    curriculum exposes its own as ``curriculum.index``.

    Attributes:
      spec: the params' container structure.
      paths: leaf paths in traversal order.
      numels: elements per leaf.
      nodes: layer names and leaf paths (aliases included) in pre-order.
      leaves_under: name -> indices of the leaves in its subtree (a leaf path: itself).
      index: leaf path -> its index.
      classes: module path (``""`` = the root) -> qualified names of its class and
        bases, most derived first (empty unless built from a module).
      aliases: tied weights: alias parameter name -> the leaf path it shares.
      names: every parameter name, aliases included, in module order.
      leaf_names: per leaf, all its names (its path first, then aliases).
      tied: tied leaf path -> its aliases.

    Example:
      >>> import torch, funcurriculum as fc
      >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
      >>> ix = fc.ParamIndex.from_module(m)
      >>> ix.layers, ix.class_of("1")
      (['0', '1'], 'torch.nn.modules.normalization.LayerNorm')
    """

    spec: optree.PyTreeSpec
    paths: tuple[str, ...]
    numels: tuple[int, ...]
    nodes: tuple[str, ...] = field(init=False)
    leaves_under: Mapping[str, tuple[int, ...]] = field(init=False)
    index: Mapping[str, int] = field(init=False)
    classes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    aliases: Mapping[str, str] = field(default_factory=dict)
    names: tuple[str, ...] = ()
    leaf_names: tuple[tuple[str, ...], ...] = field(init=False)
    tied: Mapping[str, tuple[str, ...]] = field(init=False)
    _relative: Mapping[str, tuple[str, ...]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        order = self.names or self.paths
        index = {p: i for i, p in enumerate(self.paths)}
        bad = [a for a, t in self.aliases.items() if t not in index or a in index]
        if bad or sorted(order) != sorted([*self.paths, *self.aliases]):
            raise ValueError(
                f"malformed ParamIndex: aliases {dict(self.aliases)} / names do not fit the paths"
            )
        nodes = node_names(order)
        under: dict[str, dict[int, None]] = {n: {} for n in nodes}
        names_of: list[list[str]] = [[p] for p in self.paths]
        relative: dict[str, list[str]] = {"": list(order)}
        for name in order:
            for q in prefixes(name):
                relative.setdefault(q, []).append(name[len(q) + 1 :])
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
        object.__setattr__(self, "_relative", {k: tuple(v) for k, v in relative.items()})

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_params(cls, params: PyTree, **extra: Any) -> ParamIndex:
        """The index of a params pytree (tensors are read for structure and sizes only).

        Args:
          params: a pytree of tensors.
          **extra: ``classes`` / ``aliases`` / ``names`` (see the attributes).

        Returns:
          A `ParamIndex`.
        """
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

    @classmethod
    def from_module(cls, module: nn.Module) -> ParamIndex:
        """The index of ``dict(module.named_parameters())`` with layer classes and aliases.

        A parameter shared by two modules is one leaf (its first name in
        ``named_parameters(remove_duplicate=False)`` order); its other names are aliases.

        Args:
          module: the model (read for names, classes and sizes only).

        Returns:
          A `ParamIndex`.
        """
        if not isinstance(module, nn.Module):
            raise TypeError(f"from_module needs an nn.Module, got {type(module).__name__}")
        first: dict[int, str] = {}
        aliases: dict[str, str] = {}
        names: list[str] = []
        for name, p in module.named_parameters(remove_duplicate=False):
            if isinstance(p, nn.parameter.UninitializedParameter):
                raise ValueError(
                    f"parameter {name!r} is not initialised (a lazy module): run one forward "
                    "pass before Curriculum.from_module"
                )
            names.append(name)
            if id(p) in first:
                aliases[name] = first[id(p)]
            else:
                first[id(p)] = name
        params = dict(module.named_parameters())
        mods = dict(module.named_modules(remove_duplicate=False))
        wanted = {""}
        for n in names:
            wanted.update(prefixes(n))
        classes = {m: class_mro_names(type(mods[m])) for m in mods if m in wanted}
        return cls.from_params(params, classes=classes, aliases=aliases, names=tuple(names))

    # -- queries ------------------------------------------------------------------------
    @property
    def layers(self) -> list[str]:
        """Layer (module) names, parent before child (not leaf paths nor aliases)."""
        return [n for n in self.nodes if not self.is_leaf_name(n)]

    @property
    def has_classes(self) -> bool:
        """Whether layer classes are known (built from a module)."""
        return bool(self.classes)

    def is_leaf_name(self, name: str) -> bool:
        """Is ``name`` a leaf path or an alias of one?"""
        return name in self.index or name in self.aliases

    def leaves_of(self, names: Sequence[str]) -> set[int]:
        """Indices of the leaves under each of ``names`` (layer names or leaf paths)."""
        out: set[int] = set()
        for name in names:
            out.update(self.leaves_under[name])
        return out

    def select(self, patterns: Patterns) -> list[str]:
        """Names (layers and leaf paths) matched by ``patterns`` (``re.fullmatch``)."""
        return match_names(self.nodes, patterns)

    def parent(self, name: str) -> str | None:
        """The nearest enclosing layer name of ``name`` (``None`` at the top)."""
        for q in reversed(prefixes(name)):
            if q in self.leaves_under:
                return q
        return None

    def class_of(self, layer: str) -> str | None:
        """Qualified class name of ``layer`` (``None`` when unknown)."""
        mro = self.classes.get(layer)
        return mro[0] if mro else None

    def own_params(self, layer: str) -> list[str]:
        """Parameter names relative to ``layer`` (``"weight"``, ``"sub.bias"``, ...)."""
        return list(self._relative.get(layer, ()))

    def matches_class(self, layer: str, wanted: Sequence[str]) -> bool:
        """Does ``layer`` match a normalised class spec (see ``normalize_classes``)?"""
        mro = self.classes.get(layer, ())
        return bool(mro) and class_matches(mro, wanted, self._relative.get(layer, ()))

    def layers_of_class(self, classes: Any, what: str = "classes") -> list[str]:
        """Layer names whose class matches ``classes`` (a class, a name or a tuple)."""
        wanted = normalize_classes(classes, what)
        return [n for n in self.layers if self.matches_class(n, wanted)]

    def leaves_of_class(self, classes: Any, what: str = "keep") -> frozenset[int]:
        """Leaves with a layer of ``classes`` on the path to them (through any name)."""
        wanted = normalize_classes(classes, what)
        hits = {n for n in self.classes if self.matches_class(n, wanted)}
        out = set()
        for i, names in enumerate(self.leaf_names):
            if any(q in hits for n in names for q in prefixes(n)):
                out.add(i)
        return frozenset(out)

    def maximal_names(self, flags: Sequence[bool]) -> frozenset[str]:
        """The maximal names whose leaves are all flagged: a name (layer or leaf path)
        is listed when every leaf under it is flagged and not every leaf under its
        parent is. With per-leaf frozen flags this is ``Curriculum.frozen``.

        Args:
          flags: one bool per leaf, in traversal order.

        Returns:
          A frozenset of names.
        """
        full = {n for n in self.nodes if all(flags[i] for i in self.leaves_under[n])}
        return frozenset(n for n in full if self.parent(n) not in full)

    def skeleton(self) -> PyTree:
        """Params' container structure with leaf indices as leaves (plain data)."""
        return unflatten(self.spec, range(len(self.paths)))

    def render(self, leaves: Sequence[Any]) -> PyTree:
        """A pytree with the params' structure holding ``leaves`` (traversal order)."""
        return unflatten(self.spec, leaves)

    # -- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain-data form: skeleton, numels and (when known) classes and aliases."""
        out: dict[str, Any] = {"skeleton": self.skeleton(), "numels": list(self.numels)}
        if self.classes:
            out["classes"] = {n: mro[0] for n, mro in self.classes.items()}
            out["class_bases"] = {mro[0]: list(mro[1:]) for mro in self.classes.values()}
        if self.aliases:
            out["aliases"] = dict(self.aliases)
            out["names"] = list(self.names)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParamIndex:
        """Inverse of `ParamIndex.to_dict` (``ValueError`` for a malformed record)."""
        paths, leaves, spec = flatten_with_paths(data["skeleton"])
        if list(leaves) != list(range(len(leaves))):
            raise ValueError("skeleton leaves out of order")
        numels = tuple(data["numels"])
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numels):
            raise ValueError("numels must be ints >= 0")
        if len(numels) != len(paths):
            raise ValueError("lengths disagree with the skeleton")
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
        return cls(spec=spec, paths=paths, numels=numels, **extra)
