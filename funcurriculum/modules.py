"""Module-aware curricula: layer classes, tied weights, buffers and ``torch.optim`` export.

``Curriculum.from_module(module)`` records each layer's module class (as qualified
class names, so checkpoints stay code-free) and the aliases of tied weights. This
module holds the helpers behind it and the bridges to object-oriented code:

* `NORM_LAYERS`: torch's normalisation classes, for ``freeze(..., keep=...)``.
* `apply_requires_grad`: set ``requires_grad`` on a module from a curriculum.
* ``Curriculum.param_groups``: ``torch.optim`` param groups for a curriculum.
* ``frozen_norm_eval``, ``shield_buffers``, ``merge_buffers``: keep the
  running statistics of frozen BatchNorm layers still in ``functional_call`` loops.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ._classes import NORM_LAYERS
from ._tree import describe_mismatch, prefixes
from .curriculum import Curriculum

__all__ = [
    "NORM_LAYERS",
    "apply_requires_grad",
    "frozen_norm_eval",
    "merge_buffers",
    "shield_buffers",
    "stack_modules",
]


def _check_module_paths(module: nn.Module, curriculum: Curriculum) -> dict[str, nn.Parameter]:
    named = dict(module.named_parameters())
    if tuple(named) != tuple(curriculum.paths):
        raise ValueError(
            "the module's parameters do not match the curriculum's paths: "
            + describe_mismatch(curriculum.paths, list(named))
        )
    return named


def apply_requires_grad(module: nn.Module, curriculum: Curriculum) -> nn.Module:
    """Set ``requires_grad`` on ``module``'s parameters from ``curriculum``'s masks.

    Lets the same curriculum drive object-oriented code (``torch.optim``, Lightning,
    a Hugging Face ``Trainer``): frozen leaves get ``requires_grad=False``, trainable
    ones ``True``. A tied weight is one parameter, set once.

    Args:
      module: the model; its ``named_parameters()`` must be the curriculum's paths.
      curriculum: a ``Curriculum`` over ``dict(module.named_parameters())``.

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
    named = _check_module_paths(module, curriculum)
    for p, frozen in zip(named.values(), curriculum.frozen_leaves):
        p.requires_grad_(not frozen)
    return module


# -- buffers and frozen normalisation layers -------------------------------------------
def _layer_frozen(cur: Curriculum, layer: str) -> bool:
    """Is module ``layer`` frozen? A parameter-less module follows its nearest
    parameter-bearing ancestor (the root: frozen when every leaf is)."""
    under = cur.index.leaves_under
    fl = cur.frozen_leaves
    for q in [layer, *reversed(prefixes(layer))] if layer else []:
        if q in under:
            return all(fl[i] for i in under[q])
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
      classes: which layer classes to switch (default `NORM_LAYERS`).

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
    _check_module_paths(module, curriculum)
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


# -- ensembles of real models ----------------------------------------------------------
def _refuse_meta(module: nn.Module, args: Any) -> None:
    """Forward pre-hook of `stack_modules`' base: a tensor left on meta means the
    caller did not pass it to ``functional_call`` (meta ops return garbage, not errors)."""
    for kind, named in (
        ("buffer", module.named_buffers()),
        ("parameter", module.named_parameters()),
    ):
        missing = [n for n, t in named if t.is_meta]
        if missing:
            raise ValueError(
                f"the stacked base module still holds the {kind}s {missing[:4]}"
                f"{' ...' if len(missing) > 4 else ''} on the meta device: pass both stacked "
                "parts, functional_call(base, (params, buffers), args) (without the buffers, "
                "ops on meta tensors give garbage such as NaN parameters, not an error)"
            )


def stack_modules(
    models: Sequence[nn.Module],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], nn.Module]:
    """Stack same-architecture modules' parameters *and* buffers for an ensemble under vmap.

    ``torch.func.stack_module_state`` plus the checks and the base module a vmapped
    ``functional_call`` needs. The base is a copy of ``models[0]`` on the meta device
    (it holds no memory) that refuses to run with a parameter or buffer still on meta:
    the trap of calling ``functional_call(base, params, ...)`` without the buffers,
    which leaves e.g. BERT's ``position_ids`` on meta and gives silently NaN
    parameters, becomes a ``ValueError``.

    Args:
      models: E modules (a list, tuple or ``nn.ModuleList``) of one class with the same
        parameter and buffer names and shapes (e.g. E differently seeded copies).

    Returns:
      ``(params, buffers, base)``: dicts of tensors with a leading member dimension E
      (params detached: plain tensors for `torch.func.grad` and our optimizers;
      tied weights appear once, under their first name) and the meta-device base.

    Raises:
      TypeError: not a non-empty sequence of modules.
      ValueError: the members differ (class, names or shapes; the message names the
        member and the path).

    Example:
      >>> import torch, funcurriculum as fc
      >>> from torch.func import functional_call, vmap
      >>> members = [torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
      ...            for _ in range(4)]
      >>> params, buffers, base = fc.stack_modules(members)
      >>> params["0.weight"].shape, buffers["1.running_mean"].shape
      (torch.Size([4, 2, 3]), torch.Size([4, 2]))
      >>> out = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), (0, 0, None))(
      ...     params, buffers, torch.randn(5, 3))
      >>> out.shape
      torch.Size([4, 5, 2])
    """
    if isinstance(models, nn.ModuleList):
        models = list(models)
    if isinstance(models, nn.Module) or not isinstance(models, Sequence) or not models:
        raise TypeError("stack_modules needs a non-empty list of nn.Module members")
    for k, m in enumerate(models):
        if not isinstance(m, nn.Module):
            raise TypeError(f"stack_modules: member {k} is a {type(m).__name__}, not an nn.Module")
    ref = models[0]

    def shapes(m: nn.Module) -> dict[str, tuple]:
        out = {f"parameter {n}": tuple(p.shape) for n, p in m.named_parameters()}
        out.update({f"buffer {n}": tuple(b.shape) for n, b in m.named_buffers()})
        return out

    want = shapes(ref)
    for k, m in enumerate(models[1:], 1):
        if type(m) is not type(ref):
            raise ValueError(
                f"stack_modules: member {k} is a {type(m).__name__}, member 0 a "
                f"{type(ref).__name__}"
            )
        got = shapes(m)
        if list(got) != list(want):
            raise ValueError(
                f"stack_modules: member {k} has other parameters / buffers than member 0: "
                + describe_mismatch(list(want), list(got))
            )
        bad = [n for n in want if got[n] != want[n]]
        if bad:
            raise ValueError(
                f"stack_modules: member {k}'s {bad[0]} has shape {got[bad[0]]}, member 0's "
                f"{want[bad[0]]}"
            )
    params, buffers = torch.func.stack_module_state(list(models))
    params = {n: p.detach() for n, p in params.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "meta" on modules with custom _apply
        base = copy.deepcopy(ref).to("meta")
    base.register_forward_pre_hook(_refuse_meta)
    return params, buffers, base
