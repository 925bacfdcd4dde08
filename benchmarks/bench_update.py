"""Update-step speed: funcurriculum's ``update`` against torch.optim on the same leaves.

Every case runs in one process, interleaved round by round, each keeping its own
params/state chain (``params, state = opt.update(params, grads, state, ...)``), so the
allocator sees the access pattern of a real training loop. Prints one JSON line per
case and a final line of ratios (medians) against ``torch.optim.<Opt>(fused=True)``.

    python benchmarks/bench_update.py                      # adam, 20M params in 100 leaves
    python benchmarks/bench_update.py --opt sgd --params 5e6 --leaves 50
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import funcurriculum as fc  # noqa: E402
from funcurriculum.optimizer import WAVE_ELEMS  # noqa: E402

HP = {
    "adam": dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
    "adamw": dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2),
    "sgd": dict(momentum=0.9),
}
OURS = {"adam": fc.adam, "adamw": fc.adamw, "sgd": fc.sgd}
TORCH = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
LR = 1e-3


def main() -> None:
    ap = C.base_parser(__doc__.splitlines()[0])
    ap.add_argument("--opt", choices=sorted(OURS), default="adam")
    ap.add_argument("--params", type=float, default=20e6, help="total parameter count")
    ap.add_argument("--leaves", type=int, default=100)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--groups", type=int, default=4, help="distinct coefficients, 'mixed' case")
    ap.add_argument("--wave", type=int, default=0, help="Optimizer(wave_elems=) (0: default)")
    ap.add_argument("--reference", action="store_true", help="also time the reference path")
    ap.add_argument("--extra", action="store_true", help="also time foreach / for-loop torch")
    ap.add_argument("--generic", action="store_true", help="also time the kernel-free engine")
    args = ap.parse_args()
    C.setup(args)
    wave = args.wave or WAVE_ELEMS
    dev, dtype = args.device, getattr(torch, args.dtype)
    L = args.leaves
    n = int(args.params) // L
    names = [f"layer{i}.weight" for i in range(L)]
    gen = torch.Generator().manual_seed(0)

    def rand():
        return torch.randn(n, generator=gen).to(dev, dtype)

    base = {k: rand() for k in names}
    grads = {k: rand() * 1e-2 for k in names}
    all_on = {k: True for k in names}
    half = {k: i % 2 == 0 for i, k in enumerate(names)}
    one = {k: 1.0 for k in names}
    mixed = {k: 0.5 ** (i % args.groups) for i, k in enumerate(names)}
    llrd = {k: 0.9 ** (L - 1 - i) for i, k in enumerate(names)}
    opt = OURS[args.opt](LR, **HP[args.opt]).with_engine(wave_elems=wave)
    fused_ok = C.has_fused(TORCH[args.opt], dev, **HP[args.opt])
    torch_ref = "fused" if fused_ok else "foreach"

    cases = {}

    def ours(masks, coeffs, donate=False, engine="auto"):
        # engines: "clone" = fused kernels on whole clones (no waves), "grouped" = torch's
        # fused kernels only (no Triton), "generic" = the rule's own math, no kernels
        if engine == "clone":
            o = opt.with_engine(wave_elems=0)
        else:
            o = opt.with_engine("fused" if engine == "grouped" else engine)
        params = {k: v.clone() for k, v in base.items()}
        holder = [params, o.init(params, masks)]

        def run():
            holder[:] = o.update(holder[0], grads, holder[1], masks, coeffs, donate=donate)

        return run

    def torch_opt(**flags):
        ps = [base[k].clone().requires_grad_(True) for k in names]
        for p, k in zip(ps, names):
            p.grad = grads[k]
        o = TORCH[args.opt](ps, lr=LR, **HP[args.opt], **flags)
        return o.step

    def clone_fused():
        # the obvious pure update: copy params and moments, then torch's in-place kernel
        ps = [base[k].clone() for k in names]
        gs = [grads[k] for k in names]
        st = opt.init(dict(zip(names, ps)))
        bufs = [[st[f][k] for k in names] for f in opt.rule.fields]
        counts = [st["count"][k] for k in names]
        holder = [ps, bufs]

        def run():
            with torch.no_grad():
                torch._foreach_add_(counts, 1.0)
                ps2 = [p.clone() for p in holder[0]]
                bufs2 = [[b.clone() for b in col] for col in holder[1]]
                opt.kernels.inplace(
                    opt.rule, ps2, gs, bufs2, counts, LR, first=False, maximize=False
                )
                holder[:] = [ps2, bufs2]

        return run

    def copy_only():
        # the floor of any pure update built on in-place kernels: copy params + moments
        ps = [base[k].clone() for k in names]
        st = opt.init(dict(zip(names, ps)))
        holder = [ps, [[st[f][k] for k in names] for f in opt.rule.fields]]

        def run():
            holder[:] = [
                [p.clone() for p in holder[0]],
                [[b.clone() for b in c] for c in holder[1]],
            ]

        return run

    cases[f"torch_{torch_ref}"] = torch_opt(**({"fused": True} if fused_ok else {"foreach": True}))
    if args.extra:
        if fused_ok:
            cases["torch_foreach"] = torch_opt(foreach=True)
        cases["torch_forloop"] = torch_opt(foreach=False)
    if fused_ok:
        cases["clone_then_fused"] = clone_fused()
    cases["copy_only"] = copy_only()
    cases["ours_donate_mixed"] = ours(all_on, mixed, donate=True)
    cases["ours_pure_mixed"] = ours(all_on, mixed)
    cases["ours_pure_mixed_clone_engine"] = ours(all_on, mixed, engine="clone")
    cases["ours_donate_one_coeff"] = ours(None, one, donate=True)
    cases["ours_donate_llrd"] = ours(None, llrd, donate=True)
    cases["ours_pure_one_coeff"] = ours(None, one)
    cases["ours_pure_llrd"] = ours(None, llrd)
    cases["ours_donate_half_frozen"] = ours(half, mixed, donate=True)
    cases["ours_pure_half_frozen"] = ours(half, mixed)

    def transition():
        # unfreeze half the leaves: fresh moments for them, every other leaf passed through
        params = {k: v.clone() for k, v in base.items()}
        state = opt.init(params, half)

        def run():
            opt.transition(state, params, half, all_on)

        return run

    cases["ours_transition_half"] = transition()
    if dev.startswith("cuda"):  # torch's fused kernels, one launch per distinct lr
        cases["ours_donate_llrd_grouped"] = ours(None, llrd, donate=True, engine="grouped")
        cases["ours_pure_llrd_grouped"] = ours(None, llrd, engine="grouped")
    if args.reference:
        cases["ours_reference_mixed"] = ours(all_on, mixed, engine="reference")
    if args.generic:  # the same rule without its kernels
        cases["ours_generic_donate_mixed"] = ours(all_on, mixed, donate=True, engine="generic")
        cases["ours_generic_pure_mixed"] = ours(all_on, mixed, engine="generic")

    meta = C.machine(dev) | {
        "bench": "update",
        "opt": args.opt,
        "params": n * L,
        "leaves": L,
        "dtype": args.dtype,
        "wave_elems": wave,
    }
    times = C.interleaved(cases, args.rounds, args.iters, dev)
    med, best = {}, {}
    base_name = f"torch_{torch_ref}"
    for name, ts in times.items():
        s = C.summary(ts)
        med[name], best[name] = s["median_ms"], s["min_ms"]
        C.emit(meta | {"case": name} | s)
    tf = med[base_name]

    def ratios_of(t, paired=False):
        def r(a, b):
            if paired:
                return round(C.paired_ratio(times[a], times[b], args.iters), 3)
            return round(t[a] / t[b], 3)

        out = {
            f"donate_vs_{base_name}": r("ours_donate_mixed", base_name),
            f"pure_vs_{base_name}": r("ours_pure_mixed", base_name),
            f"pure_clone_engine_vs_{base_name}": r("ours_pure_mixed_clone_engine", base_name),
            "donate_half_frozen_vs_all_active": r("ours_donate_half_frozen", "ours_donate_mixed"),
            "pure_half_frozen_vs_all_active": r("ours_pure_half_frozen", "ours_pure_mixed"),
            "donate_llrd_vs_one_coeff": r("ours_donate_llrd", "ours_donate_one_coeff"),
            "pure_llrd_vs_one_coeff": r("ours_pure_llrd", "ours_pure_one_coeff"),
            "transition_half_vs_donate_step": r("ours_transition_half", "ours_donate_mixed"),
        }
        for grouped in ("donate", "pure"):
            if f"ours_{grouped}_llrd_grouped" in t:
                out[f"{grouped}_llrd_grouped_vs_one_coeff"] = r(
                    f"ours_{grouped}_llrd_grouped", f"ours_{grouped}_one_coeff"
                )
        for extra in (
            "copy_only",
            "clone_then_fused",
            "torch_foreach",
            "torch_forloop",
            "ours_reference_mixed",
            "ours_generic_donate_mixed",
            "ours_generic_pure_mixed",
        ):
            if extra in t:
                out[f"{extra}_vs_{base_name}"] = r(extra, base_name)
        return out

    C.emit(
        {
            "bench": "update",
            "opt": args.opt,
            "device": dev,
            f"{base_name}_ms": tf,
            "ratios": ratios_of(med),
            # the same from each case's fastest call: less sensitive to a busy machine
            "ratios_of_min": ratios_of(best),
            # median over rounds of the ratio within a round: drift between rounds cancels
            "ratios_paired": ratios_of(med, paired=True),
        }
    )


if __name__ == "__main__":
    main()
