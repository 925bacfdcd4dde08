"""Curriculum sweeps: one curriculum (or schedule) per member of a vmapped run.

Masks of a sweep are *dynamic*: bool tensors with a leading member dimension, so under
``torch.func.vmap`` every member has its own frozen set (see the optimizer's dynamic
masks) and under ``torch.compile`` a phase change is data, not a new graph.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.func import grad_and_value, vmap

from ._tree import PyTree, align, flatten, spec_paths, unflatten
from .curriculum import Curriculum
from .optimizer import Optimizer
from .partition import split
from .schedule import LOGGER, Schedule, describe_change

Tensor = torch.Tensor
_CACHE_SIZE = 64


def _check_members(curricula: Sequence[Any], what: str = "curricula") -> tuple[Curriculum, ...]:
    """Every member a `Curriculum` over the same params as member 0 (else a clear error)."""
    members = tuple(curricula)
    if not members:
        raise ValueError(f"a sweep needs at least one member: {what} is empty")
    for i, c in enumerate(members):
        if not isinstance(c, Curriculum):
            raise TypeError(f"{what}[{i}] is a {type(c).__name__}, expected an fc.Curriculum")
    first = members[0]
    for i, c in enumerate(members[1:], 1):
        if c.index is first.index or c.index.spec == first.index.spec:
            continue
        if tuple(c.paths) != tuple(first.paths):
            missing = [p for p in first.paths if p not in set(c.paths)]
            extra = [p for p in c.paths if p not in set(first.paths)]
            hint = ""
            if extra and first.paths:
                close = difflib.get_close_matches(extra[0], first.paths, n=1)
                hint = f" (did you mean {close[0]!r} for {extra[0]!r}?)" if close else ""
            order = "" if missing or extra else " (same paths, another order)"
            raise ValueError(
                f"{what}[{i}] is over other params than {what}[0]: missing {missing}, "
                f"unexpected {extra}{order}{hint}; every member needs the same params"
            )
        if c.index.spec != first.index.spec:
            raise ValueError(
                f"{what}[{i}] has the same paths as {what}[0] but another tree structure"
            )
    return members


def stack_curricula(
    curricula: Sequence[Curriculum],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[PyTree, PyTree]:
    """Batched ``(masks, coeffs)`` of one `Curriculum` per sweep member.

    Every leaf of ``masks`` is a bool tensor of shape ``(E,)`` and every leaf of
    ``coeffs`` a float tensor of shape ``(E,)``, for ``E = len(curricula)``, in the
    params' structure: pass them with ``in_dims=0`` to ``vmap(opt.update)`` and
    ``vmap(opt.transition)`` so member ``i`` trains with ``curricula[i]``.

    Args:
      curricula: one curriculum per member, all over the same params.
      device: where the tensors live (default: CPU; use the params' device).
      dtype: the coefficients' dtype.

    Returns:
      ``(masks, coeffs)``.

    Raises:
      ValueError: an empty list, or a member over other params (the message names it
        and the paths that differ).
      TypeError: a member is not a `Curriculum`.

    Example:
      >>> import torch, funcurriculum as fc
      >>> cur = fc.Curriculum({"body.w": torch.zeros(2), "head.w": torch.zeros(2)})
      >>> masks, coeffs = fc.stack_curricula([cur.freeze("body"), cur.set_lr_coefficient(0.1, "body")])
      >>> masks
      {'body.w': tensor([False,  True]), 'head.w': tensor([True, True])}
      >>> coeffs["body.w"]
      tensor([1.0000, 0.1000])
    """
    members = _check_members(curricula)
    lay = members[0].index
    frozen = torch.tensor([c.frozen_leaves for c in members], dtype=torch.bool)
    coeff = torch.tensor([c.leaf_coefficients for c in members], dtype=torch.float64)
    masks = (~frozen).T.contiguous().to(device)
    coeffs = coeff.T.contiguous().to(device=device, dtype=dtype)
    return lay.render(list(masks.unbind())), lay.render(list(coeffs.unbind()))


class Sweep:
    """A sweep: one `Schedule` (or fixed `Curriculum`) per vmapped member.

    ``at(step=..., epoch=...)`` gives the batched ``(masks, coeffs)`` in force (as
    `fc.stack_curricula` of every member's ``Schedule.at``), cached per combination of
    phases, so asking every step costs a dictionary lookup between phase changes.

    Args:
      schedules: one `Schedule` or `Curriculum` per member, all over the same params.
      device: where the batched masks and coefficients live (default: CPU).

    Example:
      >>> import torch, funcurriculum as fc
      >>> p = {"body.w": torch.zeros(2), "head.w": torch.zeros(2)}
      >>> sweep = fc.Sweep([fc.Schedule(p, fc.Freezer(names="body", until_step=n)) for n in (0, 5, 10)])
      >>> sweep.at(step=7)[0]["body.w"]
      tensor([ True,  True, False])
    """

    __slots__ = ("_schedules", "_device", "_cache")

    def __init__(
        self,
        schedules: Sequence[Schedule | Curriculum],
        *,
        device: torch.device | str | None = None,
    ):
        out = []
        for i, s in enumerate(schedules):
            if isinstance(s, Curriculum):
                s = Schedule(s)
            if not isinstance(s, Schedule):
                raise TypeError(
                    f"schedules[{i}] is a {type(s).__name__}, expected an fc.Schedule or "
                    "fc.Curriculum"
                )
            out.append(s)
        _check_members([s.curriculum for s in out], "schedules")
        self._schedules = tuple(out)
        self._device = None if device is None else torch.device(device)
        self._cache: dict[tuple[int, ...], tuple[tuple[Curriculum, ...], Any]] = {}

    @property
    def schedules(self) -> tuple[Schedule, ...]:
        """The members' schedules."""
        return self._schedules

    @property
    def members(self) -> int:
        """The number of members ``E``."""
        return len(self._schedules)

    @property
    def paths(self) -> list[str]:
        """The params' leaf paths."""
        return self._schedules[0].curriculum.paths

    def curricula(
        self, step: int | None = None, epoch: int | None = None
    ) -> tuple[Curriculum, ...]:
        """Every member's curriculum in force at ``step`` / ``epoch`` (see ``Schedule.at``).

        Args:
          step: completed optimizer updates.
          epoch: 0-based epoch.

        Returns:
          One `Curriculum` per member.
        """
        return tuple(s.at(step=step, epoch=epoch) for s in self._schedules)

    def stack(
        self,
        curricula: Sequence[Curriculum],
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[PyTree, PyTree]:
        """`fc.stack_curricula` of ``curricula`` (cached per phase combination, device
        and dtype).

        Args:
          curricula: one curriculum per member (e.g. from `curricula`).
          device: where the tensors live (default: the sweep's device).
          dtype: the coefficients' dtype.

        Returns:
          ``(masks, coeffs)`` with a leading member dimension.
        """
        curricula = tuple(curricula)
        if len(curricula) != self.members:
            raise ValueError(
                f"expected {self.members} curricula (one per member), got {len(curricula)}"
            )
        dev = self._device if device is None else torch.device(device)
        key = (*map(id, curricula), dev, dtype)
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
            # the curricula are kept with the entry, so their ids stay theirs
            hit = (curricula, stack_curricula(curricula, device=dev, dtype=dtype))
            self._cache[key] = hit
        return hit[1]

    def at(self, step: int | None = None, epoch: int | None = None) -> tuple[PyTree, PyTree]:
        """The batched ``(masks, coeffs)`` in force at ``step`` / ``epoch``.

        Args:
          step: completed optimizer updates (when a rule reads steps).
          epoch: 0-based epoch (when a rule reads epochs).

        Returns:
          ``(masks, coeffs)``: bool and float tensors of shape ``(E,)`` per leaf.
        """
        return self.stack(self.curricula(step=step, epoch=epoch))

    def init(self, opt: Any, params: PyTree) -> dict[str, Any]:
        """Stacked optimizer state for stacked ``params``: ``vmap(opt.init)(params)`` with
        every leaf materialised (vmap returns the parts that do not depend on the params,
        the step counters, as expanded views; ``torch.compile`` would compile a second
        graph when they become real tensors after the first step).

        Args:
          opt: the optimizer.
          params: stacked params (a leading member dimension on every leaf).

        Returns:
          The state, full buffers for every member (masks vary per member, so nothing is
          left out).
        """
        state = vmap(opt.init)(params)
        leaves, spec = flatten(state)
        return unflatten(spec, [x.contiguous() if isinstance(x, Tensor) else x for x in leaves])

    def apply_transition(
        self,
        opt: Any,
        state: dict[str, Any],
        params: PyTree,
        prev: Sequence[Curriculum] | None,
        next: Sequence[Curriculum],
        logger: logging.Logger | None = None,
        *,
        step: int | None = None,
        epoch: int | None = None,
    ) -> dict[str, Any]:
        """`fc.apply_transition` for a sweep: ``vmap(opt.transition)`` with the batched
        masks when any member's masks changed (only the members that just unfroze a leaf
        get fresh state there), and one INFO line per member whose curriculum changed.

        Args:
          opt: the optimizer.
          state: the stacked optimizer state (e.g. ``vmap(opt.init)(stacked)``).
          params: the stacked params.
          prev: the members' curricula so far (``None``: nothing to do).
          next: the members' curricula from now on.
          logger: where to log (default ``logging.getLogger("funcurriculum")``).
          step: shown in the log lines.
          epoch: shown in the log lines.

        Returns:
          The new state (``state`` itself when no member's masks changed).
        """
        if prev is None:
            return state
        prev, next = tuple(prev), tuple(next)
        if len(prev) != len(next):
            raise ValueError(f"prev has {len(prev)} members, next {len(next)}")
        where = ", ".join(
            f"{c} {v}" for c, v in (("step", step), ("epoch", epoch)) if v is not None
        )
        moved = False
        for i, (a, b) in enumerate(zip(prev, next)):
            if a is b:
                continue
            line = describe_change(a, b)
            if line is None:
                continue
            moved = moved or a.frozen_leaves != b.frozen_leaves
            (logger or LOGGER).info(
                "phase change of member %d%s: %s", i, f" at {where}" if where else "", line
            )
        if not moved:
            return state
        where_ = _placement(flatten(params)[0])
        old, _ = self.stack(prev, *where_)
        new, _ = self.stack(next, *where_)
        return vmap(opt.transition)(state, params, old, new)

    def __repr__(self) -> str:
        return f"Sweep({self.members} members over {len(self.paths)} leaves)"


def _placement(leaves: Sequence[Any]) -> tuple[torch.device | None, torch.dtype]:
    """Device and coefficient dtype for params ``leaves``: the first leaf's device;
    float64 coefficients when a leaf is float64 (``lr * coeff`` keeps its precision),
    else float32."""
    dev = leaves[0].device if leaves and isinstance(leaves[0], Tensor) else None
    wide = any(isinstance(p, Tensor) and p.dtype == torch.float64 for p in leaves)
    return dev, torch.float64 if wide else torch.float32


def union(curricula: Sequence[Curriculum]) -> tuple[bool, ...]:
    """Per leaf: does any member train it? (Python bools; no tensor is read.)"""
    frozen = [c.frozen_leaves for c in curricula]
    return tuple(not all(col) for col in zip(*frozen))


def make_sweep_step(
    loss_fn: Callable[[PyTree, Any], Tensor],
    opt: Any,
    sweep: Sweep | Sequence[Schedule | Curriculum],
    *,
    batch_axis: int | None = None,
    compile: bool | dict[str, Any] = False,
    logger: logging.Logger | None = None,
) -> Callable[..., tuple[PyTree, dict[str, Any], Tensor, tuple[Curriculum, ...]]]:
    """A swept training step: every member's curriculum, transition, gradient, update,
    all members at once under ``vmap``.

    The returned function

    ``step_fn(params, state, batch, *, step=None, epoch=None, prev=None)
    -> (params, state, losses, curricula)``

    takes stacked ``params`` (a leading member dimension on every leaf, e.g. from
    ``torch.func.stack_module_state``) and a stacked ``state`` (``step_fn.init(params)``,
    which is `Sweep.init`: ``vmap(opt.init)(params)`` with contiguous leaves);
    ``curricula`` holds each member's curriculum at this clock and ``losses`` each
    member's loss (shape ``(E,)``). Pass the ``curricula`` of the previous call as
    ``prev``: when a member's masks changed, ``vmap(opt.transition)`` gives fresh state to
    exactly the members that just unfroze a leaf.

    Gradients are computed for the union of the members' trainable leaves (a leaf
    frozen in every member costs nothing); a member's frozen leaf is computed in the
    batch but its param and state come back bit-identical. Each member equals the same
    schedule run alone with `fc.make_step` (to float rounding).

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` for one member's params.
      opt: a funcurriculum optimizer.
      sweep: a `Sweep`, or one `Schedule` / `Curriculum` per member.
      batch_axis: ``None`` (default): every member sees the same ``batch`` (the sweep
        then differs by curriculum only); ``0``: ``batch`` holds one batch per member
        along its first dimension (bagging, per-member data orders).
      compile: compile the vmapped gradient and update (``True``: ``torch.compile`` with
        ``fullgraph=True``; a dict: keyword arguments for ``torch.compile``). Masks and
        coefficients are tensors, so a phase change costs no recompilation; only a change
        of the union of trainable leaves does (one graph per distinct union).
      logger: where phase changes are logged.

    Returns:
      ``step_fn``.

    Example:
      >>> import torch, funcurriculum as fc
      >>> p = {"body.w": torch.ones(3, 2), "head.w": torch.ones(3, 2)}   # 3 members
      >>> one = {k: v[0] for k, v in p.items()}
      >>> sweep = [fc.Schedule(one, fc.Freezer(names="body", until_step=n)) for n in (0, 1, 9)]
      >>> loss = lambda q, x: ((q["body.w"] + q["head.w"]) * x).sum()
      >>> step_fn = fc.make_sweep_step(loss, fc.sgd(0.5), sweep)
      >>> state, cur = step_fn.init(p), None
      >>> for t in range(2):
      ...     p, state, losses, cur = step_fn(p, state, torch.ones(2), step=t, prev=cur)
      >>> p["body.w"][:, 0]
      tensor([0.0000, 0.5000, 1.0000])
    """
    if not isinstance(sweep, Sweep):
        sweep = Sweep(sweep)
    if batch_axis not in (None, 0):
        raise ValueError(f"batch_axis must be None (a shared batch) or 0, got {batch_axis!r}")

    # an elementwise optimizer updates the stacked leaves directly (Optimizer.update_members,
    # the arithmetic of vmap without its per-op cost); any other one runs under vmap
    stacked = isinstance(opt, Optimizer) and opt.elementwise

    def core(params, state, batch, dyn, coeffs, trained):
        leaves, spec = flatten(params)
        pos = [i for i, t in enumerate(trained) if t]
        rest = [i for i, t in enumerate(trained) if not t]

        def tree_of(at_pos, at_rest):  # the params' structure from the two flat parts
            flat = list(leaves)
            for idx, part in ((pos, at_pos), (rest, at_rest)):
                for i, x in zip(idx, part):
                    flat[i] = x
            return unflatten(spec, flat)

        def masks_of(m):
            return tree_of(m, [False] * len(rest))

        def grads_of(tr, fr, b):  # flat lists in and out: vmap's cheapest inputs
            if not tr:
                return [], loss_fn(tree_of(tr, fr), b)
            return grad_and_value(lambda t: loss_fn(tree_of(t, fr), b))(tr)

        def trainable(grads):  # the trained leaves' grads, as fc.partition's part
            return split(tree_of(grads, [leaves[i] for i in rest]), trained)[0]

        tr, fr = [leaves[i] for i in pos], [leaves[i] for i in rest]
        if stacked:  # gradients under vmap, one update of the stacked leaves
            grads, losses = vmap(grads_of, in_dims=(0, 0, batch_axis))(tr, fr, batch)
            new_p, new_s = opt.update_members(
                params, trainable(grads), state, masks_of(dyn), coeffs
            )
            return new_p, new_s, losses

        def member(t, f, st, b, m, c):
            grads, loss = grads_of(t, f, b)
            new_p, new_s = opt.update(tree_of(t, f), trainable(grads), st, masks_of(m), c)
            return new_p, new_s, loss

        run = vmap(member, in_dims=(0, 0, 0, batch_axis, 0, 0))
        return run(tr, fr, state, batch, dyn, coeffs)

    if compile:
        opts = {"fullgraph": True} if compile is True else dict(compile)
        core = torch.compile(core, **opts)

    def step_fn(
        params: PyTree,
        state: dict[str, Any],
        batch: Any,
        *,
        step: int | None = None,
        epoch: int | None = None,
        prev: Sequence[Curriculum] | None = None,
    ) -> tuple[PyTree, dict[str, Any], Tensor, tuple[Curriculum, ...]]:
        curs = sweep.curricula(step=step, epoch=epoch)
        state = sweep.apply_transition(
            opt, state, params, prev, curs, logger, step=step, epoch=epoch
        )
        leaves, spec = flatten(params)
        masks, coeffs = sweep.stack(curs, *_placement(leaves))
        trained = union(curs)
        m_l = align(masks, spec, spec_paths(spec), "masks")
        dyn = [m for m, t in zip(m_l, trained) if t]
        new_params, new_state, losses = core(params, state, batch, dyn, coeffs, trained)
        return new_params, new_state, losses, curs

    step_fn.sweep = sweep
    step_fn.init = lambda params: sweep.init(opt, params)
    return step_fn
