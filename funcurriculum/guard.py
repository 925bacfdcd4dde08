"""Non-finite guard: skip an update whose trainable gradients hold NaN or inf.

Like ``torch.amp.GradScaler``'s skipped steps: the params and the whole optimizer state
come back unchanged and a counter in the state records the skip. Only trainable leaves
are checked; a NaN in a frozen leaf's gradient (which the update never reads) does not
skip the step. The guard is a *gate* of [chain][funcurriculum.chain]
(`nonfinite_guard`); `skip_nonfinite` is ``chain(nonfinite_guard(), opt)``.
"""

from __future__ import annotations

from typing import Any

import torch

from ._tree import PyTree
from .clip import _counted

Tensor = torch.Tensor


def all_finite(grads: PyTree, masks: PyTree | None = None) -> Tensor:
    """Whether every trainable gradient is finite (no NaN, no inf).

    Args:
      grads: gradient pytree (``None`` leaves allowed) or a ``partition`` part.
      masks: bool pytree (True = trainable; bool tensors allowed, per member under
        ``vmap``); frozen leaves are not checked.

    Returns:
      A 0-d bool tensor (batched per member under ``vmap``); True when nothing counts.

    Example:
      >>> import torch, funcurriculum as fc
      >>> g = {"body": torch.tensor([float("nan")]), "head": torch.ones(1)}
      >>> bool(fc.all_finite(g)), bool(fc.all_finite(g, {"body": False, "head": True}))
      (False, True)
    """
    leaves, _, idx, dyn = _counted(grads, masks)
    # max |g| is finite exactly when every element is (amax propagates NaN); one
    # reduction per leaf is several times cheaper than isfinite(g).all() on CPU
    oks = [
        torch.isfinite(leaves[i].abs().amax())
        if leaves[i].numel()
        else torch.ones((), dtype=torch.bool, device=leaves[i].device)
        for i in idx
    ]
    flags = [ok if f is True else ok | ~f.to(ok.device) for ok, f in zip(oks, dyn)]
    if not flags:
        return torch.ones((), dtype=torch.bool)
    if len(flags) == 1:
        return flags[0]
    first = flags[0].device
    return torch.stack([f.to(first) for f in flags]).all()


class NonFiniteGuard:
    """Chain gate: skip the whole step when a trainable grad is NaN or inf.

    Built by `nonfinite_guard`. Its state is a 0-d int64 counter of skipped updates,
    stored in the chain's state under ``"skipped"`` (per member under ``vmap``).
    """

    state_key = "skipped"

    def __repr__(self) -> str:
        return "nonfinite_guard()"

    def init(self, params: PyTree, masks: PyTree | None = None) -> Tensor:
        """A zero counter (0-d int64)."""
        return torch.zeros((), dtype=torch.int64)

    def gate(
        self, grads: PyTree, state: Tensor, params: PyTree, masks: PyTree | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(ok, new_state)``: whether the step goes ahead, and the counter after it."""
        ok = all_finite(grads, masks)
        return ok, state + (~ok).to(device=state.device, dtype=state.dtype)

    def update(
        self, grads: PyTree, state: Tensor, params: PyTree, masks: PyTree | None = None
    ) -> tuple[PyTree, Tensor]:
        """The transform view (outside a chain): grads unchanged, the counter advanced."""
        return grads, self.gate(grads, state, params, masks)[1]


def nonfinite_guard() -> NonFiniteGuard:
    """A [chain][funcurriculum.chain] gate that skips steps with NaN / inf trainable grads.

    When a trainable grad that reaches the guard is not finite, the chain's update
    returns the params and the whole state unchanged (outside ``torch.func``
    transforms: the very same tensors; under ``vmap``: per member, by ``torch.where``)
    and adds 1 to ``state["skipped"]``. The global step does not advance, so the lr
    schedule does not move either. Placed first it checks the raw grads.

    Returns:
      The gate (a transform with ``init`` / ``update`` and a ``gate`` method).

    Example:
      >>> import torch, funcurriculum as fc
      >>> opt = fc.chain(fc.nonfinite_guard(), fc.clip_grad_norm(1.0), fc.sgd(0.1))
      >>> p = {"w": torch.ones(2)}
      >>> p2, s = opt.update(p, {"w": torch.tensor([1.0, float("inf")])}, opt.init(p))
      >>> p2 is p, int(s["skipped"]), int(s["step"])
      (True, 1, 0)
    """
    return NonFiniteGuard()


def skip_nonfinite(opt: Any) -> Any:
    """Make ``opt`` skip steps whose trainable grads hold NaN or inf.

    Exactly ``fc.chain(fc.nonfinite_guard(), opt)``: same ``init`` / ``update`` /
    ``transition``; the state gains ``"skipped"`` (a 0-d int64 count of skipped steps).

    Args:
      opt: an optimizer (``fc.adam(...)``, `with_clipping` ...).

    Returns:
      The chain.

    Example:
      >>> import torch, funcurriculum as fc
      >>> opt = fc.skip_nonfinite(fc.sgd(0.1))
      >>> p = {"w": torch.ones(2)}
      >>> s = opt.init(p)
      >>> p2, s = opt.update(p, {"w": torch.tensor([1.0, float("inf")])}, s)
      >>> p2 is p, int(s["skipped"]), int(s["step"])
      (True, 1, 0)
    """
    from .chain import chain

    return chain(NonFiniteGuard(), opt)


SkipNonFinite = skip_nonfinite
"""Former wrapper class name, kept as an alias of `skip_nonfinite`."""
