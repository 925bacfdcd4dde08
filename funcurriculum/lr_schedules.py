"""Learning-rate schedules: ``step -> lr`` functions of the completed-update count.

Each schedule accepts a Python ``int`` (returns a ``float``) or an integer tensor
(returns a tensor built with tensor ops only), so the same schedule works in a plain
loop, under ``torch.func.vmap`` (where the step count is a batched tensor) and under
``torch.compile``. ``step`` is the number of completed updates: 0 at the first
update, like ``LambdaLR`` and optax.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence

import torch

from . import _hparams as V

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
    """A schedule for ``lr`` (a number becomes ``constant``)."""
    if callable(lr):
        return lr
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise TypeError(f"lr must be a float or a schedule step -> lr, got {type(lr).__name__}")
    if not math.isfinite(lr) or lr < 0:
        raise ValueError(f"lr must be finite and >= 0, got {lr}")
    return constant(float(lr))


# -- torch.optim.lr_scheduler counterparts ------------------------------------------------
# Each takes the completed-update count ``t`` and returns the lr torch's scheduler holds
# after ``t`` calls of ``scheduler.step()``. Python ints use Python floats (torch's
# schedulers compute in Python floats); tensors use float64 tensor ops.


def _is_t(x) -> bool:
    return isinstance(x, torch.Tensor)


def _pow(base: float, x):
    return torch.pow(torch.tensor(base, dtype=torch.float64), x) if _is_t(x) else base**x


def _where(cond, a, b):
    if _is_t(cond):
        return torch.where(cond, torch.as_tensor(a, dtype=torch.float64), b)
    return a if cond else b


def _int_steps(where: str, name: str, value, *, positive: bool = True) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where}: {name} must be an int, got {type(value).__name__}: {value!r}")
    if value < (1 if positive else 0):
        raise ValueError(f"{where}: {name} must be {'> 0' if positive else '>= 0'}, got {value}")
    return value


def exponential_lr(base: float, gamma: float) -> Schedule:
    """``base * gamma ** step``, as ``torch.optim.lr_scheduler.ExponentialLR``.

    Args:
      base: initial learning rate.
      gamma: decay factor per update.

    Returns:
      A schedule.

    Example:
      >>> import funcurriculum as fc
      >>> fc.exponential_lr(1.0, 0.5)(3)
      0.125
    """
    w = "fc.exponential_lr"
    base, gamma = V.number(w, "base", base), V.number(w, "gamma", gamma)

    def schedule(step):
        return base * _pow(gamma, _float(step))

    return schedule


def multistep_lr(base: float, milestones: Sequence[int], gamma: float = 0.1) -> Schedule:
    """``base * gamma ** (milestones reached)``, as ``torch.optim.lr_scheduler.MultiStepLR``.

    A milestone listed twice decays twice (torch keeps a ``Counter``).

    Args:
      base: initial learning rate.
      milestones: update counts at which the lr is multiplied by ``gamma``.
      gamma: decay factor.

    Returns:
      A schedule.

    Example:
      >>> import funcurriculum as fc
      >>> s = fc.multistep_lr(1.0, [2, 5], gamma=0.5)
      >>> [s(t) for t in range(7)]
      [1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]
    """
    w = "fc.multistep_lr"
    base, gamma = V.number(w, "base", base), V.number(w, "gamma", gamma)
    if isinstance(milestones, (str, bytes)) or not isinstance(milestones, Sequence):
        raise TypeError(f"{w}: milestones must be a list of ints, got {milestones!r}")
    ms = sorted(_int_steps(w, "milestones[i]", m, positive=False) for m in milestones)

    def schedule(step):
        if _is_t(step):
            k = torch.zeros_like(step, dtype=torch.float64)
            for m in ms:
                k = k + (step >= m).to(torch.float64)
            return base * _pow(gamma, k)
        return base * gamma ** bisect.bisect_right(ms, int(step))

    return schedule


def linear_lr(
    base: float, start_factor: float = 1.0 / 3, end_factor: float = 1.0, total_iters: int = 5
) -> Schedule:
    """``base`` times a factor moving linearly from ``start_factor`` to ``end_factor`` over
    ``total_iters`` updates, then ``end_factor``, as ``torch.optim.lr_scheduler.LinearLR``.

    Args:
      base: the learning rate the factors multiply.
      start_factor: factor at step 0 (in ``(0, 1]``).
      end_factor: factor from ``total_iters`` on (in ``[0, 1]``).
      total_iters: length of the ramp.

    Returns:
      A schedule.

    Example:
      >>> import funcurriculum as fc
      >>> s = fc.linear_lr(1.0, start_factor=0.5, total_iters=4)
      >>> [s(t) for t in range(6)]
      [0.5, 0.625, 0.75, 0.875, 1.0, 1.0]
    """
    w = "fc.linear_lr"
    base = V.number(w, "base", base)
    start = V.number(w, "start_factor", start_factor, low=0.0, high=1.0, low_open=True)
    end = V.number(w, "end_factor", end_factor, low=0.0, high=1.0)
    total = _int_steps(w, "total_iters", total_iters)

    def schedule(step):
        t = _minimum(_float(step), float(total))
        return base * (start + (end - start) * t / total)

    return schedule


def polynomial_lr(base: float, total_iters: int = 5, power: float = 1.0) -> Schedule:
    """``base * (1 - min(step, total_iters) / total_iters) ** power``, as
    ``torch.optim.lr_scheduler.PolynomialLR`` (0 from ``total_iters`` on).

    Args:
      base: initial learning rate.
      total_iters: length of the decay.
      power: exponent of the decay.

    Returns:
      A schedule.

    Example:
      >>> import funcurriculum as fc
      >>> s = fc.polynomial_lr(1.0, total_iters=4, power=2.0)
      >>> [s(t) for t in range(6)]
      [1.0, 0.5625, 0.25, 0.0625, 0.0, 0.0]
    """
    w = "fc.polynomial_lr"
    base = V.number(w, "base", base)
    total = _int_steps(w, "total_iters", total_iters)
    power = V.number(w, "power", power)

    def schedule(step):
        t = _minimum(_float(step), float(total))
        return base * (1.0 - t / total) ** power

    return schedule


def cosine_warm_restarts(base: float, t_0: int, t_mult: int = 1, eta_min: float = 0.0) -> Schedule:
    """Cosine annealing from ``base`` to ``eta_min`` restarted every cycle, the cycles
    ``t_0``, ``t_0 * t_mult``, ``t_0 * t_mult**2``, ... updates long, as
    ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts`` stepped once per update.

    Args:
      base: learning rate at the start of each cycle.
      t_0: length of the first cycle.
      t_mult: growth factor of the cycle length (an int ``>= 1``).
      eta_min: the floor each cycle anneals to.

    Returns:
      A schedule.

    Example:
      >>> import funcurriculum as fc
      >>> s = fc.cosine_warm_restarts(1.0, t_0=2, t_mult=2)
      >>> [round(s(t), 3) for t in range(7)]
      [1.0, 0.5, 1.0, 0.854, 0.5, 0.146, 1.0]
    """
    w = "fc.cosine_warm_restarts"
    base, eta_min = V.number(w, "base", base), V.number(w, "eta_min", eta_min)
    t_0 = _int_steps(w, "t_0", t_0)
    t_mult = _int_steps(w, "t_mult", t_mult)

    def cycle_start(n):  # first update of cycle n (0-based)
        return t_0 * n if t_mult == 1 else t_0 * (_pow(float(t_mult), n) - 1) / (t_mult - 1)

    def schedule(step):
        if _is_t(step):
            t = step.to(torch.float64)
            if t_mult == 1:
                n = torch.floor(t / t_0)
            else:
                # the log's estimate, corrected by one either way where it rounded wrong
                n = torch.floor(torch.log(t / t_0 * (t_mult - 1) + 1) / math.log(t_mult))
                n = torch.where(t < cycle_start(n), n - 1, n)
                n = torch.where(t >= cycle_start(n + 1), n + 1, n)
            t_cur = t - cycle_start(n)
            t_i = t_0 * _pow(float(t_mult), n)
        else:
            t, n = int(step), 0
            if t_mult == 1:
                n = t // t_0
            else:
                while t >= t_0 * (t_mult ** (n + 1) - 1) // (t_mult - 1):
                    n += 1
            t_cur = t - (t_0 * n if t_mult == 1 else t_0 * (t_mult**n - 1) // (t_mult - 1))
            t_i = t_0 * t_mult**n
        return eta_min + (base - eta_min) * (1 + _cos(math.pi * t_cur / t_i)) / 2

    return schedule


def one_cycle(
    max_lr: float,
    total_steps: int,
    pct_start: float = 0.3,
    anneal_strategy: str = "cos",
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    three_phase: bool = False,
) -> Schedule:
    """The 1cycle policy, as ``torch.optim.lr_scheduler.OneCycleLR`` (the lr only: torch's
    ``cycle_momentum`` has no counterpart, pass ``cycle_momentum=False`` when comparing).

    From ``max_lr / div_factor`` up to ``max_lr`` over the first ``pct_start`` of
    ``total_steps``, then down to ``max_lr / div_factor / final_div_factor`` (with
    ``three_phase``: back to the initial lr first, then down). torch raises past
    ``total_steps``; so does an int step here, while a tensor step (vmap / compile, where
    nothing can raise) holds the value at ``total_steps``.

    Args:
      max_lr: the peak learning rate.
      total_steps: length of the cycle in updates.
      pct_start: fraction of the cycle spent increasing.
      anneal_strategy: ``"cos"`` or ``"linear"``.
      div_factor: initial lr = ``max_lr / div_factor``.
      final_div_factor: final lr = initial lr / ``final_div_factor``.
      three_phase: the three-phase variant (fast.ai's original).

    Returns:
      A schedule.

    Example:
      >>> import funcurriculum as fc
      >>> s = fc.one_cycle(1.0, total_steps=10, anneal_strategy="linear", div_factor=10.0)
      >>> round(s(0), 3), round(s(2), 3), round(s(9), 6)
      (0.1, 1.0, 1e-05)
    """
    w = "fc.one_cycle"
    max_lr = V.number(w, "max_lr", max_lr)
    total = _int_steps(w, "total_steps", total_steps)
    pct = V.number(w, "pct_start", pct_start, low=0.0, high=1.0)
    V.choice(w, "anneal_strategy", anneal_strategy, ("cos", "linear"))
    initial = max_lr / V.number(w, "div_factor", div_factor, low=0.0, low_open=True)
    final = initial / V.number(w, "final_div_factor", final_div_factor, low=0.0, low_open=True)
    V.flag(w, "three_phase", three_phase)
    if three_phase:
        phases = [
            (float(pct * total) - 1, initial, max_lr),
            (float(2 * pct * total) - 2, max_lr, initial),
            (total - 1.0, initial, final),
        ]
    else:
        phases = [(float(pct * total) - 1, initial, max_lr), (total - 1.0, max_lr, final)]

    def anneal(start, end, frac):
        if anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (_cos(math.pi * frac) + 1)
        return (end - start) * frac + start

    def schedule(step):
        if _is_t(step):
            t = torch.clamp(step.to(torch.float64), max=float(total))
            out, begin, done = torch.zeros_like(t), 0.0, torch.zeros_like(t, dtype=torch.bool)
            for i, (end_step, lo, hi) in enumerate(phases):
                here = ~done & ((t <= end_step) | (i == len(phases) - 1))
                out = torch.where(here, anneal(lo, hi, (t - begin) / (end_step - begin)), out)
                done = done | here
                begin = end_step
            return out
        t = int(step)
        if t > total:
            raise ValueError(
                f"fc.one_cycle: step {t} is past total_steps={total} (torch.optim's "
                "OneCycleLR raises too): raise total_steps or chain another schedule with fc.join"
            )
        begin = 0.0
        for i, (end_step, lo, hi) in enumerate(phases):
            if t <= end_step or i == len(phases) - 1:
                return anneal(lo, hi, (t - begin) / (end_step - begin))
            begin = end_step
        raise AssertionError("unreachable")  # pragma: no cover

    return schedule


def cyclic_lr(
    base_lr: float,
    max_lr: float,
    step_size_up: int = 2000,
    step_size_down: int | None = None,
    mode: str = "triangular",
    gamma: float = 1.0,
) -> Schedule:
    """A cyclical learning rate between ``base_lr`` and ``max_lr``, as
    ``torch.optim.lr_scheduler.CyclicLR`` (the lr only: torch's ``cycle_momentum`` has no
    counterpart, and a custom ``scale_fn`` is a plain function of the step here: write
    your own schedule).

    Args:
      base_lr: the lower bound of each cycle.
      max_lr: the upper bound of each cycle.
      step_size_up: updates spent increasing.
      step_size_down: updates spent decreasing (``None``: ``step_size_up``).
      mode: ``"triangular"``, ``"triangular2"`` (the amplitude halves every cycle) or
        ``"exp_range"`` (the amplitude times ``gamma ** step``).
      gamma: the ``"exp_range"`` decay.

    Returns:
      A schedule.

    Example:
      >>> import funcurriculum as fc
      >>> s = fc.cyclic_lr(0.0, 1.0, step_size_up=2, mode="triangular2")
      >>> [s(t) for t in range(9)]
      [0.0, 0.5, 1.0, 0.5, 0.0, 0.25, 0.5, 0.25, 0.0]
    """
    w = "fc.cyclic_lr"
    base_lr, max_lr = V.number(w, "base_lr", base_lr), V.number(w, "max_lr", max_lr)
    up = float(_int_steps(w, "step_size_up", step_size_up))
    down = up if step_size_down is None else float(_int_steps(w, "step_size_down", step_size_down))
    V.choice(w, "mode", mode, ("triangular", "triangular2", "exp_range"))
    gamma = V.number(w, "gamma", gamma)
    total = up + down
    ratio = up / total

    def schedule(step):
        t = _float(step)
        if _is_t(t):
            cycle = torch.floor(1 + t / total)
        else:
            cycle = math.floor(1 + t / total)
        x = 1.0 + t / total - cycle
        scale = _where(x <= ratio, x / ratio, (x - 1) / (ratio - 1))
        height = (max_lr - base_lr) * scale
        if mode == "triangular":
            return base_lr + height * 1.0
        if mode == "triangular2":
            return base_lr + height * (1 / _pow(2.0, cycle - 1))
        return base_lr + height * _pow(gamma, t)

    return schedule
