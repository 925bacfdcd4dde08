"""The masked per-leaf update driver shared by every optimizer.

An optimizer is a :class:`LeafRule` (its per-leaf math, plus an optional in-place
multi-tensor kernel) wrapped in :class:`Optimizer`, which owns everything else:
tree alignment and validation, masks (frozen leaves are never read or written),
per-leaf LR coefficients, per-leaf step counts, the lr schedule, purity and buffer
donation, and choosing between the fast fused path and the portable reference
path (used under ``torch.func`` transforms, where ``_foreach`` / fused kernels have
no batching rule, and on devices without fused kernels).

State layout (a plain dict, so ``torch.func.vmap`` and ``fc.save`` handle it)::

    {"step":  0-d int64 tensor (CPU)   completed updates (drives the lr schedule),
     "count": tree like params          each leaf's own completed updates (float32, 0-d),
     <field>: tree like params          one per moment buffer of the rule}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from ._tree import PyTree, align, flatten, spec_paths, unflatten
from .lr_schedules import Schedule, as_schedule

Tensor = torch.Tensor


class LeafRule(Protocol):
    """What an optimizer must describe: its state fields and its per-leaf math."""

    fields: tuple[str, ...]

    def init(self, p: Tensor) -> tuple[Tensor, ...]:
        """Fresh buffers for ``fields`` (zeros shaped like ``p``)."""

    def step(
        self, p: Tensor, g: Tensor, bufs: tuple[Tensor, ...], count: Tensor, lr: Any
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Pure per-leaf update. ``count`` already includes this update (1 on the first)."""

    def fused(
        self,
        ps: list[Tensor],
        gs: list[Tensor],
        bufs: list[list[Tensor]],
        counts: list[Tensor],
        lr: float | Tensor,
        first: bool,
    ) -> None:
        """In-place multi-tensor update of one group (counts already incremented).

        ``first`` is True when every leaf of the group takes its first update.
        """

    needs_first_flag: bool


def functorch_active() -> bool:
    """True inside a ``torch.func`` transform (vmap, grad, ...)."""
    return torch._C._functorch.peek_interpreter_stack() is not None


_FUSED_DEVICES = ("cpu", "cuda")


def _fusable(p: Tensor, g: Tensor) -> bool:
    return (
        type(p) is torch.Tensor
        and type(g) is torch.Tensor
        and p.device.type in _FUSED_DEVICES
        and p.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16)
        and not p.is_sparse
        and not g.is_sparse
    )


def _mask_value(m: Any, path: str) -> bool:
    if isinstance(m, bool):
        return m
    if isinstance(m, Tensor) and m.numel() == 1 and m.dtype == torch.bool:
        return bool(m)
    raise TypeError(f"mask at {path!r} must be a bool, got {type(m).__name__}: {m!r}")


def _coeff_value(c: Any, path: str) -> Any:
    if isinstance(c, Tensor):
        return c
    if isinstance(c, bool) or not isinstance(c, (int, float)):
        raise TypeError(
            f"coefficient at {path!r} must be a float or a 0-d tensor, got {type(c).__name__}"
        )
    if not math.isfinite(c) or c < 0:
        raise ValueError(f"coefficient at {path!r} must be finite and >= 0, got {c}")
    return float(c)


class Optimizer:
    """A functional optimizer: ``init``, pure ``update`` and ``transition``.

    Built by :func:`~funcurriculum.sgd`, :func:`~funcurriculum.adam`,
    :func:`~funcurriculum.adamw`; all share this driver.

    Args:
      rule: the per-leaf math (a :class:`LeafRule`).
      lr: a float or a schedule ``step -> lr`` of the completed-update count.
      name: a display name.
    """

    def __init__(self, rule: LeafRule, lr: float | Schedule, name: str = "optimizer"):
        self.rule = rule
        self.lr = lr
        self._schedule = as_schedule(lr)
        self._constant_lr = None if callable(lr) else float(lr)
        self.name = name

    def __repr__(self) -> str:
        return f"{self.name}(lr={self.lr!r}, {self.rule!r})"

    # -- init ----------------------------------------------------------------------
    def init(self, params: PyTree, masks: PyTree | None = None) -> dict[str, Any]:
        """Fresh optimizer state for ``params``.

        Args:
          params: pytree of tensors.
          masks: optional bool pytree (True = trainable); frozen leaves then hold
            zero-size moment buffers (memory proportional to trainable params), which
            :meth:`transition` materialises when they are unfrozen.

        Returns:
          The state dict (see the module docstring for its layout).

        Example:
          >>> import torch, funcurriculum as fc
          >>> opt = fc.adam(1e-3)
          >>> state = opt.init({"w": torch.zeros(3)})
          >>> sorted(state)
          ['count', 'exp_avg', 'exp_avg_sq', 'step']
        """
        leaves, spec = flatten(params)
        paths = spec_paths(spec)
        _check_tensors(leaves, paths, "params")
        active = [True] * len(leaves)
        if masks is not None:
            active = [_mask_value(m, p) for m, p in zip(align(masks, spec, paths, "masks"), paths)]
        counts = [torch.zeros((), dtype=torch.float32, device=p.device) for p in leaves]
        bufs: list[list[Tensor]] = [[] for _ in self.rule.fields]
        for p, a in zip(leaves, active):
            fresh = self.rule.init(p) if a else tuple(_empty(p) for _ in self.rule.fields)
            for k, b in enumerate(fresh):
                bufs[k].append(b)
        state: dict[str, Any] = {"step": torch.zeros((), dtype=torch.int64)}
        state["count"] = unflatten(spec, counts)
        for name, col in zip(self.rule.fields, bufs):
            state[name] = unflatten(spec, col)
        return state

    # -- transition ----------------------------------------------------------------
    def transition(
        self, state: dict[str, Any], params: PyTree, old_masks: PyTree, new_masks: PyTree
    ) -> dict[str, Any]:
        """Fresh state for leaves frozen in ``old_masks`` and trainable in ``new_masks``.

        Every other leaf's state is passed through untouched (same tensors); the
        global step (and so the lr schedule) goes on. The returned dict is new; the
        input is not modified.

        Args:
          state: the optimizer state.
          params: the params (for shapes, dtypes, devices of fresh buffers).
          old_masks: masks in force so far.
          new_masks: masks from now on.

        Returns:
          The new state.

        Example:
          >>> import torch, funcurriculum as fc
          >>> p = {"a": torch.zeros(2), "b": torch.zeros(2)}
          >>> opt = fc.adam(0.1)
          >>> old, new = {"a": True, "b": False}, {"a": True, "b": True}
          >>> s = opt.transition(opt.init(p, old), p, old, new)
          >>> s["exp_avg"]["b"].shape
          torch.Size([2])
        """
        leaves, spec = flatten(params)
        paths = spec_paths(spec)
        _check_tensors(leaves, paths, "params")
        old = [_mask_value(m, p) for m, p in zip(align(old_masks, spec, paths, "old_masks"), paths)]
        new = [_mask_value(m, p) for m, p in zip(align(new_masks, spec, paths, "new_masks"), paths)]
        self._check_state(state)
        counts = list(align(state["count"], spec, paths, "state['count']"))
        cols = [list(align(state[f], spec, paths, f"state[{f!r}]")) for f in self.rule.fields]
        for i, (p, o, n) in enumerate(zip(leaves, old, new)):
            if n and not o:
                counts[i] = torch.zeros_like(counts[i]) if isinstance(counts[i], Tensor) else 0
                for k, b in enumerate(self.rule.init(p)):
                    cols[k][i] = b
        out = dict(state)
        out["count"] = unflatten(spec, counts)
        for name, col in zip(self.rule.fields, cols):
            out[name] = unflatten(spec, col)
        return out

    # -- update ----------------------------------------------------------------------
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
        """One optimizer step; pure unless ``donate``.

        Frozen leaves (``masks`` False) are neither read nor written: their params and
        state come back as the very same tensors. A trainable leaf ``i`` moves with
        ``lr(step) * coeffs[i]`` (a coefficient of 0 leaves it in place while its state
        advances).

        Args:
          params: pytree of tensors.
          grads: same structure (``None`` allowed at frozen leaves), or the trainable
            part from :func:`~funcurriculum.partition` (frozen keys absent).
          state: from :meth:`init` / a previous update.
          masks: bool pytree, True = trainable; ``None`` = all trainable.
          coeffs: float (or 0-d tensor) pytree; ``None`` = all 1.0.
          donate: reuse the buffers of ``params`` and ``state`` (updated in place, no
            new allocations); the old objects must not be used afterwards. Ignored
            under ``torch.func`` transforms.

        Returns:
          ``(new_params, new_state)``.

        Example:
          >>> import torch, funcurriculum as fc
          >>> opt = fc.sgd(0.5)
          >>> p = {"w": torch.ones(2)}
          >>> new, _ = opt.update(p, {"w": torch.ones(2)}, opt.init(p))
          >>> new["w"], p["w"]
          (tensor([0.5000, 0.5000]), tensor([1., 1.]))
        """
        leaves, spec = flatten(params)
        paths = spec_paths(spec)
        n = len(leaves)
        grads_l = align(grads, spec, paths, "grads", allow_missing=True)
        masks_l = [True] * n if masks is None else align(masks, spec, paths, "masks")
        coeffs_l = [1.0] * n if coeffs is None else align(coeffs, spec, paths, "coeffs")
        self._check_state(state)
        counts = list(align(state["count"], spec, paths, "state['count']"))
        cols = [list(align(state[f], spec, paths, f"state[{f!r}]")) for f in self.rule.fields]

        transformed = functorch_active()
        active: list[int] = []
        for i in range(n):
            if not _mask_value(masks_l[i], paths[i]):
                continue
            self._check_leaf(paths[i], leaves[i], grads_l[i], [c[i] for c in cols], transformed)
            coeffs_l[i] = _coeff_value(coeffs_l[i], paths[i])
            active.append(i)

        step = state["step"]
        lr = self._lr_at(step, transformed)
        new_leaves = list(leaves)
        if transformed or not all(_fusable(leaves[i], grads_l[i]) for i in active):
            self._reference(active, new_leaves, grads_l, cols, counts, coeffs_l, lr, transformed)
            new_step = step + 1
        else:
            self._fused(active, new_leaves, grads_l, cols, counts, coeffs_l, lr, donate)
            if donate:
                with torch.no_grad():
                    new_step = step.add_(1)
            else:
                new_step = step + 1

        new_state = dict(state)
        new_state["step"] = new_step
        new_state["count"] = unflatten(spec, counts)
        for name, col in zip(self.rule.fields, cols):
            new_state[name] = unflatten(spec, col)
        return unflatten(spec, new_leaves), new_state

    # -- internals ---------------------------------------------------------------------
    def _check_state(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise TypeError(f"state must be the dict returned by init, got {type(state).__name__}")
        missing = [k for k in ("step", "count", *self.rule.fields) if k not in state]
        if missing:
            raise ValueError(f"state lacks {missing}: was it made by another optimizer? ({self!r})")

    def _check_leaf(self, path, p, g, bufs, transformed) -> None:
        if g is None:
            raise ValueError(f"grads hold no gradient for trainable leaf {path!r}")
        if not isinstance(g, Tensor):
            raise TypeError(f"grad at {path!r} is a {type(g).__name__}, expected a tensor")
        if not isinstance(p, Tensor):
            raise TypeError(f"params leaf {path!r} is a {type(p).__name__}, expected a tensor")
        if g.shape != p.shape:
            raise ValueError(
                f"grad at {path!r} has shape {tuple(g.shape)}, param has {tuple(p.shape)}"
            )
        if g.dtype != p.dtype:
            raise ValueError(f"grad at {path!r} has dtype {g.dtype}, param has {p.dtype}")
        if g.device != p.device:
            raise ValueError(f"grad at {path!r} is on {g.device}, param on {p.device}")
        for b in bufs:
            if b.shape != p.shape:
                if b.numel() == 0:
                    raise ValueError(
                        f"leaf {path!r} is trainable but has no optimizer state (it was frozen "
                        "at init): call opt.transition(state, params, old_masks, new_masks) "
                        "when the masks change"
                    )
                raise ValueError(
                    f"optimizer state at {path!r} has shape {tuple(b.shape)}, param has {tuple(p.shape)}"
                )

    def _lr_at(self, step: Tensor, transformed: bool) -> Any:
        if self._constant_lr is not None:
            return self._constant_lr
        if transformed:
            return self._schedule(step)
        lr = self._schedule(int(step))
        if isinstance(lr, Tensor) and lr.numel() == 1 and lr.device.type == "cpu":
            lr = lr.item()
        if isinstance(lr, (int, float)):
            lr = float(lr)
            if not math.isfinite(lr) or lr < 0:
                raise ValueError(
                    f"lr schedule returned {lr} at step {int(step)}: must be finite and >= 0"
                )
        return lr

    def _reference(self, active, leaves, grads, cols, counts, coeffs, lr, transformed) -> None:
        rule = self.rule
        with torch.no_grad():
            for i in active:
                count = counts[i] + 1
                p = leaves[i]
                new_p, new_bufs = rule.step(
                    p, grads[i], tuple(c[i] for c in cols), count, lr * coeffs[i]
                )
                leaves[i] = new_p if transformed else _keep_flag(new_p, p)
                counts[i] = count
                for c, b in zip(cols, new_bufs):
                    c[i] = b

    def _fused(self, active, leaves, grads, cols, counts, coeffs, lr, donate) -> None:
        rule = self.rule
        with torch.no_grad():
            if donate:
                for i in active:
                    counts[i].add_(1)
            else:
                for i in active:
                    counts[i] = counts[i] + 1
                    leaves[i] = _keep_flag(leaves[i].clone(), leaves[i])
                    for c in cols:
                        c[i] = c[i].clone()
            first_flags = _first_flags(rule, active, counts)
            groups: dict[Any, list[int]] = {}
            for i in active:
                lr_i = lr * coeffs[i]
                key = (
                    leaves[i].device,
                    leaves[i].dtype,
                    lr_i if isinstance(lr_i, float) else ("tensor", i),
                    first_flags.get(i, False),
                )
                groups.setdefault(key, []).append(i)
            for (device, _dtype, lr_key, first), idx in groups.items():
                lr_g = (
                    lr_key if isinstance(lr_key, float) else _tensor_lr(lr * coeffs[idx[0]], device)
                )
                rule.fused(
                    [leaves[i] for i in idx],
                    [grads[i] for i in idx],
                    [[c[i] for i in idx] for c in cols],
                    [counts[i] for i in idx],
                    lr_g,
                    first,
                )


def _first_flags(
    rule: LeafRule, active: Sequence[int], counts: Sequence[Tensor]
) -> dict[int, bool]:
    if not getattr(rule, "needs_first_flag", False) or not active:
        return {}
    values = torch.stack([counts[i].to("cpu", non_blocking=False) for i in active]).tolist()
    return {i: v == 1 for i, v in zip(active, values)}


def _tensor_lr(lr: Tensor, device: torch.device) -> Tensor:
    return lr.to(device=device, dtype=torch.float64 if device.type == "cpu" else torch.float32)


def _keep_flag(new: Tensor, old: Tensor) -> Tensor:
    if old.requires_grad and not new.requires_grad and new.is_leaf:
        new.requires_grad_(True)
    return new


def _empty(p: Tensor) -> Tensor:
    return torch.empty((0,), dtype=p.dtype, device=p.device)


def _check_tensors(leaves: Sequence[Any], paths: Sequence[str], what: str) -> None:
    for leaf, path in zip(leaves, paths):
        if not isinstance(leaf, Tensor):
            raise TypeError(
                f"{what} leaf {path!r} is a {type(leaf).__name__}, expected a torch.Tensor"
            )


RuleFactory = Callable[..., LeafRule]
