"""Curriculum sweeps: E members with different unfreeze steps as one vmapped run
(``fc.make_sweep_step``, eager and compiled) against the same E schedules run one after
another with the static API (``fc.make_step``, Python-bool masks, fused engines).

Each timed call is a whole training run of ``--steps`` steps (phase changes and
transitions included), for all members. Prints one JSON line per case and a final line
with the speed-ups (sequential time / sweep time).

    python benchmarks/bench_sweep.py --members 16 --steps 40 [--compile]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import funcurriculum as fc  # noqa: E402


def make_params(d_in: int, width: int, d_out: int, seed: int, members: int | None = None):
    g = torch.Generator().manual_seed(seed)
    lead = () if members is None else (members,)
    shapes = {
        "backbone.0.weight": (width, d_in),
        "backbone.0.bias": (width,),
        "backbone.1.weight": (width, width),
        "backbone.1.bias": (width,),
        "head.weight": (d_out, width),
        "head.bias": (d_out,),
    }
    return {k: torch.randn(*lead, *s, generator=g) * 0.1 for k, s in shapes.items()}


def loss_fn(p, batch):
    x, y = batch
    h = torch.relu(x @ p["backbone.0.weight"].T + p["backbone.0.bias"])
    h = torch.relu(h @ p["backbone.1.weight"].T + p["backbone.1.bias"])
    return F.cross_entropy(h @ p["head.weight"].T + p["head.bias"], y)


def main() -> None:
    ap = C.base_parser(__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=16)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--d-in", type=int, default=32)
    ap.add_argument("--d-out", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--compile", action="store_true", help="also time the compiled sweep")
    ap.set_defaults(rounds=3, iters=1)
    args = ap.parse_args()
    C.setup(args)
    E, T = args.members, args.steps
    one = make_params(args.d_in, args.width, args.d_out, 0)
    stacked = {k: v.expand(E, *v.shape).clone() for k, v in one.items()}
    cur = fc.Curriculum(one)
    scheds = []
    for i in range(E):  # member i unfreezes the backbone at step i*T/E, coefficient 1 or 0.1
        until = (i * T) // E
        rules = [fc.SetCoefficient(0.1, "backbone")] if i % 2 else []
        if until:
            rules.append(fc.Freezer(name_starts_with="backbone", until_step=until))
        scheds.append(fc.Schedule(cur, *rules))
    g = torch.Generator().manual_seed(1)
    batch = (
        torch.randn(args.batch, args.d_in, generator=g),
        torch.randint(0, args.d_out, (args.batch,), generator=g),
    )
    opt = fc.adam(1e-3)

    def sequential():
        for s in scheds:
            step_fn = fc.make_step(loss_fn, opt, s)
            p, prev = dict(one), None
            st = opt.init(p, s.at(step=0).masks)
            for t in range(T):
                p, st, _, prev = step_fn(p, st, batch, step=t, prev=prev)

    def swept(step_fn):
        def run():
            p, st, prev = stacked, step_fn.init(stacked), None
            for t in range(T):
                p, st, _, prev = step_fn(p, st, batch, step=t, prev=prev)

        return run

    cases = {"sequential": sequential, "sweep": swept(fc.make_sweep_step(loss_fn, opt, scheds))}
    if args.compile:
        compiled = swept(fc.make_sweep_step(loss_fn, opt, scheds, compile=True))
        compiled()  # compile outside the timing
        cases["sweep_compiled"] = compiled
    times = C.interleaved(cases, args.rounds, args.iters, "cpu")
    info = C.machine("cpu")
    res = {k: C.summary(v) for k, v in times.items()}
    for k, v in res.items():
        C.emit({"case": k, "members": E, "steps": T, **v, **info})
    base = res["sequential"]["median_ms"]
    ratios = {k: round(base / v["median_ms"], 2) for k, v in res.items() if k != "sequential"}
    C.emit({"speedup_vs_sequential": ratios, "members": E, "steps": T, **info})


if __name__ == "__main__":
    main()
