"""The reference engine: the rule's pure per-leaf ``step``, one leaf at a time.

It is the only engine under ``torch.func`` transforms (the ``_foreach`` and fused kernels
have no batching rule), under ``torch.compile``, for ``differentiable=True`` and for
dynamic masks; the other engines fall back to it for leaves they cannot take.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from . import Job, keep_flag

Tensor = torch.Tensor
_HALF = (torch.float16, torch.bfloat16)


def leaf_step(rule: Any, p: Tensor, g: Tensor, bufs: tuple, count: Any, lr: Any, maximize: bool):
    """``rule.step`` with the optimizer-level conventions: ``maximize`` negates the grad;
    float16 / bfloat16 leaves compute in float32 (their buffers of the leaf's dtype too)
    and are cast back, as torch's fused kernels do."""
    if maximize:
        g = -g
    dt = p.dtype
    if dt not in _HALF:
        return rule.step(p, g, bufs, count, lr)
    up = tuple(b.float() if b.dtype == dt else b for b in bufs)
    new_p, new_bufs = rule.step(p.float(), g.float(), up, count, lr)
    back = tuple(nb.to(b.dtype) if nb.dtype != b.dtype else nb for nb, b in zip(new_bufs, bufs))
    return new_p.to(dt), back


def _same(x: Any) -> Any:
    return x


def _over(x: Any, p: Tensor) -> Any:
    """A per-member value (shape ``(E,)``) shaped to broadcast over its stacked leaf.

    Under ``vmap`` it is a 0-d tensor, which never promotes the leaf's dtype; here it has
    a dimension, so a floating one is cast to the leaf's compute dtype first (float32,
    float64 for float64 leaves): a float64 schedule value is rounded to float32 before
    the step instead of where it meets the leaf (the same to float32 rounding)."""
    if isinstance(x, Tensor) and 0 < x.dim() < p.dim():
        if x.is_floating_point():
            x = x.to(torch.float64 if p.dtype == torch.float64 else torch.float32)
        return x.reshape(x.shape + (1,) * (p.dim() - x.dim()))
    return x


def run(
    job: Job,
    *,
    transformed: bool,
    incremented: bool,
    dyn: dict[int, Tensor],
    members: bool = False,
) -> None:
    """Update ``job.idx``. ``incremented``: the counts already include this update.
    ``dyn``: leaves whose mask is a bool tensor (per member under vmap): where it is False
    the param, buffers and count come back bit-identical. ``members``: the leaves are
    stacked ensembles (`Optimizer.update_members`): counts, rates and masks of shape
    ``(E,)`` broadcast over each member's slice, the arithmetic of ``vmap``."""
    rule, maximize = job.rule, job.maximize
    for i in job.idx:
        p, g = job.leaves[i], job.grads[i]
        bufs = tuple(b[i] for b in job.cols)
        count, lr = job.counts[i], job.lr_of[i]
        at = functools.partial(_over, p=p) if members else _same
        m = dyn.get(i)
        if m is None:
            new_count = count if incremented else count + 1
            new_p, new_bufs = leaf_step(rule, p, g, bufs, at(new_count), at(lr), maximize)
        else:
            new_count = torch.where(m, count + 1, count)
            safe = torch.where(m, count + 1, torch.ones_like(count))  # no 0-count math
            new_p, new_bufs = leaf_step(rule, p, g, bufs, at(safe), at(lr), maximize)
            m = at(m)
            new_p = torch.where(m, new_p, p)
            new_bufs = tuple(torch.where(m, nb, b) for nb, b in zip(new_bufs, bufs))
        job.leaves[i] = new_p if transformed else keep_flag(new_p, p)
        job.counts[i] = new_count
        for col, nb in zip(job.cols, new_bufs):
            col[i] = nb
