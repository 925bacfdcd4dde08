"""The triton engine: a rule's declared one-launch kernel (``Kernels.multi``).

The kernel (see ``funcurriculum/_triton_kernels.py``) takes a learning rate and a step
count per leaf and writes to separate output buffers, so one launch per (device, dtype)
serves every coefficient, pure or donated. It runs where Triton runs: CUDA, or (for
tests) Triton's CPU interpreter when the engine is asked for explicitly.

Protection for hardware it has not been measured on: under the default engine choice,
the first use per (device, dtype, rule) runs a small probe through the kernel and through
the rule's in-place (torch fused) kernel; if the kernel fails to build or run, or the two
disagree, that combination falls back to torch's kernels for the rest of the process,
with one warning (`probe_results` lists the outcomes; ``python -m funcurriculum.selftest``
prints them).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from . import Job, keep_flag

Tensor = torch.Tensor

_PROBES: dict[tuple[Any, ...], tuple[bool, str]] = {}
"""(device, dtype, rule) -> (ok, detail): a cache of probe outcomes, filled on first use."""


def usable(device: torch.device, on_cpu: bool) -> bool:
    if not (device.type == "cuda" or (on_cpu and device.type == "cpu")):
        return False
    from .. import _triton_kernels as tk

    return tk.available(device)


def accepts(p: Tensor, g: Tensor, bufs: list[Tensor]) -> bool:
    """Dtype and layout the kernel takes (the device is checked by `usable`)."""
    from .. import _triton_kernels as tk

    return (
        p.dtype in tk._DTYPES
        and p.is_contiguous()
        and g.is_contiguous()
        and all(b.is_contiguous() and b.shape == p.shape for b in bufs)
    )


def probe_results() -> dict[tuple[Any, ...], tuple[bool, str]]:
    """The probe outcomes so far: ``(device, dtype, rule) -> (ok, detail)``."""
    return dict(_PROBES)


def verified(rule: Any, kernels: Any, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the one-launch kernel agrees with the rule's in-place kernel on ``device``
    for ``dtype`` (probed once; a failure warns once and is remembered)."""
    key = (str(device), dtype, rule)
    if key not in _PROBES:
        _PROBES[key] = _probe(rule, kernels, device, dtype)
        ok, detail = _PROBES[key]
        if not ok:
            warnings.warn(
                f"funcurriculum: the one-launch Triton kernel for {rule!r} on {device} "
                f"({dtype}) {detail}; using torch's fused kernels there instead",
                RuntimeWarning,
                stacklevel=4,
            )
    return _PROBES[key][0]


def _probe(rule: Any, kernels: Any, device: torch.device, dtype: torch.dtype) -> tuple[bool, str]:
    if kernels.inplace is None:
        return True, "not compared (the rule has no in-place kernel)"
    gen = torch.Generator().manual_seed(0)
    sizes = (7, 1000, 4099)
    try:
        ps = [torch.randn(n, generator=gen).to(device, dtype) for n in sizes]
        gs = [torch.randn(n, generator=gen).to(device, dtype) for n in sizes]
        bufs = [list(col) for col in zip(*[rule.init(p) for p in ps])] or [[] for _ in rule.fields]
        lrs = [1e-2, 3e-3, 0.0]
        ref_p = [p.clone() for p in ps]
        ref_b = [[b.clone() for b in col] for col in bufs]
        out_p = [torch.empty_like(p) for p in ps]
        out_b = [[torch.empty_like(b) for b in col] for col in bufs]
        counts = [torch.ones((), dtype=torch.float32, device=device) for _ in ps]
        for i, lr in enumerate(lrs):
            b = [[col[i]] for col in ref_b]
            kernels.inplace(
                rule, [ref_p[i]], [gs[i]], b, [counts[i]], lr, first=True, maximize=False
            )
        kernels.multi(
            rule, ps, gs, bufs, out_p, out_b,
            torch.stack(counts), torch.tensor(lrs, dtype=torch.float64, device=device),
        )  # fmt: skip
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as exc:  # noqa: BLE001 - any failure to build or run means "do not use"
        return False, f"failed to run ({type(exc).__name__}: {exc})"
    tol = 1e-5 if dtype in (torch.float32, torch.float64) else 1e-2
    for a, b in zip(out_p + [t for c in out_b for t in c], ref_p + [t for c in ref_b for t in c]):
        if not torch.allclose(a.float(), b.float(), rtol=tol, atol=tol):
            err = (a.float() - b.float()).abs().max().item()
            return False, f"disagrees with torch's fused kernel (max abs difference {err:.3g})"
    return True, "agrees with torch's fused kernel"


def run(job: Job) -> None:
    """Update ``job.idx`` (leaves `accepts` took, on devices `usable` allows)."""
    leaves, grads, cols, counts = job.leaves, job.grads, job.cols, job.counts
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i in job.idx:
        groups.setdefault((leaves[i].device, leaves[i].dtype), []).append(i)
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
