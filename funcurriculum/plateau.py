"""A functional reduce-on-plateau: torch.optim.lr_scheduler.ReduceLROnPlateau's logic with
its state in the optimizer state dict.

`ReduceOnPlateau.init` adds ``"lr_scale"`` (a float64 0-d tensor, 1.0 at first, which the
optimizer multiplies its scheduled lr by) and ``"plateau"`` (its counters) to an
optimizer state; `ReduceOnPlateau.step` reads a metric and returns the state with both
updated. Everything is tensor ops (no ``.item()``), so a metric tensor never syncs, and
the state survives `fc.save` / `fc.load` like the rest of the optimizer state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from . import _hparams as V

Tensor = torch.Tensor

SCALE = "lr_scale"
KEY = "plateau"


@dataclass(frozen=True)
class ReduceOnPlateau:
    """Multiply the lr by ``factor`` when a metric stops improving (see `reduce_on_plateau`).

    Attributes:
      mode: ``"min"`` or ``"max"``.
      factor: the reduction factor (``< 1``).
      patience: bad steps tolerated before a reduction.
      threshold: what counts as an improvement (see ``threshold_mode``).
      threshold_mode: ``"rel"`` or ``"abs"``.
      cooldown: steps after a reduction during which bad steps are not counted.
      min_scale: the floor of ``lr_scale``.
      eps: a reduction smaller than this (in scale units) is skipped.

    Example:
      >>> import torch, funcurriculum as fc
      >>> plateau = fc.reduce_on_plateau(patience=0)
      >>> state = plateau.init({})
      >>> for metric in [1.0, 2.0]:
      ...     state = plateau.step(state, metric)
      >>> float(state["lr_scale"])
      0.1
    """

    mode: str = "min"
    factor: float = 0.1
    patience: int = 10
    threshold: float = 1e-4
    threshold_mode: str = "rel"
    cooldown: int = 0
    min_scale: float = 0.0
    eps: float = 1e-8

    def init(self, state: dict[str, Any]) -> dict[str, Any]:
        """``state`` with a fresh ``"lr_scale"`` (1.0) and ``"plateau"`` counters added.

        Args:
          state: an optimizer state dict (from ``opt.init``); not modified.

        Returns:
          A new dict: ``state``'s entries plus the plateau's.
        """
        if not isinstance(state, dict):
            raise TypeError(f"state must be an optimizer state dict, got {type(state).__name__}")
        out = dict(state)
        out[SCALE] = torch.ones((), dtype=torch.float64)
        out[KEY] = {
            "best": torch.tensor(
                math.inf if self.mode == "min" else -math.inf, dtype=torch.float64
            ),
            "num_bad_epochs": torch.zeros((), dtype=torch.int64),
            "cooldown_counter": torch.zeros((), dtype=torch.int64),
            "last_epoch": torch.zeros((), dtype=torch.int64),
        }
        return out

    def _better(self, a: Tensor, best: Tensor) -> Tensor:
        t = self.threshold
        if self.mode == "min":
            return a < (best * (1 - t) if self.threshold_mode == "rel" else best - t)
        return a > (best * (t + 1) if self.threshold_mode == "rel" else best + t)

    def step(self, state: dict[str, Any], metric: float | Tensor) -> dict[str, Any]:
        """Record one metric value (e.g. a validation loss), as
        ``ReduceLROnPlateau.step(metric)``.

        Args:
          state: a state with the plateau's entries (from `init`); not modified.
          metric: a number or a 0-d tensor.

        Returns:
          A new dict with ``"lr_scale"`` and ``"plateau"`` updated.
        """
        if not isinstance(state, dict) or SCALE not in state or KEY not in state:
            raise ValueError(
                "state has no plateau entries ('lr_scale', 'plateau'): call "
                "plateau.init(state) once after opt.init"
            )
        if isinstance(metric, Tensor):
            if metric.numel() != 1:
                raise ValueError(f"metric must be a number or a 1-element tensor, got {metric!r}")
            a = metric.detach().reshape(()).to(torch.float64)
        elif isinstance(metric, bool) or not isinstance(metric, (int, float)):
            raise TypeError(f"metric must be a number or a tensor, got {type(metric).__name__}")
        else:
            a = torch.tensor(float(metric), dtype=torch.float64)
        c = state[KEY]
        better = self._better(a, c["best"])
        best = torch.where(better, a, c["best"])
        bad = torch.where(better, 0, c["num_bad_epochs"] + 1)
        in_cooldown = c["cooldown_counter"] > 0
        cooldown = torch.where(in_cooldown, c["cooldown_counter"] - 1, c["cooldown_counter"])
        bad = torch.where(in_cooldown, 0, bad)
        reduce = bad > self.patience
        old = state[SCALE]
        new = torch.clamp(old * self.factor, min=self.min_scale)
        scale = torch.where(reduce & (old - new > self.eps), new, old)
        cooldown = torch.where(reduce, self.cooldown, cooldown)
        bad = torch.where(reduce, 0, bad)
        out = dict(state)
        out[SCALE] = scale
        out[KEY] = {
            "best": best,
            "num_bad_epochs": bad,
            "cooldown_counter": cooldown,
            "last_epoch": c["last_epoch"] + 1,
        }
        return out


def reduce_on_plateau(
    mode: str = "min",
    factor: float = 0.1,
    patience: int = 10,
    threshold: float = 1e-4,
    threshold_mode: str = "rel",
    cooldown: int = 0,
    min_scale: float = 0.0,
    eps: float = 1e-8,
) -> ReduceOnPlateau:
    """torch.optim.lr_scheduler.ReduceLROnPlateau as a pure function of the optimizer state.

    ``plateau.init(state)`` adds ``"lr_scale"`` (1.0) and counters; each
    ``plateau.step(state, metric)`` applies torch's rule (a reduction multiplies
    ``lr_scale`` by ``factor`` after more than ``patience`` steps without improvement);
    the optimizer multiplies its (scheduled) lr by ``state["lr_scale"]``. torch's
    ``min_lr`` and ``eps`` are in lr units; here ``min_scale`` and ``eps`` are in scale
    units: with a constant base lr, ``min_scale = min_lr / lr`` and ``eps = eps_torch / lr``
    give torch's behaviour exactly.

    Args:
      mode: ``"min"`` (the metric should fall, e.g. a loss) or ``"max"`` (e.g. accuracy).
      factor: the reduction factor (``0 <= factor < 1``).
      patience: bad steps tolerated before a reduction.
      threshold: what counts as an improvement.
      threshold_mode: ``"rel"`` (better than ``best * (1 -/+ threshold)``) or ``"abs"``
        (better than ``best -/+ threshold``).
      cooldown: steps after a reduction during which bad steps are not counted.
      min_scale: the floor of ``lr_scale``.
      eps: a reduction smaller than this is skipped.

    Returns:
      A `ReduceOnPlateau`.

    Example:
      >>> import torch, funcurriculum as fc
      >>> opt, plateau = fc.sgd(0.1), fc.reduce_on_plateau(patience=1, factor=0.5)
      >>> state = plateau.init(opt.init({"w": torch.ones(2)}))
      >>> for loss in [1.0, 1.0, 1.0]:
      ...     state = plateau.step(state, loss)
      >>> float(state["lr_scale"])
      0.5
    """
    w = "fc.reduce_on_plateau"
    V.choice(w, "mode", mode, ("min", "max"))
    V.choice(w, "threshold_mode", threshold_mode, ("rel", "abs"))
    for name, v in (("patience", patience), ("cooldown", cooldown)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{w}: {name} must be an int >= 0, got {v!r}")
    return ReduceOnPlateau(
        mode=mode,
        factor=V.number(w, "factor", factor, high=1.0, high_open=True),
        patience=patience,
        threshold=V.number(w, "threshold", threshold),
        threshold_mode=threshold_mode,
        cooldown=cooldown,
        min_scale=V.number(w, "min_scale", min_scale),
        eps=V.number(w, "eps", eps),
    )
