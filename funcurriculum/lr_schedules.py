"""Learning-rate schedules: ``step -> lr`` functions of the completed-update count.

Each schedule accepts a Python ``int`` (returns a ``float``) or an integer tensor
(returns a tensor built with tensor ops only), so the same schedule works in a plain
loop, under ``torch.func.vmap`` (where the step count is a batched tensor) and under
``torch.compile``. ``step`` is the number of completed updates: 0 at the first
update, like ``LambdaLR`` and optax.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

Schedule = Callable[[int | torch.Tensor], float | torch.Tensor]


def _float(step):
    return step.to(torch.float64) if isinstance(step, torch.Tensor) else float(step)


def _minimum(x, bound: float):
    return torch.clamp(x, max=bound) if isinstance(x, torch.Tensor) else min(x, bound)


def _cos(x):
    return torch.cos(x) if isinstance(x, torch.Tensor) else math.cos(x)


def constant(value: float) -> Schedule:
    """A constant learning rate.

    Args:
      value: the learning rate.

    Returns:
      A schedule ``step -> value``.

    Example:
      >>> import funcurriculum as fc
      >>> fc.constant(0.1)(7)
      0.1
    """

    def schedule(step):
        if isinstance(step, torch.Tensor):
            return torch.full_like(step, value, dtype=torch.float64)
        return float(value)

    return schedule


def step_lr(base: float, step_size: int, gamma: float = 0.1) -> Schedule:
    """``base * gamma ** (step // step_size)``, as ``torch.optim.lr_scheduler.StepLR``.

    Args:
      base: initial learning rate.
      step_size: number of updates between decays.
      gamma: decay factor.

    Returns:
      A schedule.

    Example:
      >>> import funcurriculum as fc
      >>> fc.step_lr(1.0, step_size=10, gamma=0.5)(25)
      0.25
    """
    if step_size <= 0:
        raise ValueError(f"step_size must be positive, got {step_size}")

    def schedule(step):
        if isinstance(step, torch.Tensor):
            k = torch.div(step, step_size, rounding_mode="floor").to(torch.float64)
            return base * torch.pow(torch.tensor(gamma, dtype=torch.float64), k)
        return base * gamma ** (int(step) // step_size)

    return schedule


def cosine(base: float, total_steps: int, final: float = 0.0) -> Schedule:
    """Cosine decay from ``base`` to ``final`` over ``total_steps``, then ``final``.

    Args:
      base: initial learning rate.
      total_steps: length of the decay.
      final: learning rate at and after ``total_steps``.

    Returns:
      A schedule.

    Example:
      >>> import funcurriculum as fc
      >>> fc.cosine(1.0, 10)(5)
      0.5
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")

    def schedule(step):
        t = _minimum(_float(step), float(total_steps)) / total_steps
        return final + (base - final) * 0.5 * (1.0 + _cos(math.pi * t))

    return schedule


def linear_warmup(base: float, warmup_steps: int, start: float = 0.0) -> Schedule:
    """Linear ramp from ``start`` to ``base`` over ``warmup_steps``, then ``base``.

    Args:
      base: learning rate after the warm-up.
      warmup_steps: length of the ramp.
      start: learning rate at step 0.

    Returns:
      A schedule.

    Example:
      >>> import funcurriculum as fc
      >>> fc.linear_warmup(1.0, 4)(1)
      0.25
    """
    if warmup_steps <= 0:
        raise ValueError(f"warmup_steps must be positive, got {warmup_steps}")

    def schedule(step):
        t = _minimum(_float(step), float(warmup_steps)) / warmup_steps
        return start + (base - start) * t

    return schedule


def join(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Chain schedules: ``schedules[i]`` runs from ``boundaries[i-1]``, seeing ``step - boundaries[i-1]``.

    Args:
      schedules: ``n`` schedules.
      boundaries: ``n - 1`` increasing step counts where the next schedule starts.

    Returns:
      A schedule.

    Example:
      >>> import funcurriculum as fc
      >>> s = fc.join([fc.linear_warmup(1.0, 10), fc.cosine(1.0, 100)], [10])
      >>> s(5), s(10)
      (0.5, 1.0)
    """
    schedules = list(schedules)
    boundaries = [int(b) for b in boundaries]
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(
            f"join needs len(boundaries) == len(schedules) - 1, got {len(boundaries)} and {len(schedules)}"
        )
    if any(b1 >= b2 for b1, b2 in zip(boundaries, boundaries[1:])) or any(
        b < 0 for b in boundaries
    ):
        raise ValueError(f"boundaries must be non-negative and increasing, got {boundaries}")
    starts = [0] + boundaries

    def schedule(step):
        if isinstance(step, torch.Tensor):
            out = torch.as_tensor(schedules[0](step), dtype=torch.float64)
            for s, b in zip(schedules[1:], boundaries):
                val = torch.as_tensor(s(step - b), dtype=torch.float64)
                out = torch.where(step >= b, val, out)
            return out
        k = sum(1 for b in boundaries if step >= b)
        return schedules[k](step - starts[k])

    return schedule


def as_schedule(lr: float | Schedule) -> Schedule:
    """A schedule for ``lr`` (a number becomes :func:`constant`)."""
    if callable(lr):
        return lr
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise TypeError(f"lr must be a float or a schedule step -> lr, got {type(lr).__name__}")
    if not math.isfinite(lr) or lr < 0:
        raise ValueError(f"lr must be finite and >= 0, got {lr}")
    return constant(float(lr))
