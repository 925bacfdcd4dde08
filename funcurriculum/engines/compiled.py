"""The compiled engine (opt-in, ``engine="compiled"``): the rule's ``step`` through
``torch.compile``, so its many small ops become one fused loop per leaf.

For a rule without kernels this is the fastest eager engine once compiled (it moves the
bytes of one pass, as a hand-written fused kernel would), but the first call per rule,
dtype and mode compiles (seconds to tens of seconds on CPU, and it needs inductor's C++
toolchain), so it is not the default. Elementwise rules run on flat views (one graph for
every leaf shape); others leaf by leaf with dynamic shapes. Donated updates write the
results back into the inputs inside the compiled graph. See docs/performance.md.
"""

from __future__ import annotations

from typing import Any

import torch

from . import Job, keep_flag
from .reference import leaf_step

Tensor = torch.Tensor

_CACHE: dict[tuple[Any, ...], Any] = {}
"""(rule, donate, maximize) -> the compiled step (compiled once per process)."""


def _compiled(rule: Any, donate: bool, maximize: bool):
    key = (rule, donate, maximize)
    fn = _CACHE.get(key)
    if fn is None:

        def step(p, g, bufs, count, lr):
            new_p, new_bufs = leaf_step(rule, p, g, bufs, count, lr, maximize)
            if not donate:
                return new_p, new_bufs
            p.copy_(new_p)
            for b, nb in zip(bufs, new_bufs):
                b.copy_(nb)
            return p, bufs

        fn = _CACHE[key] = torch.compile(step, dynamic=True, fullgraph=True)
    return fn


def run(job: Job, *, elementwise: bool) -> None:
    """Update ``job.idx`` (plain leaves, counts already incremented)."""
    fn = _compiled(job.rule, job.donate, job.maximize)
    with torch.no_grad():
        for i in job.idx:
            p, g = job.leaves[i], job.grads[i]
            bufs = tuple(b[i] for b in job.cols)
            lr = job.lr_of[i]
            lr = lr if isinstance(lr, Tensor) else torch.tensor(lr, dtype=torch.float64)
            flat = elementwise and all(t.is_contiguous() for t in (p, g, *bufs))
            if flat:
                args = (p.view(-1), g.view(-1), tuple(b.view(-1) for b in bufs))
            else:
                args = (p, g, bufs)
            new_p, new_bufs = fn(*args, job.counts[i], lr)
            if job.donate:
                continue
            if flat:
                new_p = new_p.view(p.shape)
                new_bufs = tuple(nb.view(b.shape) for nb, b in zip(new_bufs, bufs))
            job.leaves[i] = keep_flag(new_p, p)
            for col, nb in zip(job.cols, new_bufs):
                col[i] = nb
