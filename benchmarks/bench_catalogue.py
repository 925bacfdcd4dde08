"""Catalogue optimizers: funcurriculum's ``update`` against torch.optim on the same leaves.

For each optimizer of the catalogue (``--opt``, default all), in one process and
interleaved round by round, each case keeping its own params/state chain:

* ``torch_forloop``, ``torch_foreach``, ``torch_fused``: ``torch.optim.<Opt>.step()`` with
  ``foreach=False`` / ``foreach=True`` / ``fused=True``, where this torch has them (Muon
  has only its for-loop; Adagrad has a fused CPU kernel). Lion has no torch.optim
  counterpart: its baseline is a hand-written ``torch.optim.Optimizer`` (for-loop and
  ``_foreach`` ops), the obvious way to write it in torch;
* ``ours_donate``: ``opt.update(params, grads, state, donate=True)``;
* ``ours_pure``: ``params, state = opt.update(params, grads, state)``;
* with ``--generic``: both on the generic engine (the rule's own ops in cache-sized
  chunks, no kernels), for the optimizers that declare kernels.

Leaves are 2-D (Muon takes matrices only; Adafactor then keeps factored moments).
Prints one JSON line per case and one line per optimizer with the ratios of ours to the
fastest torch case (medians, minima and paired within rounds).

    python benchmarks/bench_catalogue.py                       # 4M params in 40 leaves
    python benchmarks/bench_catalogue.py --opt adagrad rmsprop --params 2e7 --leaves 100
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import funcurriculum as fc  # noqa: E402


class _Lion(torch.optim.Optimizer):
    """Lion written as a torch.optim optimizer (baseline only: torch ships none)."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, foreach=False):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))
        self.foreach = foreach

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            lr, wd = group["lr"], group["weight_decay"]
            ps = [p for p in group["params"] if p.grad is not None]
            gs = [p.grad for p in ps]
            ms = []
            for p in ps:
                st = self.state[p]
                if not st:
                    st["exp_avg"] = torch.zeros_like(p)
                ms.append(st["exp_avg"])
            if self.foreach:
                u = torch._foreach_mul(gs, 1 - b1)
                torch._foreach_add_(u, torch._foreach_mul(ms, b1))
                torch._foreach_sign_(u)
                torch._foreach_mul_(ms, b2)
                torch._foreach_add_(ms, gs, alpha=1 - b2)
                if wd:
                    torch._foreach_add_(u, ps, alpha=wd)
                torch._foreach_add_(ps, u, alpha=-lr)
            else:
                for p, g, m in zip(ps, gs, ms):
                    u = torch.sign((1 - b1) * g + b1 * m)
                    m.mul_(b2).add_(g, alpha=1 - b2)
                    if wd:
                        u.add_(p, alpha=wd)
                    p.add_(u, alpha=-lr)


LR = 1e-3
OPTS = {
    # name: (ours, torch class, shared hyperparameters, torch implementations)
    "rmsprop": (fc.rmsprop, torch.optim.RMSprop, {"momentum": 0.9}, ("forloop", "foreach")),
    "adagrad": (fc.adagrad, torch.optim.Adagrad, {}, ("forloop", "foreach", "fused")),
    "adamax": (fc.adamax, torch.optim.Adamax, {}, ("forloop", "foreach")),
    "nadam": (fc.nadam, torch.optim.NAdam, {}, ("forloop", "foreach")),
    "radam": (fc.radam, torch.optim.RAdam, {}, ("forloop", "foreach")),
    "adadelta": (fc.adadelta, torch.optim.Adadelta, {}, ("forloop", "foreach")),
    "adafactor": (fc.adafactor, torch.optim.Adafactor, {}, ("forloop", "foreach")),
    "muon": (fc.muon, torch.optim.Muon, {}, ("forloop",)),
    "lion": (fc.lion, _Lion, {"weight_decay": 0.1}, ("forloop", "foreach")),
}


def main() -> None:
    ap = C.base_parser(__doc__.splitlines()[0])
    ap.add_argument("--opt", nargs="+", choices=sorted(OPTS), default=list(OPTS))
    ap.add_argument("--params", type=float, default=4e6, help="total parameter count")
    ap.add_argument("--leaves", type=int, default=40)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument(
        "--generic", action="store_true", help="also time ours on the generic engine (no kernels)"
    )
    args = ap.parse_args()
    C.setup(args)
    dev, dtype = args.device, getattr(torch, args.dtype)
    n = int(args.params) // args.leaves
    rows = 2 ** round(math.log2(math.sqrt(n)))
    shape = (rows, max(n // rows, 1))
    names = [f"layer{i}.weight" for i in range(args.leaves)]
    gen = torch.Generator().manual_seed(0)
    base = {k: torch.randn(shape, generator=gen).to(dev, dtype) for k in names}
    grads = {k: (torch.randn(shape, generator=gen) * 1e-2).to(dev, dtype) for k in names}
    engine = "auto"
    meta = C.machine(dev) | {
        "bench": "catalogue",
        "params": math.prod(shape) * args.leaves,
        "leaves": args.leaves,
        "leaf_shape": list(shape),
        "dtype": args.dtype,
        "engine": engine,
    }

    for name in args.opt:
        ours_fn, torch_cls, hp, impls = OPTS[name]
        opt = ours_fn(LR, **hp)

        def ours(donate, opt=opt):
            params = {k: v.clone() for k, v in base.items()}
            holder = [params, opt.init(params)]

            def run():
                holder[:] = opt.update(holder[0], grads, holder[1], donate=donate)

            return run

        def torch_opt(impl, torch_cls=torch_cls, hp=hp):
            ps = [base[k].clone().requires_grad_(True) for k in names]
            for p, k in zip(ps, names):
                p.grad = grads[k]
            flags = {"forloop": {"foreach": False}, "foreach": {"foreach": True}}.get(
                impl, {"fused": True}
            )
            if torch_cls is torch.optim.Muon:
                flags = {}
            return torch_cls(ps, lr=LR, **hp, **flags).step

        cases = {}
        for impl in impls:
            if impl == "fused" and not C.has_fused(torch_cls, dev, **hp):
                continue
            cases[f"torch_{impl}"] = torch_opt(impl)
        cases["ours_donate"] = ours(True)
        cases["ours_pure"] = ours(False)
        if args.generic and opt.kernels is not None:
            cases["ours_donate_generic"] = ours(True, opt.with_engine("generic"))
            cases["ours_pure_generic"] = ours(False, opt.with_engine("generic"))
        times = C.interleaved(cases, args.rounds, args.iters, dev)
        med, best = {}, {}
        for case, ts in times.items():
            s = C.summary(ts)
            med[case], best[case] = s["median_ms"], s["min_ms"]
            C.emit(meta | {"opt": name, "case": case} | s)
        torch_cases = [c for c in cases if c.startswith("torch_")]
        fastest = min(torch_cases, key=lambda c: med[c])

        def ratio(t, a, fastest=fastest):
            return round(t[a] / t[fastest], 3)

        extra = {f"{c}_vs_fastest_torch": ratio(med, c) for c in cases if c.endswith("_generic")}
        C.emit(
            {
                "bench": "catalogue",
                "opt": name,
                "device": dev,
                "engine": engine,
                "baseline": fastest,
                f"{fastest}_ms": med[fastest],
                "donate_vs_fastest_torch": ratio(med, "ours_donate"),
                "pure_vs_fastest_torch": ratio(med, "ours_pure"),
                "donate_vs_fastest_torch_of_min": ratio(best, "ours_donate"),
                "pure_vs_fastest_torch_of_min": ratio(best, "ours_pure"),
                "donate_vs_fastest_torch_paired": round(
                    C.paired_ratio(times["ours_donate"], times[fastest], args.iters), 3
                ),
                "pure_vs_fastest_torch_paired": round(
                    C.paired_ratio(times["ours_pure"], times[fastest], args.iters), 3
                ),
            }
            | extra
        )


if __name__ == "__main__":
    main()
