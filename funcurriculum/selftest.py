"""``python -m funcurriculum.selftest``: which engine each optimizer takes, and whether
every engine agrees with the reference engine, on every device here.

For each optimizer of the catalogue and each device (CPU, and each CUDA device), a small
tree of leaves (float32 and, where the device has them, bfloat16) is updated for three
steps by every engine the optimizer can use; the table shows the engine the default
choice routes to, the outcome of the one-launch kernel's probe (CUDA), and the largest
difference to the reference engine. Exits non-zero when an engine disagrees.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch

import funcurriculum as fc

from .engines import triton as triton_engine


def optimizers() -> dict[str, Callable[[], fc.Optimizer]]:
    """The optimizers checked: every factory of the catalogue found in ``funcurriculum``."""
    out: dict[str, Callable[[], fc.Optimizer]] = {
        "sgd": lambda: fc.sgd(0.05),
        "sgd(momentum)": lambda: fc.sgd(0.05, momentum=0.9, dampening=0.1, weight_decay=0.01),
        "adam": lambda: fc.adam(1e-2, weight_decay=0.01),
        "adam(amsgrad)": lambda: fc.adam(1e-2, amsgrad=True),
        "adamw": lambda: fc.adamw(1e-2),
    }
    for name in ("rmsprop", "adagrad", "adamax", "nadam", "radam", "adadelta", "lion"):
        if hasattr(fc, name):
            out[name] = lambda name=name: getattr(fc, name)(1e-2)
    return out


def _tree(device: str, dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"a": (7,), "b": (33, 31), "c": (4099,)}
    return {k: torch.randn(s, generator=g).to(device, dtype) for k, s in shapes.items()}


def check(opt: fc.Optimizer, device: str, dtype: torch.dtype) -> dict[str, object]:
    """Route, probe and compare ``opt`` on ``device`` / ``dtype``."""
    params = _tree(device, dtype, 0)
    grads = [_tree(device, dtype, 1 + t) for t in range(3)]
    coeffs = {"a": 1.0, "b": 0.5, "c": 0.25}
    leaves = list(params.values())
    state = opt.init(params)
    cols = [list(state[f].values()) for f in opt.rule.fields]
    routes = opt.route(
        opt.rule, list(range(3)), leaves, list(grads[0].values()), cols, {0, 1, 2}, "auto"
    )
    used = sorted({name for name, _ in routes})

    def run(o, engine=None):
        p, s = params, o.init(params)
        for g in grads:
            p, s = o.update(p, g, s, None, coeffs, engine=engine)
        return p

    with fc.force_reference():
        ref = run(opt)
    worst: dict[str, float] = {}
    for engine in ("auto", "generic", "fused"):
        got = run(opt, engine)
        worst[engine] = max(float((got[k].float() - ref[k].float()).abs().max()) for k in params)
    probes = [
        ("ok" if ok else "FAILED: ") + ("" if ok else detail)
        for (dev, dt, rule), (ok, detail) in triton_engine.probe_results().items()
        if dev == str(torch.device(device)) and dt == dtype and rule == opt.rule
    ]
    return {"engines": used, "probe": probes[0] if probes else "-", "max_diff": worst}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tol", type=float, default=1e-4, help="largest accepted difference")
    args = ap.parse_args(argv)
    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    print(f"torch {torch.__version__}; devices: {', '.join(devices)}")
    print(f"{'optimizer':16} {'device':8} {'dtype':9} {'default engines':22} {'probe':10} max diff")
    bad = 0
    for dev in devices:
        for dtype in (torch.float32, torch.bfloat16):
            for name, make in optimizers().items():
                res = check(make(), dev, dtype)
                tol = args.tol if dtype == torch.float32 else 3e-2
                diffs = res["max_diff"]
                ok = all(d <= tol for d in diffs.values())
                bad += not ok
                shown = " ".join(f"{e}={d:.1e}" for e, d in diffs.items())
                print(
                    f"{name:16} {dev:8} {str(dtype)[6:]:9} {','.join(res['engines']):22} "
                    f"{res['probe']:10} {shown}{'' if ok else '  <-- DISAGREES'}"
                )
    print("all engines agree" if not bad else f"{bad} combination(s) disagree")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
