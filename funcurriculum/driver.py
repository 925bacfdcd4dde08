"""The masked per-leaf update driver shared by every optimizer.

An optimizer is a :class:`LeafRule` (its per-leaf math, plus an optional in-place
multi-tensor kernel) wrapped in :class:`Optimizer`, which owns everything else:
tree alignment and validation, masks (frozen leaves are never read or written),
per-leaf LR coefficients, per-leaf step counts, the lr schedule, purity and buffer
donation, and choosing how each trainable leaf is updated:

* multi (CUDA with Triton): the rule's one-launch kernel, which takes a learning rate
  and a step count per leaf and writes to separate outputs, serves pure and donate alike
  (see :func:`_multi_kernel`);
* donate: torch's in-place fused kernels on the caller's buffers;
* pure (default): fresh buffers, then the same kernels on them (on CPU in cache-sized
  waves, see :func:`_pure_waves`; elsewhere copy, then kernel);
* reference: the rule's pure per-leaf math, under ``torch.func`` transforms (``_foreach``
  / fused kernels have no batching rule), while ``torch.compile`` traces, for leaves the
  kernels cannot take (layout, dtype, device, subclasses), or inside
  :func:`force_reference`.

See docs/performance.md for the measurements behind these choices.

State layout (a plain dict, so ``torch.func.vmap`` and ``fc.save`` handle it)::

    {"step":  0-d int64 tensor (CPU)   completed updates (drives the lr schedule),
     "count": tree like params          each leaf's own completed updates (float32, 0-d),
     <field>: tree like params          one per moment buffer of the rule}
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator, Sequence
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

    # Optional: ``multi(ps, gs, bufs, out_ps, out_bufs, counts, lrs)``, one launch for
    # leaves of one device and dtype with a per-leaf lr / count tensor, writing to
    # ``out_*`` (which may be the inputs). The driver uses it where Triton runs (CUDA).


def functorch_active() -> bool:
    """True inside a ``torch.func`` transform (vmap, grad, ...)."""
    return torch._C._functorch.peek_interpreter_stack() is not None


_FUSED_DEVICES = ("cpu", "cuda")


def _has_dtensor(leaves: Sequence[Any]) -> bool:
    # No DTensor can exist before torch.distributed.tensor is imported: skip the scan.
    mod = sys.modules.get("torch.distributed.tensor")
    return mod is not None and any(isinstance(x, mod.DTensor) for x in leaves)


def _fusable(p: Tensor, g: Tensor) -> bool:
    return (
        type(p) in _PLAIN
        and type(g) in _PLAIN
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

    Example:
      >>> import torch, funcurriculum as fc
      >>> opt = fc.Optimizer(fc.optimizers.SGDRule(), lr=0.5, name="sgd")
      >>> p = {"w": torch.ones(2)}
      >>> opt.update(p, {"w": torch.ones(2)}, opt.init(p))[0]["w"]
      tensor([0.5000, 0.5000])
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
        counts = _zero_counts([p.device for p in leaves])
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
        if _has_dtensor(leaves):  # shard-local update, see funcurriculum.distributed.dtensor
            from .distributed.dtensor import update_local

            return update_local(self, params, grads, state, masks, coeffs, donate)
        paths = spec_paths(spec)
        n = len(leaves)
        grads_l = align(grads, spec, paths, "grads", allow_missing=True)
        masks_l = None if masks is None else align(masks, spec, paths, "masks")
        coeffs_l = None if coeffs is None else align(coeffs, spec, paths, "coeffs")
        self._check_state(state)
        counts = list(align(state["count"], spec, paths, "state['count']"))
        cols = [list(align(state[f], spec, paths, f"state[{f!r}]")) for f in self.rule.fields]

        transformed = functorch_active()
        traced = transformed or _compiling()
        active: list[int] = []
        cvals: list[Any] = []
        slow: list[int] = []  # trainable leaves the fused kernels cannot take
        fast_ok = not traced and not _FORCE_REFERENCE
        rule_ok = getattr(self.rule, "fusable", None)  # optional per-leaf veto of the kernels
        for i in range(n):
            m = True if masks_l is None else masks_l[i]
            if m is not True and not _mask_value(m, paths[i]):
                continue
            p, g = leaves[i], grads_l[i]
            if not _plain_leaf(p, g, cols, i):
                self._check_leaf(paths[i], p, g, [c[i] for c in cols], transformed)
                if fast_ok and not (_fusable(p, g) and _same_layout(p, g, cols, i)):
                    slow.append(i)
            elif rule_ok is not None and fast_ok and not rule_ok(p):
                slow.append(i)
            c = 1.0 if coeffs_l is None else coeffs_l[i]
            if type(c) is not float or not 0.0 <= c < math.inf:
                c = _coeff_value(c, paths[i])
            if not isinstance(counts[i], Tensor):
                counts[i] = torch.tensor(float(counts[i]), dtype=torch.float32, device=p.device)
            active.append(i)
            cvals.append(c)

        step = state["step"]
        lr = self._lr_at(step, traced)
        new_leaves = list(leaves)
        if not fast_ok:
            self._reference(active, cvals, new_leaves, grads_l, cols, counts, lr, transformed)
            new_step = step + 1
        else:
            if slow:
                slow_set = set(slow)
                fast = [(i, c) for i, c in zip(active, cvals) if i not in slow_set]
                slow_c = [c for i, c in zip(active, cvals) if i in slow_set]
                self._reference(slow, slow_c, new_leaves, grads_l, cols, counts, lr, False)
                active, cvals = [i for i, _ in fast], [c for _, c in fast]
            self._fast(active, cvals, new_leaves, grads_l, cols, counts, lr, donate)
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

    def _reference(self, active, cvals, leaves, grads, cols, counts, lr, transformed) -> None:
        rule = self.rule
        with torch.no_grad():
            for i, c in zip(active, cvals):
                count = counts[i] + 1
                p = leaves[i]
                new_p, new_bufs = rule.step(p, grads[i], tuple(b[i] for b in cols), count, lr * c)
                leaves[i] = new_p if transformed else _keep_flag(new_p, p)
                counts[i] = count
                for b, nb in zip(cols, new_bufs):
                    b[i] = nb

    def _fast(self, active, cvals, leaves, grads, cols, counts, lr, donate) -> None:
        """Multi-tensor kernels: in place on the inputs (donate) or into fresh buffers."""
        if not active:
            return
        rule = self.rule
        with torch.no_grad():
            _increment(counts, active, inplace=donate)
            lr_of = {i: lr * c for i, c in zip(active, cvals)}
            active = _multi_kernel(rule, active, lr_of, leaves, grads, cols, counts, donate)
            if not active:
                return
            first = _first_flags(rule, active, counts)
            if not donate:
                on_cpu = [i for i in active if leaves[i].is_cpu] if _WAVES else []
                if on_cpu:
                    _pure_waves(rule, on_cpu, lr_of, first, leaves, grads, cols, counts)
                    if len(on_cpu) == len(active):
                        return
                    done = set(on_cpu)
                    active = [i for i in active if i not in done]
                for i in active:  # other devices: fresh copies, then the in-place kernel
                    leaves[i] = _keep_flag(leaves[i].clone(), leaves[i])
                    for b in cols:
                        b[i] = b[i].clone()
            _fused_calls(rule, active, lr_of, first, counts, leaves, grads, cols)


# -- fast-path helpers ------------------------------------------------------------------

_MULTI = True
"""Use the rules' one-launch kernels where they run (False: torch's fused kernels only)."""

_MULTI_ON_CPU = False
"""Route CPU leaves to the rule's one-launch kernel too (tests, with Triton's interpreter)."""


def _multi_kernel(rule, idx, lr_of, leaves, grads, cols, counts, donate) -> list[int]:
    """Update leaves with the rule's one-launch multi-tensor kernel where it can run.

    The kernel (``rule.multi``, Triton on CUDA, see ``funcurriculum/_triton_kernels.py``)
    takes a learning rate and a step count per leaf and writes to separate output
    buffers, so one launch per (device, dtype) serves every coefficient, pure or donated.
    Returns the leaves it did not take (no kernel, no Triton, another device or layout).
    """
    multi = getattr(rule, "multi", None)
    if not _MULTI or multi is None:
        return idx
    if not (_MULTI_ON_CPU or any(leaves[i].is_cuda for i in idx)):
        return idx
    from . import _triton_kernels as tk

    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    rest: list[int] = []
    ok_dev: dict[torch.device, bool] = {}
    for i in idx:
        p = leaves[i]
        dev = p.device
        if dev not in ok_dev:
            ok_dev[dev] = (dev.type == "cuda" or (_MULTI_ON_CPU and dev.type == "cpu")) and (
                tk.available(dev)
            )
        if (
            ok_dev[dev]
            and p.dtype in tk._DTYPES
            and p.is_contiguous()
            and grads[i].is_contiguous()
            and all(b[i].is_contiguous() for b in cols)
        ):
            groups.setdefault((dev, p.dtype), []).append(i)
        else:
            rest.append(i)
    for (dev, _dtype), g in groups.items():
        ps = [leaves[i] for i in g]
        bufs = [[b[i] for i in g] for b in cols]
        if donate:
            out_ps, out_bufs = ps, bufs
        else:
            out_ps = [torch.empty_like(p) for p in ps]
            out_bufs = [[torch.empty_like(t) for t in col] for col in bufs]
        # float64 rates: the kernel then sees a Python-float lr exactly, as torch's does.
        # Host values go over with non_blocking (a blocking copy would wait for the stream).
        lrs = [lr_of[i] for i in g]
        if any(isinstance(x, Tensor) for x in lrs):
            lr_t = torch.stack(
                [torch.as_tensor(x, dtype=torch.float64).to(dev, non_blocking=True) for x in lrs]
            )
        else:
            lr_t = torch.tensor(lrs, dtype=torch.float64).to(dev, non_blocking=True)
        count_t = torch.stack([counts[i].to(dev, torch.float32) for i in g])
        multi(ps, [grads[i] for i in g], bufs, out_ps, out_bufs, count_t, lr_t)
        for k, i in enumerate(g):
            leaves[i] = out_ps[k] if donate else _keep_flag(out_ps[k], ps[k])
            for b, col in zip(cols, out_bufs):
                b[i] = col[k]
    return rest


_FORCE_REFERENCE = False
"""When True every update takes the portable reference path (see :func:`force_reference`)."""

_WAVES = True
"""Pure CPU updates clone and update wave by wave (cache-sized) instead of clone all, then update."""

WAVE_ELEMS = 1 << 20
"""Elements per wave of the pure CPU engine (each wave's working set stays in cache)."""


@contextlib.contextmanager
def force_reference(enabled: bool = True) -> Iterator[None]:
    """Run every ``update`` on the portable per-leaf reference path (tests, debugging).

    Example:
      >>> import torch, funcurriculum as fc
      >>> from funcurriculum.driver import force_reference
      >>> opt, p = fc.sgd(0.5), {"w": torch.ones(2)}
      >>> with force_reference():
      ...     new, _ = opt.update(p, {"w": torch.ones(2)}, opt.init(p))
      >>> new["w"]
      tensor([0.5000, 0.5000])
    """
    global _FORCE_REFERENCE
    old, _FORCE_REFERENCE = _FORCE_REFERENCE, enabled
    try:
        yield
    finally:
        _FORCE_REFERENCE = old


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return compiler is not None and compiler.is_compiling()


_PLAIN = (torch.Tensor, torch.nn.Parameter)
_FAST_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _plain_leaf(p: Any, g: Any, cols: list[list[Any]], i: int) -> bool:
    """Cheap check that a trainable leaf is valid and fusable (else the slow checks run)."""
    if type(p) not in _PLAIN or type(g) not in _PLAIN:
        return False
    if (
        g.shape != p.shape
        or g.dtype != p.dtype
        or p.dtype not in _FAST_DTYPES
        or p.layout != torch.strided
        or g.layout != torch.strided
        or not (p.is_cpu and g.is_cpu or p.is_cuda and g.is_cuda and g.device == p.device)
        or not p.is_contiguous()
        or not g.is_contiguous()
    ):
        return False
    return all(c[i].shape == p.shape and c[i].is_contiguous() for c in cols)


def _same_layout(p: Tensor, g: Tensor, cols: list[list[Any]], i: int) -> bool:
    """The fused kernels walk raw memory: every operand needs the same dense layout."""
    st = p.stride()
    expect = 1
    for size, stride in sorted(zip(p.shape, st), key=lambda t: t[1]):
        if size != 1 and stride != expect:
            return False
        expect *= size
    return g.stride() == st and all(c[i].stride() == st for c in cols)


def _zero_counts(devices: Sequence[torch.device]) -> list[Tensor]:
    """Per-leaf float32 0-d zero counts: views of one tensor per device, so that
    :func:`_increment` can add 1 to many of them with one call."""
    out: list[Any] = [None] * len(devices)
    by_dev: dict[torch.device, list[int]] = {}
    for i, d in enumerate(devices):
        by_dev.setdefault(d, []).append(i)
    for d, idx in by_dev.items():
        for i, t in zip(idx, torch.zeros(len(idx), dtype=torch.float32, device=d).unbind()):
            out[i] = t
    return out


def _add_one_(ts: list[Tensor]) -> None:
    """``t += 1`` for every 0-d tensor of ``ts`` (one device), in place.

    Counts from :meth:`Optimizer.init` or a pure update are views of one 1-D tensor: then
    one ``add_`` (all of them) or ``index_add_`` (a subset) does it; else ``_foreach_add_``
    (about 1.5 us per tensor on CPU, more for views).
    """
    base = ts[0]._base
    if base is not None and base.dim() == 1 and base.stride(0) == 1:
        start = base.storage_offset()
        offs = [t.storage_offset() - start for t in ts if t._base is base and t.dtype == base.dtype]
        if len(offs) == len(ts) and len(set(offs)) == len(offs):
            if len(offs) == base.numel():
                base.add_(1)
            else:
                # non_blocking: a blocking host-to-device copy would wait for the stream
                index = torch.tensor(offs, dtype=torch.int64).to(base.device, non_blocking=True)
                base.index_add_(
                    0, index, torch.ones(len(offs), dtype=base.dtype, device=base.device)
                )
            return
    torch._foreach_add_(ts, 1.0)


def _increment(counts: list[Tensor], active: list[int], inplace: bool) -> None:
    """Add 1 to the counts of ``active`` leaves with a few batched calls per device."""
    by_dev: dict[torch.device, list[int]] = {}
    for i in active:
        by_dev.setdefault(counts[i].device, []).append(i)
    for idx in by_dev.values():
        ts = [counts[i] for i in idx]
        if inplace:
            _add_one_(ts)
        elif all(t.dtype == ts[0].dtype and t.dim() == 0 for t in ts):
            # one stack + add: the new counts are views of one small tensor
            for i, t in zip(idx, (torch.stack(ts) + 1).unbind()):
                counts[i] = t
        else:
            for i, t in zip(idx, torch._foreach_add(ts, 1.0)):
                counts[i] = t


def _lr_key(lr_i: Any, i: int) -> Any:
    return ("tensor", i) if isinstance(lr_i, Tensor) else lr_i


def _lr_arg(lr_key: Any, lr_of: dict[int, Any], device: torch.device) -> float | Tensor:
    if isinstance(lr_key, tuple):
        return _tensor_lr(lr_of[lr_key[1]], device)
    return float(lr_key)


def _fused_calls(rule, idx, lr_of, first, counts, ps, gs, cols) -> None:
    """``rule.fused`` on leaves ``idx`` (``ps[i]``, ``gs[i]``, ``col[i]`` for each state
    column: lists, or dicts keyed by leaf), one call per group sharing device, dtype,
    lr value and first-step flag."""
    groups: dict[Any, list[int]] = {}
    for i in idx:
        p = ps[i]
        groups.setdefault(
            (p.device, p.dtype, _lr_key(lr_of[i], i), first.get(i, False)), []
        ).append(i)
    for (device, _dtype, lr_key, fst), g in groups.items():
        rule.fused(
            [ps[i] for i in g],
            [gs[i] for i in g],
            [[b[i] for i in g] for b in cols],
            [counts[i] for i in g],
            _lr_arg(lr_key, lr_of, device),
            fst,
        )


def _pure_waves(rule, idx, lr_of, first, leaves, grads, cols, counts) -> None:
    """Pure update of CPU leaves ``idx`` into fresh buffers, one cache-sized wave at a time.

    A wave is a run of leaves (or flat slices of one big leaf) of about ``WAVE_ELEMS``
    elements: their params and moments are cloned, then torch's in-place kernel updates
    the clones while they are still in cache. Everything runs on the caller's thread
    (a helper copy thread was tried: it left a second OpenMP team competing for the
    cores and slowed every later torch op in the process, see docs/performance.md).
    """
    wave = max(int(WAVE_ELEMS), 1)
    nb = len(cols)
    # the pending wave: its leaves' tensors to update in place (slices of a big leaf go
    # one at a time, so a leaf is never twice in a wave)
    new_ps: dict[int, Tensor] = {}
    gs: dict[int, Tensor] = {}
    new_bufs: list[dict[int, Tensor]] = [{} for _ in cols]
    size = 0

    def flush() -> None:
        _fused_calls(rule, list(new_ps), lr_of, first, counts, new_ps, gs, new_bufs)
        new_ps.clear()
        gs.clear()
        for d in new_bufs:
            d.clear()

    def add(i: int, p: Tensor, g: Tensor, bufs: Sequence[Tensor]) -> None:
        new_ps[i], gs[i] = p, g
        for d, t in zip(new_bufs, bufs):
            d[i] = t

    for i in idx:
        p, g = leaves[i], grads[i]
        olds = [b[i] for b in cols]
        if (
            p.numel() > wave
            and p.is_contiguous()
            and g.is_contiguous()
            and all(b.is_contiguous() for b in olds)
        ):
            # a big leaf: fresh buffers, then copy + update one flat slice at a time
            new_p = torch.empty_like(p, memory_format=torch.contiguous_format)
            news = [torch.empty_like(b, memory_format=torch.contiguous_format) for b in olds]
            flush()
            size = 0
            flat = [t.view(-1).split(wave) for t in (p, g, *olds, new_p, *news)]
            for ch in zip(*flat):
                src, dst = [ch[0], *ch[2 : 2 + nb]], [ch[2 + nb], *ch[3 + nb :]]
                torch._foreach_copy_(dst, src)
                add(i, dst[0], ch[1], dst[1:])
                flush()
        else:
            new_p = p.clone()
            news = [b.clone() for b in olds]
            add(i, new_p, g, news)
            size += p.numel()
            if size >= wave:
                flush()
                size = 0
        leaves[i] = _keep_flag(new_p, p)
        for b, t in zip(cols, news):
            b[i] = t
    flush()


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
