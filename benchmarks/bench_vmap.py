"""Ensembles: one vmapped step (vmap(grad) + vmap(update)) for E small MLPs, against a
Python loop of E ``torch.optim.Adam``s (forward, backward, step each).

Prints one JSON line per case and a final line with the speed-up (loop time / ours).

    python benchmarks/bench_vmap.py --members 64 --width 64
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import funcurriculum as fc  # noqa: E402


def mlp(d_in: int, width: int, d_out: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(d_in, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, d_out),
    )


def main() -> None:
    ap = C.base_parser(__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=64)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--d-in", type=int, default=32)
    ap.add_argument("--d-out", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--compile", action="store_true", help="also time the step under torch.compile")
    args = ap.parse_args()
    C.setup(args)
    dev, E = args.device, args.members
    models = [mlp(args.d_in, args.width, args.d_out).to(dev) for _ in range(E)]
    x = torch.randn(E, args.batch, args.d_in, device=dev)
    y = torch.randint(0, args.d_out, (E, args.batch), device=dev)

    # ours: stacked params, vmapped grad and update, per-member coefficients, a frozen layer
    params, _ = stack_module_state(models)
    params = {k: v.detach().clone() for k, v in params.items()}
    skeleton = copy.deepcopy(models[0]).to("meta")

    def loss(p, xb, yb):
        return nn.functional.cross_entropy(functional_call(skeleton, p, (xb,)), yb)

    opt = fc.adam(args.lr)
    names = list(params)
    masks = {k: True for k in names}
    coeffs = {k: torch.linspace(0.5, 1.5, E, device=dev) for k in names}
    holder = [params, vmap(opt.init)(params)]
    vgrad = vmap(grad(loss))
    vupdate = vmap(opt.update, in_dims=(0, 0, 0, None, 0))

    def ours():
        p, s = holder
        g = vgrad(p, x, y)
        holder[:] = vupdate(p, g, s, masks, coeffs)

    # torch: a loop of E optimizers
    opts = [torch.optim.Adam(m.parameters(), lr=args.lr) for m in models]

    def loop():
        for i, (m, o) in enumerate(zip(models, opts)):
            o.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(m(x[i]), y[i]).backward()
            o.step()

    cases = {"ours_vmap_step": ours, f"torch_loop_of_{E}_adam": loop}
    if args.compile:
        # the whole vmapped step (grad + update) as one compiled graph; compiled (and
        # timed) apart from the rounds: the first call pays the compilation
        def step(p, s):
            return vupdate(p, vgrad(p, x, y), s, masks, coeffs)

        compiled = torch.compile(step, fullgraph=True)
        chain = [params, holder[1]]
        t0 = time.perf_counter()
        chain[:] = compiled(*chain)
        C.sync(dev)
        compile_s = round(time.perf_counter() - t0, 1)

        def ours_compiled():
            chain[:] = compiled(*chain)

        cases["ours_vmap_step_compiled"] = ours_compiled
    times = C.interleaved(cases, args.rounds, args.iters, dev)
    meta = C.machine(dev) | {
        "bench": "vmap",
        "members": E,
        "params_per_member": sum(p.numel() for p in models[0].parameters()),
        "batch": args.batch,
    }
    med = {}
    for name, ts in times.items():
        s = C.summary(ts)
        med[name] = s["median_ms"]
        C.emit(meta | {"case": name} | s)
    C.emit(
        {
            "bench": "vmap",
            "device": dev,
            "ratios": {
                "speedup_vs_loop": round(med[f"torch_loop_of_{E}_adam"] / med["ours_vmap_step"], 2)
            }
            | (
                {
                    "compiled_speedup_vs_loop": round(
                        med[f"torch_loop_of_{E}_adam"] / med["ours_vmap_step_compiled"], 2
                    ),
                    "compile_s": compile_s,
                }
                if args.compile
                else {}
            ),
        }
    )


if __name__ == "__main__":
    main()
