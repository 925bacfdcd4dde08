"""The generic engine: any rule's ``step``, eagerly, fast without kernels.

An elementwise rule (``Optimizer(..., elementwise=True)``) runs on flat chunks of about
``wave`` elements of each contiguous leaf: every chunk's params, grads, buffers and the
step's temporaries stay in cache, so the step's many small ops cost about one pass over
memory instead of one pass each (the ops are the rule's own: no kernel is needed).
The pure update writes each chunk into fresh output buffers; a donated update writes it
back over the inputs. Other rules (factored or matrix-wise steps) run leaf by leaf.
See docs/performance.md for measurements.
"""

from __future__ import annotations

import torch

from .._validate import leaf_shaped
from . import Job, keep_flag
from .reference import leaf_step

Tensor = torch.Tensor


def run(job: Job, *, elementwise: bool) -> None:
    """Update ``job.idx`` (counts already incremented)."""
    rule, wave = job.rule, max(int(job.wave), 1)
    with torch.no_grad():
        for i in job.idx:
            p, g = job.leaves[i], job.grads[i]
            bufs = tuple(b[i] for b in job.cols)
            count, lr = job.counts[i], job.lr_of[i]
            whole = not leaf_shaped(p, bufs) or not all(t.is_contiguous() for t in (p, g, *bufs))
            if not elementwise or p.numel() <= wave or whole:
                new_p, new_bufs = leaf_step(rule, p, g, bufs, count, lr, job.maximize)
                if job.donate and _fits(new_p, p, new_bufs, bufs):
                    p.copy_(new_p)
                    for b, nb in zip(bufs, new_bufs):
                        b.copy_(nb)
                    continue
                job.leaves[i] = keep_flag(new_p, p)
                for col, nb in zip(job.cols, new_bufs):
                    col[i] = nb
                continue
            if job.donate:
                out_p, out_bufs = p, bufs
            else:
                out_p = torch.empty_like(p)
                out_bufs = tuple(torch.empty_like(b) for b in bufs)
            srcs = [t.view(-1).split(wave) for t in (p, g, *bufs)]
            dsts = [t.view(-1).split(wave) for t in (out_p, *out_bufs)]
            for src, dst in zip(zip(*srcs), zip(*dsts)):
                cp, cb = leaf_step(rule, src[0], src[1], src[2:], count, lr, job.maximize)
                dst[0].copy_(cp)
                for d, nb in zip(dst[1:], cb):
                    d.copy_(nb)
            if not job.donate:
                job.leaves[i] = keep_flag(out_p, p)
                for col, nb in zip(job.cols, out_bufs):
                    col[i] = nb


def _fits(new_p: Tensor, p: Tensor, new_bufs: tuple, bufs: tuple) -> bool:
    return (
        new_p.shape == p.shape
        and new_p.dtype == p.dtype
        and len(new_bufs) == len(bufs)
        and all(nb.shape == b.shape and nb.dtype == b.dtype for nb, b in zip(new_bufs, bufs))
    )
