"""Split params into trainable / frozen parts for ``torch.func.grad``, and join them back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from . import _validate as V
from ._tree import PyTree, align, flatten, key_paths, spec_paths, unflatten


def _insert(tree: dict, keys: tuple[Any, ...], leaf: Any) -> None:
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = leaf


def trainable_flags(masks_l: list[Any], paths: tuple[str, ...]) -> list[bool]:
    """One Python bool per mask leaf: does any member train it?

    Bool leaves are read as they are; bool-tensor leaves (dynamic masks, e.g. batched
    over sweep members) are True when any element is True, read with one host sync for
    all of them. While ``torch.compile`` traces or inside a ``torch.func`` transform the
    values cannot decide structure, so a tensor leaf counts as trainable there.
    """
    flags = [V.mask_value(m, p, dynamic=True) for m, p in zip(masks_l, paths)]
    dyn = [i for i, f in enumerate(flags) if not isinstance(f, bool)]
    if not dyn:
        return flags
    if V.compiling() or V.functorch_active():
        values = [True] * len(dyn)
    else:
        values = torch.stack([flags[i].any().cpu() for i in dyn]).tolist()
    for i, v in zip(dyn, values):
        flags[i] = bool(v)
    return flags


def partition(params: PyTree, masks: PyTree) -> tuple[dict, dict]:
    """Split ``params`` into ``(trainable, frozen)`` by ``masks``.

    ``torch.func.grad`` refuses ``None`` leaves, so the parts are (nested) dicts that
    simply lack the other part's keys; a list or tuple inside ``params`` becomes a
    dict keyed by index. Differentiate with respect to ``trainable`` only, so frozen
    leaves cost no gradient compute.

    With dynamic masks (bool-tensor leaves, e.g. from `fc.stack_curricula`, one value
    per sweep member) a leaf goes to the trainable part when **any** member trains it:
    gradients are computed for the union of the members' trainable leaves, and a leaf
    frozen in every member costs nothing. While ``torch.compile`` traces (or inside a
    ``torch.func`` transform) tensor masks are data, so every tensor leaf goes to the
    trainable part; use a Python ``False`` for leaves that must cost nothing there.

    Args:
      params: pytree of tensors.
      masks: bool pytree with the same structure (True = trainable); leaves may be
        bool tensors (0-d, or batched over members).

    Returns:
      ``(trainable, frozen)``, holding the very same tensor objects.

    Example:
      >>> import torch, funcurriculum as fc
      >>> p = {"body.w": torch.ones(2), "head.w": torch.ones(2)}
      >>> tr, fr = fc.partition(p, {"body.w": False, "head.w": True})
      >>> list(tr), list(fr)
      (['head.w'], ['body.w'])
      >>> swept = {"body.w": torch.tensor([False, True]), "head.w": torch.tensor([True, True])}
      >>> list(fc.partition(p, swept)[0])  # any member trains body.w
      ['body.w', 'head.w']
    """
    _, spec = flatten(params)
    paths = spec_paths(spec)
    return split(params, trainable_flags(list(align(masks, spec, paths, "masks")), paths))


def split(params: PyTree, flags: Sequence[bool]) -> tuple[dict, dict]:
    """`partition` by one Python bool per leaf (traversal order): True = trainable."""
    leaves, spec = flatten(params)
    trainable: dict = {}
    frozen: dict = {}
    for keys, leaf, flag in zip(key_paths(spec), leaves, flags):
        if not keys:
            raise TypeError("partition needs a container of tensors, got a single tensor")
        _insert(trainable if flag else frozen, keys, leaf)
    return trainable, frozen


def _merge(a: Any, b: Any, where: str) -> Any:
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for k, v in b.items():
            out[k] = _merge(a[k], v, f"{where}{k}.") if k in a else v
        return out
    raise ValueError(f"combine: path {where.rstrip('.')!r} is in both parts")


def _restore_lists(tree: Any) -> Any:
    if not isinstance(tree, dict):
        return tree
    out = {k: _restore_lists(v) for k, v in tree.items()}
    keys = list(out)
    if keys and all(isinstance(k, int) and not isinstance(k, bool) for k in keys):
        if sorted(keys) == list(range(len(keys))):
            return [out[i] for i in range(len(keys))]
    return out


def combine(trainable: PyTree, frozen: PyTree, like: PyTree | None = None) -> PyTree:
    """Join the two parts of ``partition``.

    Args:
      trainable: the trainable part (e.g. what ``torch.func.grad`` differentiates).
      frozen: the frozen part.
      like: optional tree with the original structure (e.g. ``params``). With it, the
        result has exactly that structure and key order. Without it, dicts are merged
        (trainable keys first, then frozen ones; for flat dicts this is all that
        ``functional_call`` needs) and integer-keyed dicts become lists again.

    Returns:
      The combined pytree.

    Raises:
      ValueError: a path is in both parts, or (with ``like``) a path is in neither.

    Example:
      >>> import torch, funcurriculum as fc
      >>> p = {"a": torch.ones(1), "b": torch.zeros(1)}
      >>> tr, fr = fc.partition(p, {"a": False, "b": True})
      >>> list(fc.combine(tr, fr, like=p))
      ['a', 'b']
    """
    if like is None:
        return _restore_lists(_merge(trainable, frozen, ""))
    t_leaves, t_spec = flatten(trainable)
    f_leaves, f_spec = flatten(frozen)
    index = dict(zip(spec_paths(t_spec), t_leaves))
    for p, leaf in zip(spec_paths(f_spec), f_leaves):
        if p in index:
            raise ValueError(f"combine: path {p!r} is in both parts")
        index[p] = leaf
    _, spec = flatten(like)
    paths = spec_paths(spec)
    missing = [p for p in paths if p not in index]
    extra = sorted(set(index) - set(paths))
    if missing or extra:
        raise ValueError(
            f"combine: parts do not match `like`: missing {missing}, unexpected {extra}"
        )
    return unflatten(spec, [index[p] for p in paths])
