"""The optimizer interface: ``init``, pure ``update`` and ``transition`` for any rule.

An ``Optimizer`` wraps a per-leaf rule (`funcurriculum.leaf_rule`) and owns
everything else: tree alignment and validation (`funcurriculum._validate`), masks (frozen
leaves are never read or written; bool-tensor masks under ``vmap`` / ``torch.compile``
are honoured per member), per-leaf LR coefficients and step counts
(`funcurriculum._counts`), the lr schedule, ``maximize``, complex leaves (as real pairs,
like torch.optim), half-precision leaves (computed in float32), weight-decay masks,
purity and buffer donation, and which engine runs each leaf (`funcurriculum.engines`).

State layout (a plain dict, so ``torch.func.vmap`` and ``fc.save`` handle it)::

    {"step":  0-d int64 tensor (CPU)   completed updates (drives the lr schedule),
     "count": tree like params          each leaf's own completed updates (float32, 0-d),
     <field>: tree like params          one per buffer of the rule}

An optional ``"lr_scale"`` entry (a 0-d tensor, e.g. from `fc.reduce_on_plateau`)
multiplies the scheduled lr.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import torch

from . import _validate as V
from ._counts import increment, shared_base, zero_counts
from ._tree import PyTree, align, flatten, spec_paths, unflatten
from .engines import Job, check_engine, compiled, fused, generic, reference, registry, triton
from .leaf_rule import Kernels, LeafRule
from .lr_schedules import Schedule, as_schedule

Tensor = torch.Tensor

_FORCED: contextvars.ContextVar[str | None] = contextvars.ContextVar("fc_engine", default=None)

WAVE_ELEMS = 1 << 20
"""Default elements per cache-sized chunk of the CPU engines (``Optimizer(wave_elems=)``)."""


@contextlib.contextmanager
def force_reference(enabled: bool = True) -> Iterator[None]:
    """Run every ``update`` in this context (this thread / task only) on the reference
    engine, the rule's per-leaf math (tests, debugging). Scoped: other threads and
    tasks keep their engines.

    Args:
      enabled: False lifts an enclosing ``force_reference``.

    Yields:
      Nothing: the engine choice holds inside the ``with`` block.

    Example:
      >>> import torch, funcurriculum as fc
      >>> opt, p = fc.sgd(0.5), {"w": torch.ones(2)}
      >>> with fc.force_reference():
      ...     new, _ = opt.update(p, {"w": torch.ones(2)}, opt.init(p))
      >>> new["w"]
      tensor([0.5000, 0.5000])
    """
    token = _FORCED.set("reference" if enabled else None)
    try:
        yield
    finally:
        _FORCED.reset(token)


class Optimizer:
    """A functional optimizer over pytrees: ``init``, pure ``update``, ``transition``.

    Args:
      rule: the per-leaf math (`fc.LeafRule`: ``fields``, ``init(p)``, ``step``).
      lr: a float or a schedule ``step -> lr`` of the completed-update count.
      name: a display name.
      kernels: optional fast kernels (`fc.Kernels`); without them every path still works.
      elementwise: the rule's ``step`` is elementwise (buffers shaped like the leaf): the
        generic engine may run it on cache-sized chunks.
      maximize: ascend instead of descend (the grads are negated).
      weight_decay_mask: pytree of bools like params, or a callable ``params -> pytree``;
        leaves where it is False get the rule with ``weight_decay=0`` (the rule must be a
        dataclass with a ``weight_decay`` field).
      differentiable: ``update`` is differentiable (autograd, ``torch.func.grad``) with
        respect to params, grads and coefficients; it always takes the reference engine.
      engine: ``"auto"`` (default: the fastest correct engine per leaf that needs no
        compilation), ``"reference"``, ``"generic"`` (ignore the kernels), ``"compiled"``
        (the rule's step through ``torch.compile``: fastest for rules without kernels once
        compiled; the first call per rule and dtype compiles), ``"fused"`` (no Triton) or
        ``"triton"`` (also on CPU, in Triton's interpreter: tests). `update` can override it
        per call.
      wave_elems: chunk size of the CPU engines (0: the fused engine clones whole leaves).

    Example:
      >>> import torch, funcurriculum as fc
      >>> opt = fc.Optimizer(fc.optimizers.SGDRule(), lr=0.5, name="sgd")
      >>> p = {"w": torch.ones(2)}
      >>> opt.update(p, {"w": torch.ones(2)}, opt.init(p))[0]["w"]
      tensor([0.5000, 0.5000])
    """

    def __init__(
        self,
        rule: LeafRule,
        lr: float | Schedule,
        name: str = "optimizer",
        *,
        kernels: Kernels | None = None,
        elementwise: bool = False,
        maximize: bool = False,
        weight_decay_mask: PyTree | Callable[[PyTree], PyTree] | None = None,
        differentiable: bool = False,
        engine: str = "auto",
        wave_elems: int = WAVE_ELEMS,
    ):
        for attr in ("fields", "init", "step"):
            if not hasattr(rule, attr):
                raise TypeError(f"rule {rule!r} lacks {attr!r} (a rule needs fields, init, step)")
        if kernels is not None and not isinstance(kernels, Kernels):
            raise TypeError(f"kernels must be an fc.Kernels, got {type(kernels).__name__}")
        self.rule = rule
        self.lr = lr
        self.name = name
        self.kernels = kernels
        self.elementwise = bool(elementwise)
        self.maximize = bool(maximize)
        self.differentiable = bool(differentiable)
        self.engine = check_engine(engine)
        self.wave_elems = int(wave_elems)
        self.weight_decay_mask = weight_decay_mask
        self._no_decay = None
        if weight_decay_mask is not None:
            if not dataclasses.is_dataclass(rule) or "weight_decay" not in {
                f.name for f in dataclasses.fields(rule)
            }:
                raise TypeError(f"weight_decay_mask needs a rule with weight_decay, got {rule!r}")
            self._no_decay = dataclasses.replace(rule, weight_decay=0.0)
        self._schedule = as_schedule(lr)
        self._constant_lr = None if callable(lr) else float(lr)

    def __repr__(self) -> str:
        return f"{self.name}(lr={self.lr!r}, {self.rule!r})"

    def with_engine(self, engine: str | None = None, *, wave_elems: int | None = None):
        """The same optimizer (rule, lr, options, state layout) with another engine choice.

        Args:
          engine: see the class (``None``: keep this optimizer's).
          wave_elems: chunk size of the CPU engines (``None``: keep this optimizer's).

        Returns:
          A new `Optimizer`; ``self`` is unchanged.

        Example:
          >>> import funcurriculum as fc
          >>> fc.adam(1e-3).with_engine("generic").engine
          'generic'
        """
        new = copy.copy(self)
        if engine is not None:
            new.engine = check_engine(engine)
        if wave_elems is not None:
            new.wave_elems = int(wave_elems)
        return new

    # -- init ----------------------------------------------------------------------
    def init(self, params: PyTree, masks: PyTree | None = None) -> dict[str, Any]:
        """Fresh optimizer state for ``params``.

        Args:
          params: pytree of tensors.
          masks: optional bool pytree (True = trainable); leaves frozen there (a Python
            ``False``) hold zero-size buffers, materialised by ``transition`` when
            they are unfrozen. Bool-tensor masks (dynamic) allocate every buffer.

        Returns:
          The state dict (see the module docstring for its layout).

        Example:
          >>> import torch, funcurriculum as fc
          >>> sorted(fc.adam(1e-3).init({"w": torch.zeros(3)}))
          ['count', 'exp_avg', 'exp_avg_sq', 'step']
        """
        leaves, spec = flatten(params)
        paths = spec_paths(spec)
        V.check_params(leaves, paths)
        ms = V.masks_of(
            None if masks is None else align(masks, spec, paths, "masks"), paths, dynamic=True
        )
        counts = zero_counts([p.device for p in leaves])
        cols: list[list[Tensor]] = [[] for _ in self.rule.fields]
        for p, m, path in zip(leaves, ms, paths):
            fresh = self._fresh(p, path) if m is not False else [_empty(p) for _ in cols]
            for col, b in zip(cols, fresh):
                col.append(b)
        return self._assemble({"step": torch.zeros((), dtype=torch.int64)}, spec, counts, cols)

    # -- transition ----------------------------------------------------------------
    def transition(
        self, state: dict[str, Any], params: PyTree, old_masks: PyTree, new_masks: PyTree
    ) -> dict[str, Any]:
        """Fresh state for leaves frozen in ``old_masks`` and trainable in ``new_masks``.

        Every other leaf's state is passed through untouched (same tensors); the global
        step (and so the lr schedule) goes on. With bool-tensor masks (under ``vmap``,
        one per member) exactly the members that just unfroze a leaf get fresh state.
        The input is not modified.

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
          >>> opt.transition(opt.init(p, old), p, old, new)["exp_avg"]["b"].shape
          torch.Size([2])
        """
        leaves, spec = flatten(params)
        paths = spec_paths(spec)
        V.check_params(leaves, paths)
        dyn = V.functorch_active() or V.compiling()
        old = V.masks_of(align(old_masks, spec, paths, "old_masks"), paths, dyn)
        new = V.masks_of(align(new_masks, spec, paths, "new_masks"), paths, dyn)
        V.check_state(state, self.rule.fields, self)
        counts = list(align(state["count"], spec, paths, "state['count']"))
        cols = [list(align(state[f], spec, paths, f"state[{f!r}]")) for f in self.rule.fields]
        for i, (p, o, n) in enumerate(zip(leaves, old, new)):
            if isinstance(o, bool) and isinstance(n, bool):
                if n and not o:
                    counts[i] = torch.zeros_like(torch.as_tensor(counts[i], dtype=torch.float32))
                    for col, b in zip(cols, self._fresh(p, paths[i])):
                        col[i] = b
                continue
            on = torch.as_tensor(n, device=p.device) & ~torch.as_tensor(o, device=p.device)
            c = torch.as_tensor(counts[i], dtype=torch.float32)
            counts[i] = torch.where(on, torch.zeros_like(c), c)
            for col, b in zip(cols, self._fresh(p, paths[i])):
                col[i] = torch.where(on, b, col[i]) if col[i].shape == b.shape else b
        return self._assemble(dict(state), spec, counts, cols)

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
        engine: str | None = None,
    ) -> tuple[PyTree, dict[str, Any]]:
        """One optimizer step; pure unless ``donate``.

        Frozen leaves (``masks`` False) are neither read nor written: their params and
        state come back as the very same tensors. A trainable leaf ``i`` moves with
        ``lr(step) * coeffs[i]`` (a coefficient of 0 leaves it in place while its state
        advances). Every check runs before anything is written.

        Args:
          params: pytree of tensors.
          grads: same structure (``None`` allowed at frozen leaves), or the trainable
            part from `fc.partition` (frozen keys absent). A leaf with a bool-tensor mask
            and no grad is frozen in every member (what `fc.partition` leaves out).
          state: from ``init`` / a previous update.
          masks: bool pytree, True = trainable; ``None`` = all trainable. Leaves may be
            bool tensors: 0-d ones read as bools, batched ones under ``vmap`` give every
            member its own frozen set.
          coeffs: float (or 0-d tensor) pytree; ``None`` = all 1.0.
          donate: reuse the buffers of ``params`` and ``state`` (updated in place); the old
            objects must not be used afterwards. Ignored under ``torch.func`` transforms
            and with ``differentiable=True``. Overlapping buffers are refused.
          engine: override the optimizer's engine for this call (see the class).

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
        tree_engine = registry.find(leaves)
        if tree_engine is not None:
            return tree_engine(self, params, grads, state, masks, coeffs, donate)
        return self._step(params, leaves, spec, grads, state, masks, coeffs, donate, engine, None)

    def update_members(
        self,
        params: PyTree,
        grads: PyTree,
        state: dict[str, Any],
        masks: PyTree | None = None,
        coeffs: PyTree | None = None,
    ) -> tuple[PyTree, dict[str, Any]]:
        """``vmap(self.update)`` for an ensemble stacked along dim 0, without ``vmap``.

        For an elementwise rule (``elementwise=True``: every built-in elementwise
        optimizer, e.g. `fc.adam`, `fc.sgd`) the same per-element arithmetic runs on
        the stacked leaves directly, broadcasting each member's count, learning rate,
        coefficient and mask over its slice: the result equals ``vmap(self.update)``
        given the same values (bit for bit with a float learning rate; a schedule's
        float64 value is rounded to float32 before the step here, where it meets the leaf
        under vmap), at a fraction of vmap's per-op cost. `fc.make_sweep_step` uses it.

        Args:
          params: pytree of stacked tensors (a leading member dimension ``E``).
          grads: same structure (missing or ``None`` at leaves no member trains).
          state: a stacked state, ``vmap(opt.init)(params)`` (``step`` of shape ``(E,)``).
          masks: bool pytree: Python bools, or bool tensors of shape ``()`` or ``(E,)``
            (each member's own frozen set).
          coeffs: coefficient pytree: floats, or tensors of shape ``()`` or ``(E,)``.

        Returns:
          ``(new_params, new_state)``, stacked.

        Raises:
          ValueError: for a rule that is not elementwise (use ``vmap(opt.update)``), or a
            leaf, count, mask or coefficient whose leading size is not ``E``.

        Example:
          >>> import torch, funcurriculum as fc
          >>> from torch.func import vmap
          >>> opt, p = fc.adam(0.1), {"w": torch.ones(3, 2)}  # 3 members
          >>> state, g = vmap(opt.init)(p), {"w": torch.ones(3, 2)}
          >>> m = {"w": torch.tensor([True, False, True])}
          >>> new, _ = opt.update_members(p, g, state, m)
          >>> new["w"][:, 0]
          tensor([0.9000, 1.0000, 0.9000])
          >>> torch.equal(new["w"], vmap(opt.update)(p, g, state, m)[0]["w"])
          True
        """
        if not self.elementwise:
            raise ValueError(
                f"update_members needs an elementwise rule; {self!r} is not: use "
                "torch.func.vmap(opt.update)"
            )
        leaves, spec = flatten(params)
        members = V.members_of(state, leaves, spec_paths(spec))
        return self._step(params, leaves, spec, grads, state, masks, coeffs, False, None, members)

    def _step(self, params, leaves, spec, grads, state, masks, coeffs, donate, engine, members):
        """`update`'s body; ``members``: the ensemble size of `update_members` (else None)."""
        paths = spec_paths(spec)
        transformed = members is not None or V.functorch_active()
        traced = transformed or V.compiling()
        if traced or self.differentiable:
            engine, donate = "reference", False
        else:  # (a ContextVar read cannot be traced)
            engine = _FORCED.get() or (self.engine if engine is None else check_engine(engine))
        grads_l = list(align(grads, spec, paths, "grads", allow_missing=True))
        ms = V.masks_of(
            None if masks is None else align(masks, spec, paths, "masks"), paths, traced
        )
        coeffs_l = None if coeffs is None else align(coeffs, spec, paths, "coeffs")
        V.check_state(state, self.rule.fields, self)
        counts = list(align(state["count"], spec, paths, "state['count']"))
        if members is not None:
            V.check_members(members, paths, ms, coeffs_l, counts)
            if not V.compiling():  # a mask the same for every member is a plain bool
                ms = [V.uniform_mask(m) for m in ms]
        cols = [list(align(state[f], spec, paths, f"state[{f!r}]")) for f in self.rule.fields]
        # (a callable weight_decay_mask sees one member's params, as under vmap)
        one = params
        if members is not None and callable(self.weight_decay_mask):
            one = unflatten(spec, [p[0] for p in leaves])
        no_decay = self._no_decay_flags(one, spec, paths)

        # 1. validate every trainable leaf (nothing is written before this is done)
        active, dyn, plain, lr_of, odd = [], {}, set(), {}, []
        lr = self._lr_at(state, traced)
        rows = list(zip(*cols)) if cols else [()] * len(leaves)  # each leaf's buffers
        for i, m in enumerate(ms):
            if m is False or (grads_l[i] is None and not isinstance(m, bool)):
                continue  # (a tensor mask with no grad: frozen in every member, as partition says)
            p, g, bufs = leaves[i], grads_l[i], rows[i]
            if V.plain_leaf(p, g, bufs):
                plain.add(i)
            else:
                V.check_leaf(paths[i], p, g, bufs, [_like(b, p) for b in bufs])
                odd.append(i)
            c = 1.0 if coeffs_l is None else coeffs_l[i]
            if type(c) is not float or not 0.0 <= c < _INF:
                c = V.coeff_value(c, paths[i], transformed)
            if not isinstance(counts[i], Tensor):
                counts[i] = torch.tensor(float(counts[i]), dtype=torch.float32, device=p.device)
            if m is not True:
                dyn[i] = m
            active.append(i)
            lr_of[i] = lr * c
        shared = None
        if donate:
            written = [leaves[i] for i in active]
            for c in cols:
                written += [c[i] for i in active]
            # the counts, when views of one tensor, as that tensor (one span, not one each)
            written_counts = [counts[i] for i in active]
            shared = shared_base(written_counts)
            dense = 0 if odd else len(written)  # (plain leaves: dense params and buffers)
            written += written_counts if shared is None else [shared]
            V.check_no_aliasing(
                written, _written_name(active, paths, self.rule.fields, shared is not None), dense
            )

        # 2. complex leaves as real pairs (views: in-place kernels write through them)
        cplx = [i for i in odd if leaves[i].is_complex()]  # (plain leaves are real)
        originals = {i: (leaves[i], [c[i] for c in cols]) for i in cplx}
        for i in cplx:
            leaves[i], grads_l[i] = torch.view_as_real(leaves[i]), torch.view_as_real(grads_l[i])
            for c in cols:
                if c[i].is_complex():
                    c[i] = torch.view_as_real(c[i])
            if V.plain_leaf(leaves[i], grads_l[i], [c[i] for c in cols]):
                plain.add(i)

        # 3. run the engines, one group per rule variant
        if not traced:
            increment(counts, active, inplace=donate, shared=shared)
        step = state["step"]
        with torch.no_grad() if not self.differentiable else contextlib.nullcontext():
            for rule, idx in self._by_rule(active, no_decay):
                job = Job(
                    rule, self.kernels, idx, lr_of, leaves, grads_l, cols, counts,
                    donate, self.maximize, self.wave_elems,
                )  # fmt: skip
                self._run(job, engine, plain, dyn, transformed, traced, members)
            if donate and not traced:
                new_step = step.add_(1)
            else:
                new_step = step + 1

        for i, (p0, bufs0) in originals.items():
            leaves[i] = engines_keep(torch.view_as_complex(leaves[i]), p0, traced)
            for c, b0 in zip(cols, bufs0):
                if b0.is_complex():
                    c[i] = torch.view_as_complex(c[i])
        out = dict(state)
        out["step"] = new_step
        return unflatten(spec, leaves), self._assemble(out, spec, counts, cols)

    # -- internals ---------------------------------------------------------------------
    def _run(
        self, job: Job, engine: str, plain: set, dyn: dict, transformed: bool, traced: bool,
        members: int | None,
    ):  # fmt: skip
        if engine == "reference":
            reference.run(
                job, transformed=transformed, incremented=not traced, dyn=dyn,
                members=members is not None,
            )  # fmt: skip
            return
        for name, idx in self.route(
            job.rule, job.idx, job.leaves, job.grads, job.cols, plain, engine
        ):
            sub = job if len(idx) == len(job.idx) else dataclasses.replace(job, idx=idx)
            if name == "triton":
                triton.run(sub)
            elif name == "fused":
                fused.run(sub, elementwise=self.elementwise)
            elif name == "generic":
                generic.run(sub, elementwise=self.elementwise)
            elif name == "compiled":
                compiled.run(sub, elementwise=self.elementwise)
            else:
                reference.run(sub, transformed=False, incremented=True, dyn={})

    def route(self, rule, idx, leaves, grads, cols, plain, engine) -> list[tuple[str, list[int]]]:
        """Which engine takes each of the (eager, validated) leaves ``idx``."""
        k = self.kernels
        out: dict[str, list[int]] = {
            "triton": [], "fused": [], "compiled": [], "generic": [], "reference": []
        }  # fmt: skip
        devices: dict[Any, bool] = {}
        for i in idx:
            p = leaves[i]
            if i not in plain:
                out["reference"].append(i)
                continue
            if engine == "compiled":
                out["compiled"].append(i)
                continue
            if engine == "generic" or k is None or (k.accepts is not None and not k.accepts(p)):
                out["generic"].append(i)
                continue
            if k.multi is not None and engine in ("auto", "triton"):
                key = p.dtype if p.is_cpu else (p.device, p.dtype)  # (no device object on CPU)
                if key not in devices:
                    devices[key] = triton.usable(p.device, on_cpu=engine == "triton") and (
                        engine == "triton" or triton.verified(rule, k, p.device, p.dtype)
                    )
                if devices[key] and triton.accepts(p, grads[i], [c[i] for c in cols]):
                    out["triton"].append(i)
                    continue
            out["fused" if k.inplace is not None else "generic"].append(i)
        return [(name, ix) for name, ix in out.items() if ix]

    def _by_rule(self, active: list[int], no_decay: list[bool] | None):
        if no_decay is None:
            return [(self.rule, active)]
        a = [i for i in active if not no_decay[i]]
        b = [i for i in active if no_decay[i]]
        return [(r, idx) for r, idx in ((self.rule, a), (self._no_decay, b)) if idx]

    def _no_decay_flags(self, params, spec, paths) -> list[bool] | None:
        wdm = self.weight_decay_mask
        if wdm is None:
            return None
        tree = wdm(params) if callable(wdm) else wdm
        out = []
        for m, path in zip(align(tree, spec, paths, "weight_decay_mask"), paths):
            if not isinstance(m, bool):
                raise TypeError(
                    f"weight_decay_mask at {path!r} must be a bool, got {type(m).__name__}"
                )
            out.append(not m)
        return out

    def _fresh(self, p: Tensor, path: str) -> tuple[Tensor, ...]:
        try:
            return tuple(self.rule.init(p))
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{self.name}: leaf {path!r}: {exc}") from exc

    def _assemble(self, out: dict, spec, counts, cols) -> dict[str, Any]:
        out["count"] = unflatten(spec, counts)
        for name, col in zip(self.rule.fields, cols):
            out[name] = unflatten(spec, col)
        return out

    def _check_state(self, state: Any) -> None:
        V.check_state(state, self.rule.fields, self)

    def _lr_at(self, state: dict[str, Any], traced: bool) -> Any:
        step = state["step"]
        scale = state.get("lr_scale")
        if self._constant_lr is not None:
            lr = self._constant_lr
        elif traced:
            lr = self._schedule(step)
        else:
            s = int(step)
            lr = V.lr_value(self._schedule(s), s)
        if scale is None:
            return lr
        if traced or not isinstance(scale, Tensor) or scale.device.type != "cpu":
            return lr * scale
        return lr * float(scale)


def engines_keep(new: Tensor, old: Tensor, traced: bool) -> Tensor:
    from .engines import keep_flag

    return new if traced else keep_flag(new, old)


_INF = float("inf")


def _like(b: Any, p: Tensor) -> bool:
    """Whether buffer ``b`` is meant to be shaped like its leaf (factored ones are not)."""
    return isinstance(b, Tensor) and b.dim() == p.dim() and b.numel() in (p.numel(), 0)


def _written_name(active, paths, fields, shared: bool) -> Callable[[int], str]:
    """What the ``k``-th tensor a donated update writes is: params, then each state
    column, each over the ``active`` leaves, then their counts, or when ``shared`` the
    one tensor they are views of (error messages only)."""
    n = len(active)
    kinds = ("params", *(f"state[{f!r}]" for f in fields), "state['count']")

    def name(k: int) -> str:
        kind, j = divmod(k, n)
        if shared and kind == len(kinds) - 1:
            return "state['count'] (the tensor the counts are views of)"
        return f"{kinds[kind]} {paths[active[j]]!r}"

    return name


def _empty(p: Tensor) -> Tensor:
    return torch.empty((0,), dtype=p.dtype, device=p.device)
