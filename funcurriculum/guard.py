"""Non-finite guard: skip an update whose trainable gradients hold NaN or inf.

Like ``torch.amp.GradScaler``'s skipped steps: the params and the optimizer state come
back unchanged and a counter in the state records the skip. Only trainable leaves are
checked; a NaN in a frozen leaf's gradient (which the update never reads) does not
skip the step.
"""

from __future__ import annotations

from typing import Any

import torch

from ._tree import PyTree, flatten
from .clip import _counted
from .driver import functorch_active

Tensor = torch.Tensor


def all_finite(grads: PyTree, masks: PyTree | None = None) -> Tensor:
    """Whether every trainable gradient is finite (no NaN, no inf).

    Args:
      grads: gradient pytree (``None`` leaves allowed) or a ``partition`` part.
      masks: bool pytree (True = trainable); frozen leaves are not checked.

    Returns:
      A 0-d bool tensor (batched per member under ``vmap``); True when nothing counts.

    Example:
      >>> import torch, funcurriculum as fc
      >>> g = {"body": torch.tensor([float("nan")]), "head": torch.ones(1)}
      >>> bool(fc.all_finite(g)), bool(fc.all_finite(g, {"body": False, "head": True}))
      (False, True)
    """
    leaves, _, idx = _counted(grads, masks)
    flags = [torch.isfinite(leaves[i]).all() for i in idx]
    if not flags:
        return torch.ones((), dtype=torch.bool)
    if len(flags) == 1:
        return flags[0]
    first = flags[0].device
    return torch.stack([f.to(first) for f in flags]).all()


class SkipNonFinite:
    """An optimizer that skips updates with non-finite trainable grads.

    Built by :func:`skip_nonfinite`; same ``init`` / ``update`` / ``transition``
    interface as the wrapped optimizer. The state gains ``"skipped"``, a 0-d int64
    tensor counting skipped updates (per member under ``vmap``).

    Args:
      opt: the wrapped optimizer.

    Example:
      >>> import torch, funcurriculum as fc
      >>> opt = fc.SkipNonFinite(fc.adam(0.1))
      >>> sorted(opt.init({"w": torch.zeros(2)}))
      ['count', 'exp_avg', 'exp_avg_sq', 'skipped', 'step']
    """

    def __init__(self, opt: Any):
        self.inner = opt

    def __repr__(self) -> str:
        return f"skip_nonfinite({self.inner!r})"

    def __getattr__(self, name: str) -> Any:  # lr, rule, name... of the wrapped optimizer
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    @staticmethod
    def _split(state: Any) -> tuple[dict[str, Any], Tensor]:
        if not isinstance(state, dict) or "skipped" not in state:
            raise ValueError("state lacks 'skipped': was it made by skip_nonfinite(opt).init?")
        return {k: v for k, v in state.items() if k != "skipped"}, state["skipped"]

    def init(self, params: PyTree, masks: PyTree | None = None) -> dict[str, Any]:
        """The wrapped optimizer's state plus ``"skipped": 0``."""
        state = dict(self.inner.init(params, masks))
        if "skipped" in state:
            raise ValueError("the wrapped optimizer's state already has a 'skipped' entry")
        state["skipped"] = torch.zeros((), dtype=torch.int64)
        return state

    def update(
        self,
        params: PyTree,
        grads: PyTree,
        state: dict[str, Any],
        masks: PyTree | None = None,
        coeffs: PyTree | None = None,
        *,
        donate: bool = False,
    ) -> tuple[PyTree, dict[str, Any]]:
        """The wrapped update, or (non-finite trainable grads) no change and ``skipped + 1``.

        Outside ``torch.func`` transforms a skipped step returns the very same params
        and state tensors (only ``"skipped"`` is new). Under ``vmap`` each member is
        selected with ``torch.where``: members with finite grads update, the others
        keep bit-identical params and state.
        """
        inner, skipped = self._split(state)
        ok = all_finite(grads, masks)
        if not functorch_active():
            if not bool(ok):
                out = dict(state)
                out["skipped"] = skipped + 1
                return params, out
            new_params, new_inner = self.inner.update(
                params, grads, inner, masks, coeffs, donate=donate
            )
            out = dict(new_inner)
            out["skipped"] = skipped
            return new_params, out
        # Under a transform: compute the update and select per member, no Python branching.
        new_params, new_inner = self.inner.update(params, grads, inner, masks, coeffs)
        out = dict(_select(ok, new_inner, inner))
        out["skipped"] = skipped + (~ok).to(skipped.dtype)
        return _select(ok, new_params, params), out

    def transition(
        self, state: dict[str, Any], params: PyTree, old_masks: PyTree, new_masks: PyTree
    ) -> dict[str, Any]:
        """The wrapped transition; ``"skipped"`` carries over."""
        inner, skipped = self._split(state)
        out = dict(self.inner.transition(inner, params, old_masks, new_masks))
        out["skipped"] = skipped
        return out


def _select(ok: Tensor, new: PyTree, old: PyTree) -> PyTree:
    new_leaves, spec = flatten(new)
    old_leaves, old_spec = flatten(old)
    if spec != old_spec:  # the wrapped optimizer changed its state's structure
        raise ValueError("skip_nonfinite: the wrapped update returned a different structure")
    out = []
    for n, o in zip(new_leaves, old_leaves):
        if n is o or not isinstance(n, Tensor):
            out.append(n)
        else:
            out.append(torch.where(ok.to(n.device), n, o))
    return spec.unflatten(out)


def skip_nonfinite(opt: Any) -> SkipNonFinite:
    """Wrap an optimizer so that steps with NaN / inf trainable grads are skipped.

    Args:
      opt: an optimizer (``fc.adam(...)``, :func:`~funcurriculum.with_clipping`...).

    Returns:
      A :class:`SkipNonFinite` with the same ``init`` / ``update`` / ``transition``.

    Example:
      >>> import torch, funcurriculum as fc
      >>> opt = fc.skip_nonfinite(fc.sgd(0.1))
      >>> p = {"w": torch.ones(2)}
      >>> s = opt.init(p)
      >>> p2, s = opt.update(p, {"w": torch.tensor([1.0, float("inf")])}, s)
      >>> p2 is p, int(s["skipped"]), int(s["step"])
      (True, 1, 0)
    """
    return SkipNonFinite(opt)
