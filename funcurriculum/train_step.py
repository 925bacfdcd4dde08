"""``make_step``: a small functional training step driven by a ``Schedule``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from ._tree import PyTree
from .curriculum import Curriculum
from .partition import combine, partition
from .schedule import Schedule, apply_transition
from .sweep import Sweep, make_sweep_step


def make_step(
    loss_fn: Callable[[PyTree, Any], torch.Tensor],
    opt: Any,
    schedule: Schedule | Curriculum,
    *,
    donate: bool = False,
    logger: logging.Logger | None = None,
) -> Callable[..., tuple[PyTree, dict[str, Any], torch.Tensor, Curriculum]]:
    """A training step: curriculum from the schedule, transition, gradient, update.

    The returned function

    ``step_fn(params, state, batch, *, step=None, epoch=None, prev=None)
    -> (params, state, loss, cur)``

    takes the curriculum ``cur = schedule.at(step=step, epoch=epoch)``; when ``prev``
    (the ``cur`` returned by the previous call) is given it moves the optimizer state
    with ``apply_transition`` (fresh state for just-unfrozen leaves, one log line
    per phase change); it differentiates ``loss_fn`` with ``torch.func.grad`` with
    respect to the trainable leaves only (``partition``), so frozen leaves cost no
    gradient compute; then ``opt.update(params, grads, state, cur.masks, cur.coeffs)``.

    The phase-change lines (``phase change at step 100: unfroze ['backbone']``) are
    INFO records on the ``"funcurriculum"`` logger (or ``logger``). Python shows INFO
    records only once logging is configured, so to see them call e.g.
    ``logging.basicConfig(level=logging.INFO)``, or attach a handler to
    ``logging.getLogger("funcurriculum")`` and set its level to INFO.

    It is pure (unless ``donate``) and runs under ``torch.func.vmap`` for ensembles:
    keyword arguments are not batched, and the curriculum output needs
    ``out_dims=(0, 0, 0, None)``.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar tensor`` (e.g. a
        ``torch.func.functional_call`` of a module).
      opt: a funcurriculum optimizer.
      schedule: a ``Schedule``, or a fixed ``Curriculum``; or a list of them
        (or a `fc.Sweep`), one per member: then the step is `fc.make_sweep_step`'s
        (stacked params and state, a shared batch, all members at once under ``vmap``).
      donate: passed to ``opt.update``.
      logger: where the phase changes are logged (default
        ``logging.getLogger("funcurriculum")``).

    Returns:
      ``step_fn``.

    Example:
      >>> import torch, funcurriculum as fc
      >>> p = {"body.w": torch.ones(2), "head.w": torch.ones(2)}
      >>> sched = fc.Schedule(p, fc.Freezer(names="body", until_step=1))
      >>> step_fn = fc.make_step(lambda q, x: ((q["body.w"] + q["head.w"]) * x).sum(), fc.sgd(0.5), sched)
      >>> state, cur = fc.sgd(0.5).init(p), None
      >>> for t in range(2):
      ...     p, state, loss, cur = step_fn(p, state, torch.ones(2), step=t, prev=cur)
      >>> p["body.w"], p["head.w"]
      (tensor([0.5000, 0.5000]), tensor([0., 0.]))
    """
    if isinstance(schedule, (list, tuple, Sweep)):  # one schedule per member: a sweep
        return make_sweep_step(loss_fn, opt, schedule)
    if isinstance(schedule, Curriculum):
        schedule = Schedule(schedule)
    if not isinstance(schedule, Schedule):
        raise TypeError(
            f"schedule must be a Schedule or a Curriculum, got {type(schedule).__name__}"
        )

    def step_fn(
        params: PyTree,
        state: dict[str, Any],
        batch: Any,
        *,
        step: int | None = None,
        epoch: int | None = None,
        prev: Curriculum | None = None,
    ) -> tuple[PyTree, dict[str, Any], torch.Tensor, Curriculum]:
        cur = schedule.at(step=step, epoch=epoch)
        state = apply_transition(opt, state, params, prev, cur, logger, step=step, epoch=epoch)
        masks = cur.masks
        trainable, frozen = partition(params, masks)

        def loss_of(part: dict) -> torch.Tensor:
            return loss_fn(combine(part, frozen, like=params), batch)

        if trainable:
            grads, loss = torch.func.grad_and_value(loss_of)(trainable)
        else:
            loss, grads = loss_fn(params, batch), {}
        new_params, new_state = opt.update(params, grads, state, masks, cur.coeffs, donate=donate)
        return new_params, new_state, loss, cur

    step_fn.schedule = schedule
    return step_fn
