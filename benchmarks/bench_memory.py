"""Peak memory of a training step with most leaves frozen (90% by default).

Each case runs in a fresh subprocess (CPU: peak RSS; CUDA: ``max_memory_allocated``)
and reports the bytes added on top of the params and trainable grads: optimizer state
plus the step's temporaries. funcurriculum (``init(params, masks)``, grads only for the
trainable part as ``partition`` gives them) against torch with ``requires_grad=False``
on frozen params and an optimizer over the trainable params only.

    python benchmarks/bench_memory.py --params 20e6 --leaves 100 --frozen 0.9
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

CASES = [
    "ours_pure",
    "ours_donate",
    "ours_pure_no_masks_at_init",
    "torch_adam_fused_trainable_only",
    "torch_adam_foreach_trainable_only",
]


def peak(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    with open("/proc/self/status") as f:  # VmHWM: peak resident set since the last reset
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM to the current RSS
            f.write("5")


def child(case: str, params: int, leaves: int, frozen: float, device: str, steps: int) -> dict:
    import funcurriculum as fc

    n = params // leaves
    names = [f"layer{i}.weight" for i in range(leaves)]
    n_frozen = round(frozen * leaves)
    masks = {k: i >= n_frozen for i, k in enumerate(names)}  # the first layers are frozen
    p = {k: torch.randn(n, device=device) for k in names}
    grads = {k: torch.randn(n, device=device) for k in names if masks[k]}
    # warm-up on a tiny model so one-off imports and caches are not counted
    w = torch.zeros(4, device=device, requires_grad=True)
    w.grad = torch.zeros(4, device=device)
    torch.optim.Adam([w], lr=1e-3, fused=True).step()
    torch.optim.Adam([w], lr=1e-3, foreach=True).step()
    tiny = fc.adam(1e-3)
    tiny.update({"w": w.detach()}, {"w": w.grad}, tiny.init({"w": w.detach()}))
    reset_peak(device)
    before = peak(device)
    if case.startswith("ours"):
        opt = fc.adam(1e-3)
        state = opt.init(p, None if "no_masks" in case else masks)
        for _ in range(steps):
            p, state = opt.update(p, grads, state, masks, donate="donate" in case)
        state_bytes = sum(
            t.numel() * t.element_size() for f in opt.rule.fields for t in state[f].values()
        )
    else:
        ps = []
        for k in names:
            p[k].requires_grad_(masks[k])
            if masks[k]:
                p[k].grad = grads[k]
                ps.append(p[k])
        flag = {"fused": True} if "fused" in case else {"foreach": True}
        o = torch.optim.Adam(ps, lr=1e-3, **flag)
        for _ in range(steps):
            o.step()
        state_bytes = sum(
            v.numel() * v.element_size()
            for s in o.state.values()
            for key, v in s.items()
            if key != "step"
        )
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return {"peak_extra_bytes": peak(device) - before, "state_bytes": state_bytes}


def main() -> None:
    ap = C.base_parser(__doc__.splitlines()[0])
    ap.add_argument("--params", type=float, default=20e6)
    ap.add_argument("--leaves", type=int, default=100)
    ap.add_argument("--frozen", type=float, default=0.9)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--child", default=None, help=argparse_hidden())
    args = ap.parse_args()
    if args.child:
        C.setup(args)
        rec = child(args.child, int(args.params), args.leaves, args.frozen, args.device, args.steps)
        print(json.dumps(rec))
        return
    meta = C.machine(args.device) | {
        "bench": "memory",
        "params": int(args.params),
        "leaves": args.leaves,
        "frozen_fraction": args.frozen,
        "trainable_bytes": int(args.params * (1 - args.frozen)) * 4,
    }
    out = {}
    for case in CASES:
        cmd = [sys.executable, __file__, "--child", case, "--device", args.device]
        cmd += ["--params", str(args.params), "--leaves", str(args.leaves)]
        cmd += ["--frozen", str(args.frozen), "--steps", str(args.steps)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rec = json.loads(res.stdout.strip().splitlines()[-1])
        out[case] = rec
        C.emit(
            meta
            | {"case": case}
            | rec
            | {"peak_extra_mb": round(rec["peak_extra_bytes"] / 2**20, 1)}
        )
    t = out["torch_adam_fused_trainable_only"]["peak_extra_bytes"]
    C.emit(
        {
            "bench": "memory",
            "device": args.device,
            "ratios": {
                f"{k}_peak_vs_torch_fused": round(v["peak_extra_bytes"] / t, 3)
                for k, v in out.items()
            },
        }
    )


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
