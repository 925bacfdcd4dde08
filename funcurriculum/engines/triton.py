"""The triton engine: a rule's declared one-launch kernel (``Kernels.multi``).

The kernel (see ``funcurriculum/_triton_kernels.py``) takes a learning rate and a step
count per leaf and writes to separate output buffers, so one launch per (device, dtype)
serves every coefficient, pure or donated. It runs where Triton runs: CUDA, or (for
tests) Triton's CPU interpreter when the engine is asked for explicitly.
"""

from __future__ import annotations

import torch

from . import Job, keep_flag

Tensor = torch.Tensor


def usable(device: torch.device, on_cpu: bool) -> bool:
    if not (device.type == "cuda" or (on_cpu and device.type == "cpu")):
        return False
    from .. import _triton_kernels as tk

    return tk.available(device)


def run(job: Job, *, on_cpu: bool) -> list[int]:
    """Update the leaves of ``job.idx`` the kernel can take; return the others."""
    from .. import _triton_kernels as tk

    leaves, grads, cols, counts = job.leaves, job.grads, job.cols, job.counts
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    rest: list[int] = []
    ok_dev: dict[torch.device, bool] = {}
    for i in job.idx:
        p = leaves[i]
        dev = p.device
        if dev not in ok_dev:
            ok_dev[dev] = usable(dev, on_cpu)
        dense = p.is_contiguous() and grads[i].is_contiguous()
        if (
            ok_dev[dev]
            and p.dtype in tk._DTYPES
            and dense
            and all(b[i].is_contiguous() for b in cols)
        ):
            groups.setdefault((dev, p.dtype), []).append(i)
        else:
            rest.append(i)
    with torch.no_grad():
        for (dev, _dtype), g in groups.items():
            ps = [leaves[i] for i in g]
            bufs = [[b[i] for i in g] for b in cols]
            if job.donate:
                out_ps, out_bufs = ps, bufs
            else:
                out_ps = [torch.empty_like(p) for p in ps]
                out_bufs = [[torch.empty_like(t) for t in col] for col in bufs]
            gs = [grads[i] for i in g]
            if job.maximize:
                gs = torch._foreach_neg(gs)
            # float64 rates: the kernel then sees a Python-float lr exactly, as torch's does.
            # Host values go over with non_blocking (a blocking copy would wait for the stream).
            lrs = [job.lr_of[i] for i in g]
            if any(isinstance(x, Tensor) for x in lrs):
                lr_t = torch.stack(
                    [
                        torch.as_tensor(x, dtype=torch.float64).to(dev, non_blocking=True)
                        for x in lrs
                    ]
                )
            else:
                lr_t = torch.tensor(lrs, dtype=torch.float64).to(dev, non_blocking=True)
            count_t = torch.stack([counts[i].to(dev, torch.float32) for i in g])
            job.kernels.multi(job.rule, ps, gs, bufs, out_ps, out_bufs, count_t, lr_t)
            for k, i in enumerate(g):
                leaves[i] = out_ps[k] if job.donate else keep_flag(out_ps[k], ps[k])
                for b, col in zip(cols, out_bufs):
                    b[i] = col[k]
    return rest
