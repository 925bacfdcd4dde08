"""Module-aware curricula: layer classes, tied weights, buffers and ``torch.optim`` export.

``Curriculum.from_module(module)`` records each layer's module class (as qualified
class names, so checkpoints stay code-free) and the aliases of tied weights. This
module holds the helpers behind it and the bridges to object-oriented code:

* :data:`NORM_LAYERS`: torch's normalisation classes, for ``freeze(..., keep=...)``.
* :func:`apply_requires_grad`: set ``requires_grad`` on a module from a curriculum.
* ``Curriculum.param_groups``: ``torch.optim`` param groups for a curriculum.
* :func:`frozen_norm_eval`, :func:`shield_buffers`, :func:`merge_buffers`: keep the
  running statistics of frozen BatchNorm layers still in ``functional_call`` loops.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ._tree import describe_mismatch, prefixes

if TYPE_CHECKING:
    from .curriculum import Curriculum, Layout

__all__ = [
    "NORM_LAYERS",
    "apply_requires_grad",
    "frozen_norm_eval",
    "merge_buffers",
    "shield_buffers",
]


def _norm_layers() -> tuple[type[nn.Module], ...]:
    names = (
        "BatchNorm1d",
        "BatchNorm2d",
        "BatchNorm3d",
        "SyncBatchNorm",
        "LazyBatchNorm1d",
        "LazyBatchNorm2d",
        "LazyBatchNorm3d",
        "LayerNorm",
        "GroupNorm",
        "InstanceNorm1d",
        "InstanceNorm2d",
        "InstanceNorm3d",
        "LazyInstanceNorm1d",
        "LazyInstanceNorm2d",
        "LazyInstanceNorm3d",
        "RMSNorm",  # torch >= 2.4
    )
    return tuple(getattr(nn, n) for n in names if hasattr(nn, n))


#: torch's parameter-bearing normalisation classes: BatchNorm1d/2d/3d, SyncBatchNorm,
#: LayerNorm, GroupNorm, InstanceNorm1d/2d/3d, RMSNorm and the Lazy variants.
#: Pass it as ``keep=`` to :meth:`Curriculum.freeze` for fastai's / Lightning's
#: ``train_bn`` behaviour. Subclasses match too (classes are compared along the MRO).
NORM_LAYERS: tuple[type[nn.Module], ...] = _norm_layers()


# -- class names -----------------------------------------------------------------------
def qualified_name(cls: type) -> str:
    """``module.QualName`` of a class (what checkpoints store)."""
    return f"{cls.__module__}.{cls.__qualname__}"


def class_mro_names(cls: type) -> tuple[str, ...]:
    """Qualified names of ``cls`` and its bases (``object`` left out), most derived first."""
    return tuple(qualified_name(k) for k in cls.__mro__ if k is not object)


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def normalize_classes(classes: Any, what: str) -> tuple[str, ...]:
    """Validate a class spec (a class, a class name, or a tuple / list of them).

    Returns qualified names (for classes) and the strings as given (for names).
    """
    items = list(classes) if isinstance(classes, (tuple, list)) else [classes]
    out = []
    for c in items:
        if isinstance(c, type):
            out.append(qualified_name(c))
        elif isinstance(c, str) and c:
            out.append(c)
        else:
            raise TypeError(
                f"{what} must be a module class, a class name or a tuple of them, got "
                f"{type(c).__name__}: {c!r}"
            )
    return tuple(out)


def class_matches(mro: Sequence[str], wanted: Sequence[str]) -> bool:
    """Does a layer with MRO names ``mro`` match any of ``wanted``?

    A wanted entry containing a ``.`` is a qualified name; a bare name matches the
    class name at the end of a qualified name (``"Linear"``).
    """
    for w in wanted:
        if "." in w:
            if w in mro:
                return True
        elif any(_short(m) == w for m in mro):
            return True
    return False


def describe_classes(wanted: Sequence[str]) -> str:
    return ", ".join(_short(w) for w in wanted)


def class_hint(wanted: Sequence[str], present: Sequence[str]) -> str:
    """Close matches among the classes present (short names)."""
    shorts = sorted({_short(p) for p in present})
    near: list[str] = []
    for w in wanted:
        near += [n for n in difflib.get_close_matches(_short(w), shorts, n=3, cutoff=0.5)]
    near = list(dict.fromkeys(near))
    out = f"; layer classes there: {shorts[:12]}" + (" ..." if len(shorts) > 12 else "")
    if near:
        out += f"; did you mean {near}?"
    return out


# -- from_module -----------------------------------------------------------------------
def layout_from_module(module: nn.Module) -> Layout:
    """The :class:`Layout` of ``dict(module.named_parameters())`` with classes and aliases."""
    from .curriculum import Layout

    if not isinstance(module, nn.Module):
        raise TypeError(f"from_module needs an nn.Module, got {type(module).__name__}")
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    names: list[str] = []
    for name, p in module.named_parameters(remove_duplicate=False):
        if isinstance(p, nn.parameter.UninitializedParameter):
            raise ValueError(
                f"parameter {name!r} is not initialised (a lazy module): run one forward pass "
                "before Curriculum.from_module"
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
    return Layout.from_params(params, classes=classes, aliases=aliases, names=tuple(names))


# -- torch.optim export ----------------------------------------------------------------
def _check_lr(lr: Any) -> Any:
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1:
            raise TypeError(f"lr must be a number or a 0-d tensor, got shape {tuple(lr.shape)}")
        return lr
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
        raise TypeError(
            f"lr must be a number (torch.optim param groups need a base lr), got "
            f"{type(lr).__name__}: {lr!r}"
        )
    if not math.isfinite(lr) or lr < 0:
        raise ValueError(f"lr must be finite and >= 0, got {lr!r}")
    return float(lr)


def _leaves_for(cur: Curriculum, params: Any, what: str) -> list[torch.Tensor]:
    from ._tree import align

    lay = cur._layout
    if isinstance(params, nn.Module):
        params = dict(params.named_parameters())
    return align(params, lay.spec, lay.paths, what)


def param_groups(
    cur: Curriculum,
    params: Any,
    lr: Any,
    *,
    since: Curriculum | None = None,
    named: bool = False,
) -> list[dict[str, Any]]:
    """Implementation of :meth:`Curriculum.param_groups`."""
    lr = _check_lr(lr)
    leaves = _leaves_for(cur, params, "params")
    lay = cur._layout
    skip = [False] * len(leaves)
    if since is not None:
        from .curriculum import Curriculum

        if not isinstance(since, Curriculum):
            raise TypeError(f"since must be a Curriculum, got {type(since).__name__}")
        if since._layout.paths != lay.paths:
            raise ValueError(
                "since= is a curriculum over other params: "
                + describe_mismatch(lay.paths, since._layout.paths)
            )
        skip = [not f for f in since.frozen_leaves]
    groups: dict[float, dict[str, Any]] = {}
    for path, leaf, frozen, c, s in zip(
        lay.paths, leaves, cur.frozen_leaves, cur.leaf_coefficients, skip
    ):
        if frozen or s:
            continue
        if c not in groups:
            groups[c] = {"params": [], "lr": lr * c}
        groups[c]["params"].append((path, leaf) if named else leaf)
    return list(groups.values())


def apply_requires_grad(module: nn.Module, curriculum: Curriculum) -> nn.Module:
    """Set ``requires_grad`` on ``module``'s parameters from ``curriculum``'s masks.

    Lets the same curriculum drive object-oriented code (``torch.optim``, Lightning,
    a Hugging Face ``Trainer``): frozen leaves get ``requires_grad=False``, trainable
    ones ``True``. A tied weight is one parameter, set once.

    Args:
      module: the model; its ``named_parameters()`` must be the curriculum's paths.
      curriculum: a :class:`~funcurriculum.Curriculum` over ``dict(module.named_parameters())``.

    Returns:
      ``module`` (changed in place).

    Raises:
      ValueError: the module's parameter names differ from the curriculum's paths
        (nothing is changed).

    Example:
      >>> import torch, funcurriculum as fc
      >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
      >>> cur = fc.Curriculum.from_module(m).freeze("0")
      >>> [p.requires_grad for p in fc.apply_requires_grad(m, cur).parameters()]
      [False, False, True, True]
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"apply_requires_grad needs an nn.Module, got {type(module).__name__}")
    named = dict(module.named_parameters())
    if tuple(named) != curriculum._layout.paths:
        raise ValueError(
            "the module's parameters do not match the curriculum's paths: "
            + describe_mismatch(curriculum._layout.paths, list(named))
        )
    for p, frozen in zip(named.values(), curriculum.frozen_leaves):
        p.requires_grad_(not frozen)
    return module


# -- buffers and frozen normalisation layers -------------------------------------------
def _layer_frozen(cur: Curriculum, layer: str) -> bool:
    """Is module ``layer`` frozen? A parameter-less module follows its nearest
    parameter-bearing ancestor (the root: frozen when every leaf is)."""
    lay = cur._layout
    fl = cur.frozen_leaves
    for q in [layer, *reversed(prefixes(layer))] if layer else []:
        if q in lay.leaves_under:
            return all(fl[i] for i in lay.leaves_under[q])
    return bool(fl) and all(fl)


def frozen_buffer_keys(keys: Sequence[str], curriculum: Curriculum) -> set[str]:
    """The buffer names (``"layer.running_mean"``) whose owning layer is frozen."""
    out = set()
    for k in keys:
        owner = k.rsplit(".", 1)[0] if "." in k else ""
        if _layer_frozen(curriculum, owner):
            out.add(k)
    return out


def _check_buffers(buffers: Any, what: str) -> Mapping[str, torch.Tensor]:
    if not isinstance(buffers, Mapping):
        raise TypeError(
            f"{what} must be a dict of buffers (e.g. dict(module.named_buffers())), got "
            f"{type(buffers).__name__}"
        )
    return buffers


def shield_buffers(buffers: Mapping[str, torch.Tensor], curriculum: Curriculum) -> dict:
    """A buffers dict for ``functional_call`` in which frozen layers' buffers are copies.

    ``functional_call`` lets BatchNorm update ``running_mean`` / ``running_var`` /
    ``num_batches_tracked`` in place in the buffers it is given. Pass the result of
    this function instead: trainable layers' buffers are the very same tensors (they
    move, as in Lightning's ``freeze(train_bn=True)``), while frozen layers get
    throw-away copies, so the originals stay bit-identical and the frozen layer still
    normalises with batch statistics (Lightning's ``train_bn=False`` policy). Works
    under ``vmap`` with stacked buffers from ``torch.func.stack_module_state``.

    Args:
      buffers: ``dict(module.named_buffers())`` (or stacked buffers).
      curriculum: the curriculum over the module's parameters.

    Returns:
      A new dict with the same keys.

    Example:
      >>> import torch, funcurriculum as fc
      >>> from torch.func import functional_call
      >>> m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
      >>> cur = fc.Curriculum.from_module(m).freeze("1")
      >>> bufs = dict(m.named_buffers())
      >>> before = bufs["1.running_mean"].clone()
      >>> _ = functional_call(m, (dict(m.named_parameters()), fc.shield_buffers(bufs, cur)),
      ...                     (torch.randn(8, 3),))
      >>> torch.equal(bufs["1.running_mean"], before)
      True
    """
    buffers = _check_buffers(buffers, "buffers")
    frozen = frozen_buffer_keys(list(buffers), curriculum)
    return {k: (v.clone() if k in frozen else v) for k, v in buffers.items()}


def merge_buffers(
    old: Mapping[str, torch.Tensor], new: Mapping[str, torch.Tensor], curriculum: Curriculum
) -> dict:
    """Pure merge after a forward pass: frozen layers keep ``old``, others take ``new``.

    For loops that return the post-forward buffers instead of relying on in-place
    updates (e.g. a function that runs ``functional_call`` on cloned buffers and
    returns them, vmapped over an ensemble).

    Args:
      old: buffers before the step.
      new: buffers after it (same keys).
      curriculum: the curriculum over the module's parameters.

    Returns:
      A new dict (``old``'s tensors for frozen layers, ``new``'s for the others).

    Example:
      >>> import torch, funcurriculum as fc
      >>> m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
      >>> cur = fc.Curriculum.from_module(m).freeze("1")
      >>> old = {"1.running_mean": torch.zeros(4)}
      >>> fc.merge_buffers(old, {"1.running_mean": torch.ones(4)}, cur)["1.running_mean"]
      tensor([0., 0., 0., 0.])
    """
    old = _check_buffers(old, "old")
    new = _check_buffers(new, "new")
    if set(old) != set(new):
        raise ValueError(
            "merge_buffers: old and new have different keys: "
            + describe_mismatch(list(old), list(new))
        )
    frozen = frozen_buffer_keys(list(new), curriculum)
    return {k: (old[k] if k in frozen else v) for k, v in new.items()}


@contextlib.contextmanager
def frozen_norm_eval(
    module: nn.Module,
    curriculum: Curriculum,
    classes: type | tuple[type, ...] = NORM_LAYERS,
) -> Iterator[nn.Module]:
    """Run frozen normalisation layers in eval mode inside the ``with`` block.

    fastai's ``BnFreeze`` policy: a frozen BatchNorm normalises with its running
    statistics and never updates them, while trainable norm layers (and everything
    else) keep their mode. ``functional_call`` follows each module's ``training``
    flag, so this works in functional loops and under ``vmap``. The previous flags
    are restored on exit.

    Args:
      module: the model (the one ``functional_call`` runs).
      curriculum: the curriculum over its parameters.
      classes: which layer classes to switch (default :data:`NORM_LAYERS`).

    Yields:
      ``module``.

    Example:
      >>> import torch, funcurriculum as fc
      >>> m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
      >>> cur = fc.Curriculum.from_module(m).freeze("1")
      >>> with fc.frozen_norm_eval(m, cur):
      ...     print(m[0].training, m[1].training)
      True False
      >>> m[1].training
      True
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"frozen_norm_eval needs an nn.Module, got {type(module).__name__}")
    names = tuple(n for n, _ in module.named_parameters())
    if names != curriculum._layout.paths:
        raise ValueError(
            "the module's parameters do not match the curriculum's paths: "
            + describe_mismatch(curriculum._layout.paths, list(names))
        )
    saved = []
    for name, m in module.named_modules():
        if isinstance(m, classes) and _layer_frozen(curriculum, name) and m.training:
            saved.append(m)
    try:
        for m in saved:
            m.train(False)
        yield module
    finally:
        for m in saved:
            m.train(True)
