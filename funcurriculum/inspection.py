"""Inspection: a curriculum table with effective LRs, and a schedule heatmap (matplotlib)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from ._tree import prefixes
from .curriculum import Curriculum
from .lr_schedules import Schedule as LRSchedule
from .lr_schedules import as_schedule
from .schedule import Schedule


def _lr_value(lr: float | LRSchedule | None, step: int) -> float:
    if lr is None:
        return 1.0
    value = as_schedule(lr)(step)
    return float(value)


def _effective(cur: Curriculum, leaves: Sequence[int], base: float) -> float:
    """Largest effective lr among the trainable leaves (NaN when all are frozen)."""
    frozen = cur.frozen_leaves
    coeffs = cur.leaf_coefficients
    live = [coeffs[i] for i in leaves if not frozen[i]]
    return base * max(live) if live else math.nan


def summary(curriculum: Curriculum, lr: float | LRSchedule | None = None, step: int = 0) -> str:
    """A table of the curriculum: name, frozen, coefficient, #params, and effective lr.

    The table of `Curriculum.summary` (one renderer) with an ``lr`` column
    (``lr(step) * coefficient``; ``-`` for frozen rows, ``mixed`` when a row's trainable
    leaves differ) when ``lr`` is given; a curriculum from ``from_module`` also shows
    the ``class`` column and tied weights.

    Args:
      curriculum: the curriculum (e.g. ``schedule.at(step=..., epoch=...)``).
      lr: the base learning rate, a float or a schedule ``step -> lr``.
      step: the step at which to evaluate ``lr``.

    Returns:
      The table as a string.

    Example:
      >>> import torch, funcurriculum as fc
      >>> cur = fc.Curriculum({"body.w": torch.zeros(3), "head.w": torch.zeros(2)})
      >>> print(fc.summary(cur.freeze("body").set_lr_coefficient(0.5, "head"), lr=0.1))
      name    frozen  coeff  params  lr
      -----------------------------------
      body    yes     1           3  -
      body.w  yes     1           3  -
      head    no      0.5         2  0.05
      head.w  no      0.5         2  0.05
    """
    if not isinstance(curriculum, Curriculum):
        raise TypeError(f"summary needs a Curriculum, got {type(curriculum).__name__}")
    if lr is None:
        return curriculum.summary()
    return curriculum.summary(lr=_lr_value(lr, step))


def _default_rows(cur: Curriculum) -> list[str]:
    return list(dict.fromkeys((prefixes(p) or [p])[-1] for p in cur.paths))


def plot_schedule(
    schedule: Schedule,
    steps: int | Iterable[int],
    lr: float | LRSchedule | None = None,
    path: str | os.PathLike[str] = "schedule.png",
    *,
    steps_per_epoch: int | None = None,
    layers: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Save a heatmap of the effective LR per layer over steps, frozen spans shown.

    Each row is a layer (by default each parameter-owning module, in traversal
    order), each column a step; the colour is ``lr(step) * coefficient`` (the largest
    over the row's trainable leaves) and frozen cells are drawn grey. Needs
    matplotlib (``pip install "funcurriculum[plot]"``); it draws on its own figure
    without pyplot, so no global state changes.

    Args:
      schedule: the ``Schedule``.
      steps: an int ``n`` (steps ``0 .. n-1``) or the steps to show.
      lr: the base learning rate, a float or a schedule ``step -> lr`` (default 1.0,
        which shows the coefficients).
      path: the PNG file to write.
      steps_per_epoch: gives the epoch of each step (``step // steps_per_epoch``);
        needed when a rule's timing reads epochs.
      layers: the rows (layer names or parameter paths).
      title: the figure title.

    Returns:
      The path written.

    Raises:
      ImportError: matplotlib is not installed.

    Example:
      >>> import os, tempfile, torch, funcurriculum as fc
      >>> cur = fc.Curriculum({"body.w": torch.zeros(2), "head.w": torch.zeros(2)})
      >>> sched = fc.Schedule(cur, fc.Freezer(names="body", until_step=5))
      >>> out = fc.plot_schedule(sched, 10, lr=0.1, path=os.path.join(tempfile.mkdtemp(), "s.png"))
      >>> out.stat().st_size > 0
      True
    """
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "fc.plot_schedule needs matplotlib: pip install 'funcurriculum[plot]' "
            "(or pip install matplotlib)"
        ) from exc
    if not isinstance(schedule, Schedule):
        raise TypeError(f"plot_schedule needs a Schedule, got {type(schedule).__name__}")
    xs = list(range(steps)) if isinstance(steps, int) else [int(s) for s in steps]
    if not xs:
        raise ValueError("plot_schedule: no steps to plot")
    if steps_per_epoch is not None and (
        isinstance(steps_per_epoch, bool)
        or not isinstance(steps_per_epoch, int)
        or steps_per_epoch < 1
    ):
        raise ValueError(f"steps_per_epoch must be a positive int, got {steps_per_epoch!r}")
    base = schedule.curriculum
    names = list(layers) if layers is not None else _default_rows(base)
    under = base.index.leaves_under
    unknown = [n for n in names if n not in under]
    if unknown:
        raise ValueError(f"plot_schedule layers: unknown names {unknown}")

    grid = [[math.nan] * len(xs) for _ in names]
    for j, s in enumerate(xs):
        epoch = None if steps_per_epoch is None else s // steps_per_epoch
        cur = schedule.at(step=s, epoch=epoch)
        lr_s = _lr_value(lr, s)
        for i, n in enumerate(names):
            grid[i][j] = _effective(cur, under[n], lr_s)

    import numpy as np

    data = np.ma.masked_invalid(np.array(grid, dtype=float))
    fig = Figure(figsize=(max(6.0, min(16.0, 0.02 * len(xs) + 5)), 1.0 + 0.35 * len(names)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#cccccc")
    extent = (xs[0] - 0.5, xs[-1] + 0.5, len(names) - 0.5, -0.5)
    im = ax.imshow(data, aspect="auto", cmap=cmap, interpolation="nearest", extent=extent)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names)
    ax.set_xlabel("step" if steps_per_epoch is None else f"step ({steps_per_epoch} per epoch)")
    ax.set_title(title or "effective learning rate per layer (grey: frozen)")
    fig.colorbar(im, ax=ax, label="lr x coefficient")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, format="png")
    return out
