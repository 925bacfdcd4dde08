"""The one curriculum table renderer (``Curriculum.summary`` and ``fc.summary``)."""

from __future__ import annotations

from collections.abc import Sequence

from .param_index import ParamIndex


def _cells(
    index: ParamIndex,
    frozen: Sequence[bool],
    coeffs: Sequence[float],
    name: str,
    base_lr: float | None,
) -> tuple[str, ...]:
    idx = index.leaves_under[name]
    fz = [frozen[i] for i in idx]
    state = "yes" if all(fz) else ("partial" if any(fz) else "no")
    cs = sorted({coeffs[i] for i in idx})
    coeff = f"{cs[0]:g}" if len(cs) == 1 else "mixed"
    row = (state, coeff, f"{sum(index.numels[i] for i in idx):,}")
    if base_lr is not None:
        live = {coeffs[i] for i in idx if not frozen[i]}
        if not live:
            eff = "-"
        elif len(live) > 1:
            eff = "mixed"
        else:
            eff = f"{base_lr * live.pop():.4g}"
        row += (eff,)
    return row


def rows(
    index: ParamIndex, frozen: Sequence[bool], coeffs: Sequence[float]
) -> list[tuple[str, str, str, int]]:
    """(name, frozen, coefficient, #params) for every name of ``index``."""
    out = []
    for n in index.nodes:
        state, coeff, _ = _cells(index, frozen, coeffs, n, None)
        out.append((n, state, coeff, sum(index.numels[i] for i in index.leaves_under[n])))
    return out


def render_table(
    index: ParamIndex,
    frozen: Sequence[bool],
    coeffs: Sequence[float],
    base_lr: float | None = None,
) -> str:
    """The table: name, frozen, coeff, params[, lr][, class], tied weights marked.

    Args:
      index: the curriculum's parameter index.
      frozen: per-leaf frozen flags.
      coeffs: per-leaf coefficients.
      base_lr: adds an ``lr`` column (``base_lr * coefficient``; ``-`` for frozen rows,
        ``mixed`` when a row's trainable leaves differ).

    Returns:
      The table as a string.
    """
    has_cls = index.has_classes
    head = ("name", "frozen", "coeff", "params")
    head += ("lr",) if base_lr is not None else ()
    head += ("class",) if has_cls else ()
    table = [head]
    for n in index.nodes:
        name = n
        if n in index.tied:
            name = f"{n} (tied: {', '.join(index.tied[n])})"
        elif n in index.aliases:
            name = f"{n} (= {index.aliases[n]})"
        row = (name, *_cells(index, frozen, coeffs, n, base_lr))
        if has_cls:
            cls = index.class_of(n)
            row += (cls.rsplit(".", 1)[-1] if cls else "",)
        table.append(row)
    ncol = len(head)
    widths = [max(len(r[j]) for r in table) for j in range(ncol)]
    lines = [
        "  ".join(
            (r[j].rjust(widths[j]) if j == 3 else r[j].ljust(widths[j])) for j in range(ncol)
        ).rstrip()
        for r in table
    ]
    lines.insert(1, "-" * max(len(x) for x in lines))
    return "\n".join(lines)
