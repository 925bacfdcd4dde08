"""The one validator of hyperparameters (optimizers and schedules): numbers, betas, flags."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any


def number(
    where: str,
    name: str,
    value: Any,
    *,
    low: float | None = 0.0,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a float, checked to be a finite real number in the given interval.

    Args:
      where: the factory's name, for the message (e.g. ``"fc.rmsprop"``).
      name: the keyword's name.
      value: what the caller passed.
      low: lower bound (``None``: unbounded).
      high: upper bound (``None``: unbounded).
      low_open: exclude ``low`` itself.
      high_open: exclude ``high`` itself.

    Returns:
      ``float(value)``.

    Example:
      >>> number("fc.rmsprop", "alpha", 0.99, high=1.0)
      0.99
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: {name} must be a number, got {type(value).__name__}: {value!r}")
    v = float(value)
    bad = not math.isfinite(v)
    if low is not None:
        bad = bad or (v <= low if low_open else v < low)
    if high is not None:
        bad = bad or (v >= high if high_open else v > high)
    if bad:
        lo = "" if low is None else f"{'(' if low_open else '['}{low}"
        hi = "" if high is None else f"{high}{')' if high_open else ']'}"
        interval = (
            f"in {lo}, {hi}"
            if low is not None and high is not None
            else (f">{'' if low_open else '='} {low}" if high is None else f"<= {high}")
        )
        raise ValueError(f"{where}: {name} must be finite and {interval}, got {value!r}")
    return v


def betas(where: str, value: Any, name: str = "betas") -> tuple[float, float]:
    """A pair of coefficients in ``[0, 1)``.

    Args:
      where: the factory's name.
      value: what the caller passed.
      name: the keyword's name.

    Returns:
      ``(beta1, beta2)`` as floats.

    Example:
      >>> betas("fc.adamax", (0.9, 0.999))
      (0.9, 0.999)
    """
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{where}: {name} must be a pair (beta1, beta2), got {value!r}")
    return tuple(  # type: ignore[return-value]
        number(where, f"{name}[{i}]", b, low=0.0, high=1.0, high_open=True)
        for i, b in enumerate(value)
    )


def flag(where: str, name: str, value: Any) -> bool:
    """A bool (``True`` / ``False`` only, not 0 / 1).

    Args:
      where: the factory's name.
      name: the keyword's name.
      value: what the caller passed.

    Returns:
      ``value``.

    Example:
      >>> flag("fc.rmsprop", "centered", True)
      True
    """
    if not isinstance(value, bool):
        raise TypeError(f"{where}: {name} must be a bool, got {type(value).__name__}: {value!r}")
    return value


def choice(where: str, name: str, value: Any, options: Sequence[Any]) -> Any:
    """One of ``options``.

    Args:
      where: the factory's name.
      name: the keyword's name.
      value: what the caller passed.
      options: the accepted values.

    Returns:
      ``value``.

    Example:
      >>> choice("fc.one_cycle", "anneal_strategy", "cos", ("cos", "linear"))
      'cos'
    """
    if value not in options:
        raise ValueError(f"{where}: {name} must be one of {list(options)}, got {value!r}")
    return value
