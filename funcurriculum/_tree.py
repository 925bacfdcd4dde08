"""Pytree plumbing: insertion-ordered flattening, dotted paths, alignment checks.

Every tree in funcurriculum is flattened here, with dict insertion order kept
(optree sorts dict keys unless told otherwise) and ``None`` treated as a leaf
(so grads holding ``None`` at frozen leaves line up with params).
"""

from __future__ import annotations

import difflib
from collections import OrderedDict, defaultdict, deque
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import optree
import torch

from ._validate import _PLAIN

NAMESPACE = "funcurriculum"

PyTree = Any


def flatten(tree: PyTree) -> tuple[list[Any], Any]:
    """Flatten ``tree`` in insertion order (``None`` is a leaf).

    While ``torch.compile`` traces, a plain-Python walk (``TracedSpec``) stands in for
    optree, which dynamo cannot trace: same leaves, order and paths, no graph break.
    """
    if _compiling():
        leaves: list[Any] = []
        spec = _walk(tree, leaves)
        if spec is not _UNKNOWN:
            return leaves, spec
    elif type(tree) is dict:
        # the common tree, ``{"layer.weight": tensor, ...}`` (params, grads, masks,
        # coefficients, state columns): its leaves are its values and its spec depends on
        # its keys only, so the spec is cached by keys (optree takes ~9 µs on 40 leaves;
        # an update flattens five such trees)
        leaves = list(tree.values())
        if _FLAT_LEAVES.issuperset(map(type, leaves)):
            keys = tuple(tree)
            spec = _FLAT_SPECS.get(keys)
            if spec is None and _STR.issuperset(map(type, keys)):
                spec = _flat_spec(keys)
            if spec is not None:
                return leaves, spec
    return _optree_flatten(tree)


def _optree_flatten(tree: PyTree) -> tuple[list[Any], Any]:
    with optree.dict_insertion_ordered(True, namespace=NAMESPACE):
        return optree.tree_flatten(tree, none_is_leaf=True, namespace=NAMESPACE)


# value types that are leaves (never optree nodes) and key types whose tuples compare as
# the keys do (``(1,) == (True,)``: int keys are left to optree)
_FLAT_LEAVES = frozenset({*_PLAIN, type(None), bool, int, float})
_STR = frozenset({str})
_FLAT_SPECS: dict[tuple[str, ...], Any] = {}


def _flat_spec(keys: tuple[str, ...]) -> Any:
    """The spec of a flat dict with ``keys`` (leaf values), cached (a bounded cache: a
    program that builds trees with ever-new keys clears it now and then)."""
    if len(_FLAT_SPECS) >= 1024:
        _FLAT_SPECS.clear()
    spec = _FLAT_SPECS[keys] = _optree_flatten(dict.fromkeys(keys))[1]
    return spec


def unflatten(spec: Any, leaves: Iterable[Any]) -> PyTree:
    """Inverse of ``flatten``."""
    if isinstance(spec, TracedSpec):
        return spec.unflatten(leaves)
    return optree.tree_unflatten(spec, leaves)


def _join(keys: Sequence[Any]) -> str:
    return ".".join(str(k) for k in keys)


def spec_paths(spec: Any) -> tuple[str, ...]:
    """Dotted leaf paths of a treespec (cached for optree specs: a training loop reuses one)."""
    if isinstance(spec, TracedSpec):
        return tuple(_join(keys) for keys in spec.paths())
    return _optree_paths(spec)


@lru_cache(maxsize=256)
def _optree_paths(spec: optree.PyTreeSpec) -> tuple[str, ...]:
    return tuple(_join(keys) for keys in spec.paths())


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return compiler is not None and compiler.is_compiling()


_DICTS = (dict, OrderedDict, defaultdict)
_SEQS = (list, tuple, deque)
_UNKNOWN = object()  # a container type the traced walk does not know: use optree instead


class TracedSpec:
    """Tree structure recorded by the traceable walk used while ``torch.compile`` traces.

    ``kind`` is the container type (``None`` for a leaf), ``keys`` its keys (dicts) or
    indices, ``children`` one spec per key, ``extra`` a defaultdict's factory or a
    deque's maxlen. Mirrors optree's insertion-ordered, ``None``-is-leaf flattening.
    """

    __slots__ = ("kind", "keys", "children", "extra")

    def __init__(self, kind: Any, keys: tuple, children: tuple, extra: Any = None):
        self.kind, self.keys, self.children, self.extra = kind, keys, children, extra

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, TracedSpec)
            and self.kind is other.kind
            and self.keys == other.keys
            and self.extra == other.extra
            and self.children == other.children
        )

    def __hash__(self) -> int:
        return hash((self.kind, self.keys, self.children))

    def paths(self) -> list[tuple[Any, ...]]:
        if self.kind is None:
            return [()]
        return [(k, *rest) for k, c in zip(self.keys, self.children) for rest in c.paths()]

    def unflatten(self, leaves: Iterable[Any]) -> PyTree:
        return self._build(iter(leaves))

    def _build(self, it: Any) -> Any:
        kind = self.kind
        if kind is None:
            return next(it)
        values = [c._build(it) for c in self.children]
        if kind is dict or kind is OrderedDict:
            return kind(zip(self.keys, values))
        if kind is defaultdict:
            return defaultdict(self.extra, zip(self.keys, values))
        if kind is list:
            return values
        if kind is tuple:
            return tuple(values)
        if kind is deque:
            return deque(values, maxlen=self.extra)
        return kind(*values)  # namedtuple


_LEAF = TracedSpec(None, (), ())


def _walk(tree: Any, leaves: list[Any]) -> Any:
    t = type(tree)
    if t is torch.Tensor or tree is None:
        leaves.append(tree)
        return _LEAF
    if t in _DICTS:
        keys = tuple(tree.keys())
        extra = tree.default_factory if t is defaultdict else None
    elif t in _SEQS:
        keys = tuple(range(len(tree)))
        extra = tree.maxlen if t is deque else None
    elif isinstance(tree, tuple) and hasattr(t, "_fields"):  # namedtuple
        keys = tuple(range(len(tree)))
        extra = None
    elif isinstance(tree, (tuple, list, dict, deque)):
        return _UNKNOWN
    else:
        leaves.append(tree)
        return _LEAF
    children = []
    for k in keys:
        c = _walk(tree[k], leaves)
        if c is _UNKNOWN:
            return c
        children.append(c)
    return TracedSpec(t, keys, tuple(children), extra)


def flatten_with_paths(tree: PyTree) -> tuple[tuple[str, ...], list[Any], Any]:
    leaves, spec = flatten(tree)
    return spec_paths(spec), leaves, spec


def key_paths(spec: Any) -> list[tuple[Any, ...]]:
    """Raw (undotted) key tuples of a treespec's leaves."""
    return list(spec.paths())


def paths(params: PyTree) -> list[str]:
    """Leaf paths of ``params`` in traversal (insertion) order, as dotted strings.

    Args:
      params: a pytree of tensors: a flat dict such as ``dict(module.named_parameters())``,
        or nested dicts / lists / tuples (keys and indices join with ``"."``).

    Returns:
      A list of dotted path strings, one per leaf.

    Example:
      >>> import torch, funcurriculum as fc
      >>> fc.paths({"head": {"w": torch.zeros(2)}, "body": [torch.zeros(1)]})
      ['head.w', 'body.0']
    """
    return list(flatten_with_paths(params)[0])


def prefixes(path: str) -> list[str]:
    """Proper dotted prefixes of ``path``, shortest first: ``a.b.c`` -> ``[a, a.b]``."""
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def layer_names(params: PyTree) -> list[str]:
    """Every parameter-bearing module path (ancestors included), parent before child.

    A leaf ``backbone.conv1.weight`` contributes ``backbone`` and ``backbone.conv1``;
    names appear in first-appearance order.

    Args:
      params: a pytree of tensors.

    Returns:
      The list of layer (module) names.

    Example:
      >>> import torch, funcurriculum as fc
      >>> fc.layer_names({"backbone.conv1.weight": torch.zeros(1), "head.bias": torch.zeros(1)})
      ['backbone', 'backbone.conv1', 'head']
    """
    seen: dict[str, None] = {}
    for p in flatten_with_paths(params)[0]:
        for q in prefixes(p):
            seen.setdefault(q, None)
    return list(seen)


def close_matches(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(word, list(candidates), n=n, cutoff=0.5)


def describe_mismatch(ref: Sequence[str], got: Sequence[str], limit: int = 8) -> str:
    """Human-readable difference between two path lists."""
    ref_set, got_set = set(ref), set(got)
    missing = [p for p in ref if p not in got_set]
    extra = [p for p in got if p not in ref_set]
    parts = []
    if missing:
        parts.append(f"missing paths {missing[:limit]}" + (" ..." if len(missing) > limit else ""))
    if extra:
        parts.append(f"unexpected paths {extra[:limit]}" + (" ..." if len(extra) > limit else ""))
    if not parts:
        parts.append("same paths but a different container structure")
    return "; ".join(parts)


def align(
    tree: PyTree,
    ref_spec: Any,
    ref_paths: Sequence[str],
    what: str,
    *,
    allow_missing: bool = False,
) -> list[Any]:
    """Leaves of ``tree`` in the order of ``ref_paths``.

    ``tree`` must have the reference structure, or (``allow_missing``) be a sub-tree of
    it such as a ``partition`` part, in which case absent leaves
    come back as ``None``. Raises ``ValueError`` naming missing / unexpected paths.
    """
    leaves, spec = flatten(tree)
    if spec == ref_spec:
        return leaves
    got = spec_paths(spec)
    if allow_missing:
        index = dict(zip(got, leaves))
        if len(index) == len(got) and index.keys() <= set(ref_paths):
            return [index.get(p) for p in ref_paths]
    elif list(got) == list(ref_paths):
        return leaves
    raise ValueError(
        f"{what} do not match the params' structure: {describe_mismatch(ref_paths, got)}"
    )
