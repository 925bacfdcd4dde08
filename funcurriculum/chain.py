"""``chain``: gradient transforms in order, then an optimizer, as one optimizer.

A gradient transform is any object with

* ``init(params, masks=None) -> state``
* ``update(grads, state, params, masks=None) -> (grads, state)``: pure;
* optionally ``transition(state, params, old_masks, new_masks) -> state``;
* optionally ``state_key``: the name of its entry in the chain's state (``None``: the
  transform is stateless and has no entry; absent: ``"transform{i}"``, ``i`` its
  position in the chain);
* optionally ``gate(grads, state, params, masks=None) -> (ok, state)`` instead of
  ``update``: a *gate*. When ``ok`` (a 0-d bool tensor) is False the whole step is
  skipped: params and every other state entry come back unchanged, only the gate's own
  entry takes its new state (`nonfinite_guard` is one).

A transform sees trainable leaves only: the grads it receives have the params'
structure with ``None`` at every leaf whose mask is ``False`` (whatever the caller
passed there: a tensor, ``None``, or nothing as in a ``partition`` part). A leaf whose
mask is a bool *tensor* (dynamic masks, per member under ``vmap``) is passed with its
grad; a transform then honours the mask with ``torch.where`` (the shipped ones do).

State layout: one flat dict, the optimizer's own state dict plus one entry per stateful
transform under its ``state_key``::

    chain(fc.nonfinite_guard(), fc.clip_grad_norm(1.0), fc.adam(1e-3)).init(p)
    -> {"step", "count", "exp_avg", "exp_avg_sq", "skipped", "grad_norm"}

so ``state["step"]`` still reads the global step, ``fc.save`` / ``fc.load`` and
``torch.func.vmap`` see a plain pytree, and ``shard_optimizer`` shards the optimizer's
part while the transforms' entries stay replicated. Nested chains are flattened:
``chain(a, chain(b, opt))`` is ``chain(a, b, opt)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch

from ._masks import mask_flags
from ._tree import PyTree, align, flatten, spec_paths, unflatten
from ._validate import compiling, functorch_active

Tensor = torch.Tensor


class GradientTransform(Protocol):
    """What [chain][funcurriculum.chain] needs of a gradient transform (see the module doc)."""

    def init(self, params: PyTree, masks: PyTree | None = None) -> Any:
        """Fresh state for ``params``."""

    def update(
        self, grads: PyTree, state: Any, params: PyTree, masks: PyTree | None = None
    ) -> tuple[PyTree, Any]:
        """Pure: the transformed grads and the new state."""


def _has(obj: Any, name: str) -> bool:
    return callable(getattr(obj, name, None))


def _is_optimizer(obj: Any) -> bool:
    """An optimizer of ours (a rule-based one, a chain, a multi or sharded optimizer)."""
    return (
        isinstance(obj, Chain)
        or getattr(obj, "is_optimizer", False)
        or (hasattr(obj, "rule") and _has(obj, "transition"))
    )


class Chain:
    """An optimizer made of gradient transforms followed by an optimizer.

    Built by [chain][funcurriculum.chain]; same ``init`` / ``update`` / ``transition``
    interface as any optimizer.

    Attributes:
      transforms: the gradient transforms, in order (nested chains flattened).
      opt: the final optimizer.
      keys: each transform's entry in the state (``None`` when it keeps none).

    Example:
      >>> import funcurriculum as fc
      >>> opt = fc.skip_nonfinite(fc.with_clipping(fc.adam(1e-3), 1.0))
      >>> opt.keys, opt.opt.name
      (('skipped', 'grad_norm'), 'adam')
    """

    is_optimizer = True

    def __init__(self, transforms: Sequence[Any], opt: Any):
        flat = list(transforms)
        while isinstance(opt, Chain):
            flat.extend(opt.transforms)
            opt = opt.opt
        for name in ("init", "update", "transition"):
            if not _has(opt, name):
                raise TypeError(
                    f"chain: the last argument must be an optimizer (init / update / "
                    f"transition), got {opt!r} without {name!r}"
                )
        keys: list[str | None] = []
        for i, t in enumerate(flat):
            if _is_optimizer(t):
                raise TypeError(
                    f"chain: argument {i} ({t!r}) is an optimizer; only the last argument "
                    "is the optimizer, the others are gradient transforms"
                )
            if not _has(t, "init") or not (_has(t, "update") or _has(t, "gate")):
                raise TypeError(
                    f"chain: transform {i} ({t!r}) needs init(params, masks) and "
                    "update(grads, state, params, masks)"
                )
            key = getattr(t, "state_key", f"transform{i}")
            if key is not None and not isinstance(key, str):
                raise TypeError(f"chain: transform {i} has state_key {key!r}, expected a str")
            if key is not None and key in keys:
                raise ValueError(
                    f"chain: transforms {keys.index(key)} and {i} both keep their state "
                    f"under {key!r}; give one another state_key"
                )
            keys.append(key)
        self.transforms = tuple(flat)
        self.opt = opt
        self.keys = tuple(keys)
        self._gated = any(_has(t, "gate") for t in flat)

    def __repr__(self) -> str:
        parts = [repr(t) for t in self.transforms] + [repr(self.opt)]
        return f"chain({', '.join(parts)})"

    # -- state ---------------------------------------------------------------------
    def _split(self, state: Any) -> tuple[dict[str, Any], list[Any]]:
        if not isinstance(state, dict):
            raise TypeError(f"state must be the dict returned by init, got {type(state).__name__}")
        missing = [k for k in self.keys if k is not None and k not in state]
        if missing:
            raise ValueError(
                f"state lacks {missing[0]!r}"
                + (f" (and {missing[1:]})" if len(missing) > 1 else "")
                + f": was it made by this chain's init? ({self!r})"
            )
        own = {k for k in self.keys if k is not None}
        inner = {k: v for k, v in state.items() if k not in own}
        return inner, [None if k is None else state[k] for k in self.keys]

    def _join(self, inner: Any, tstates: Sequence[Any]) -> dict[str, Any]:
        out = dict(inner)
        for k, s in zip(self.keys, tstates):
            if k is not None:
                out[k] = s
        return out

    # -- init ----------------------------------------------------------------------
    def init(self, params: PyTree, masks: PyTree | None = None) -> dict[str, Any]:
        """The optimizer's state plus one entry per stateful transform.

        Args:
          params: pytree of tensors.
          masks: optional bool pytree (True = trainable), passed to every part.

        Returns:
          The state dict (see the module docstring for its layout).

        Example:
          >>> import torch, funcurriculum as fc
          >>> opt = fc.chain(fc.clip_grad_norm(1.0), fc.adam(1e-3))
          >>> sorted(opt.init({"w": torch.zeros(3)}))
          ['count', 'exp_avg', 'exp_avg_sq', 'grad_norm', 'step']
        """
        inner = self.opt.init(params, masks)
        if not isinstance(inner, dict):
            raise TypeError(
                f"chain: the optimizer's state must be a dict (every funcurriculum "
                f"optimizer's is), got {type(inner).__name__} from {self.opt!r}"
            )
        for k in self.keys:
            if k is not None and k in inner:
                raise ValueError(f"the wrapped optimizer's state already has a {k!r} entry")
        return self._join(inner, [t.init(params, masks) for t in self.transforms])

    # -- update --------------------------------------------------------------------
    def update(
        self,
        params: PyTree,
        grads: PyTree,
        state: dict[str, Any],
        masks: PyTree | None = None,
        coeffs: PyTree | None = None,
        *,
        donate: bool = False,
        engine: str | None = None,
    ) -> tuple[PyTree, dict[str, Any]]:
        """Transform the trainable grads in order, then update with the optimizer.

        Args:
          params: pytree of tensors.
          grads: same structure (``None`` allowed at frozen leaves) or a ``partition``
            part.
          state: from `init` / a previous update.
          masks: bool pytree, True = trainable; ``None`` = all trainable.
          coeffs: per-leaf LR coefficients, passed to the optimizer.
          donate: passed to the optimizer (its buffers are reused); with a gate under
            ``torch.func`` transforms or ``torch.compile`` the step is pure.
          engine: passed to the optimizer when given (see `funcurriculum.Optimizer`);
            ``None``: its own choice.

        Returns:
          ``(new_params, new_state)``. A gate that fails returns ``params`` itself and
          the state with only the gate's entry changed.

        Example:
          >>> import torch, funcurriculum as fc
          >>> opt = fc.chain(fc.clip_grad_value(0.1), fc.sgd(1.0))
          >>> p = {"w": torch.zeros(2)}
          >>> opt.update(p, {"w": torch.tensor([3.0, 0.05])}, opt.init(p))[0]["w"]
          tensor([-0.1000, -0.0500])
        """
        inner, tstates = self._split(state)
        kw = {} if engine is None else {"engine": engine}
        g = self._visible(params, grads, masks)
        traced = functorch_active() or compiling()
        new_t = list(tstates)
        ok_all: Tensor | None = None
        for k, t in enumerate(self.transforms):
            if _has(t, "gate"):
                ok, s = t.gate(g, tstates[k], params, masks)
                if not traced:
                    new_t[k] = s
                    if not bool(ok):  # skip: nothing else changes
                        return params, self._join(inner, [*tstates[:k], s, *tstates[k + 1 :]])
                    continue
                new_t[k] = s if ok_all is None else _select(ok_all, s, tstates[k])
                ok_all = ok if ok_all is None else ok_all & ok
            else:
                g, new_t[k] = t.update(g, tstates[k], params, masks)
        if ok_all is None:
            new_params, new_inner = self.opt.update(
                params, g, inner, masks, coeffs, donate=donate, **kw
            )
            return new_params, self._join(new_inner, new_t)
        # traced with gates: compute the step, then keep it only where every gate passed
        new_params, new_inner = self.opt.update(params, g, inner, masks, coeffs, **kw)
        gates = {k for k, t in enumerate(self.transforms) if _has(t, "gate")}
        kept = [s if k in gates else _select(ok_all, s, tstates[k]) for k, s in enumerate(new_t)]
        return _select(ok_all, new_params, params), self._join(
            _select(ok_all, new_inner, inner), kept
        )

    def _visible(self, params: PyTree, grads: PyTree, masks: PyTree | None) -> PyTree:
        """``grads`` with the params' structure and ``None`` at statically frozen leaves."""
        _, spec = flatten(params)
        paths = spec_paths(spec)
        gs = align(grads, spec, paths, "grads", allow_missing=True)
        if masks is None:
            return unflatten(spec, gs)
        flags = mask_flags(masks, spec, paths, "masks")
        return unflatten(spec, [None if f is False else x for x, f in zip(gs, flags)])

    # -- transition ----------------------------------------------------------------
    def transition(
        self, state: dict[str, Any], params: PyTree, old_masks: PyTree, new_masks: PyTree
    ) -> dict[str, Any]:
        """The optimizer's transition, then each transform's that has one (others keep
        their state).

        Args:
          state: the chain's state.
          params: the params.
          old_masks: masks in force so far.
          new_masks: masks from now on.

        Returns:
          The new state (the input is not modified).
        """
        inner, tstates = self._split(state)
        new_inner = self.opt.transition(inner, params, old_masks, new_masks)
        new_t = [
            t.transition(s, params, old_masks, new_masks) if _has(t, "transition") else s
            for t, s in zip(self.transforms, tstates)
        ]
        return self._join(new_inner, new_t)


def _select(ok: Tensor, new: Any, old: Any) -> Any:
    """``torch.where(ok, new, old)`` leaf by leaf over two trees of one structure."""
    new_leaves, spec = flatten(new)
    old_leaves, old_spec = flatten(old)
    if spec != old_spec:
        raise ValueError("chain: an update returned a state of a different structure")
    out = []
    for n, o in zip(new_leaves, old_leaves):
        if n is o or not isinstance(n, Tensor):
            out.append(n)
        else:
            out.append(torch.where(ok.to(n.device), n, o))
    return unflatten(spec, out)


def chain(*transforms_and_opt: Any) -> Chain:
    """Gradient transforms applied in order, then an optimizer: one optimizer.

    ``fc.chain(t1, t2, opt)``: each ``update`` passes the trainable grads through
    ``t1``, then ``t2``, then ``opt.update``. A transform has ``init(params, masks)``
    and a pure ``update(grads, state, params, masks) -> (grads, state)``, optionally
    ``transition``, a ``state_key`` naming its state entry, or a ``gate`` (see the
    "Composing optimizers" page); it sees trainable leaves only (``None`` at leaves
    whose mask is False). The state is one flat dict: ``opt``'s state plus an entry per
    stateful transform (e.g. ``"grad_norm"``, ``"skipped"``), so it checkpoints, vmaps
    and shards like any optimizer state. Masks, coefficients, ``donate`` and
    ``transition`` go through.

    Args:
      *transforms_and_opt: zero or more gradient transforms, then the optimizer (last).

    Returns:
      A [Chain][funcurriculum.Chain].

    Example:
      >>> import torch, funcurriculum as fc
      >>> opt = fc.chain(fc.nonfinite_guard(), fc.clip_grad_norm(1.0), fc.adam(0.1))
      >>> p = {"w": torch.zeros(2)}
      >>> p, s = opt.update(p, {"w": torch.tensor([3.0, 4.0])}, opt.init(p))
      >>> s["grad_norm"], int(s["skipped"]), int(s["step"])
      (tensor(5.), 0, 1)
    """
    if not transforms_and_opt:
        raise TypeError("chain needs at least an optimizer: chain(*transforms, opt)")
    *transforms, opt = transforms_and_opt
    return Chain(transforms, opt)
