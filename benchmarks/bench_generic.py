"""A rule with no kernels (the generic engine) against torch.optim's fastest same math.

A plain RMSprop rule written with only ``fields`` / ``init`` / ``step`` (as a researcher
would write it, see docs/custom_optimizers.md) is timed against torch.optim.RMSprop's
for-loop and foreach implementations on the same leaves, side by side in one process.
Prints one JSON line per case and a final line of ratios against torch's fastest.

    python benchmarks/bench_generic.py                      # 20M params in 100 leaves
    python benchmarks/bench_generic.py --params 2e6 --leaves 100
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import funcurriculum as fc  # noqa: E402

LR, ALPHA, EPS = 1e-3, 0.99, 1e-8


@dataclass(frozen=True)
class RMSprop:
    """torch.optim.RMSprop (no momentum, not centered), as a user would write it."""

    alpha: float = ALPHA
    eps: float = EPS
    fields = ("square_avg",)

    def init(self, p):
        return (torch.zeros_like(p),)

    def step(self, p, g, bufs, count, lr):
        v = bufs[0] * self.alpha + (1 - self.alpha) * g * g
        return p - lr * g / (v.sqrt() + self.eps), (v,)


def main() -> None:
    ap = C.base_parser(__doc__.splitlines()[0])
    ap.add_argument("--params", type=float, default=20e6, help="total parameter count")
    ap.add_argument("--leaves", type=int, default=100)
    ap.add_argument("--compiled", action="store_true", help="also the compiled engine")
    ap.add_argument("--wave", type=int, default=0, help="Optimizer(wave_elems=) (0: default)")
    args = ap.parse_args()
    C.setup(args)
    dev, L = args.device, args.leaves
    n = int(args.params) // L
    names = [f"layer{i}.weight" for i in range(L)]
    gen = torch.Generator().manual_seed(0)
    base = {k: torch.randn(n, generator=gen).to(dev) for k in names}
    grads = {k: torch.randn(n, generator=gen).to(dev) * 1e-2 for k in names}
    mixed = {k: 0.5 ** (i % 4) for i, k in enumerate(names)}

    def ours(donate, elementwise=True, engine="auto"):
        opt = fc.Optimizer(RMSprop(), LR, name="rmsprop", elementwise=elementwise, engine=engine)
        if args.wave:
            opt = opt.with_engine(wave_elems=args.wave)
        params = {k: v.clone() for k, v in base.items()}
        holder = [params, opt.init(params)]

        def run():
            holder[:] = opt.update(holder[0], grads, holder[1], None, mixed, donate=donate)

        return run

    def torch_opt(foreach):
        ps = [base[k].clone().requires_grad_(True) for k in names]
        for p, k in zip(ps, names):
            p.grad = grads[k]
        groups = {}
        for p, k in zip(ps, names):
            groups.setdefault(mixed[k], []).append(p)
        o = torch.optim.RMSprop(
            [{"params": v, "lr": LR * c} for c, v in groups.items()],
            lr=LR,
            alpha=ALPHA,
            eps=EPS,
            foreach=foreach,
        )
        return o.step

    cases = {
        "torch_forloop": torch_opt(False),
        "torch_foreach": torch_opt(True),
        "ours_generic_donate": ours(True),
        "ours_generic_pure": ours(False),
        "ours_generic_donate_not_elementwise": ours(True, elementwise=False),
    }
    if args.compiled:  # the opt-in compiled engine (compiles once, before timing)
        cases["ours_compiled_donate"] = ours(True, engine="compiled")
        cases["ours_compiled_pure"] = ours(False, engine="compiled")
    meta = C.machine(dev) | {"bench": "generic", "params": n * L, "leaves": L}
    times = C.interleaved(cases, args.rounds, args.iters, dev)
    med = {}
    for name, ts in times.items():
        s = C.summary(ts)
        med[name] = s["median_ms"]
        C.emit(meta | {"case": name} | s)
    best = min(("torch_forloop", "torch_foreach"), key=med.get)
    C.emit(
        {
            "bench": "generic",
            "device": dev,
            "torch_fastest": best,
            "ratios_paired": {
                f"{c}_vs_{best}": round(C.paired_ratio(times[c], times[best], args.iters), 3)
                for c in cases
                if c.startswith("ours")
            },
        }
    )


if __name__ == "__main__":
    main()
