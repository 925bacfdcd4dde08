"""When should the backbone be unfrozen? A curriculum sweep in one vmapped program.

Transfer setup on scikit-learn's digits: a small MLP backbone is pretrained on digits
0-4, then a fresh head learns digits 5-9 from a few labels. Every member of the sweep
starts from the same pretrained backbone and head init and sees the same batches; the
members differ only by their curriculum: the step at which the backbone is unfrozen
and the backbone's LR coefficient once it is. All members train at once:

    sweep = [fc.Schedule(cur, fc.Freezer(name_starts_with="backbone", until_step=n),
                         fc.SetCoefficient(c, "backbone")) for n, c in plan]
    step_fn = fc.make_step(loss, opt, sweep)          # a list of schedules: a sweep
    state = step_fn.init(stacked)
    stacked, state, losses, cur = step_fn(stacked, state, batch, step=t, prev=cur)

The same schedules are then run one after another with the static API (``fc.make_step``
with one schedule, Python-bool masks): the script checks both give the same accuracies,
prints a table, times both and saves a plot of final accuracy against unfreeze step in
``outputs/unfreeze_sweep.png``.

Run:  python examples/unfreeze_sweep.py            (about a minute on a 2-core CPU)
      python examples/unfreeze_sweep.py --fast     (a few seconds; used by the tests)
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import add_common_args, digits, num_threads, progress, transfer_split
from torch import nn
from torch.func import functional_call, vmap

import funcurriculum as fc

NEVER = -1  # an unfreeze step meaning "stays frozen"
OUT = Path(__file__).resolve().parents[1] / "outputs"


def make_model(classes: int = 5) -> nn.Module:
    return nn.Sequential(
        nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU()),
        nn.Linear(32, classes),
    )


def rename(params: dict) -> dict:
    """``0.* -> backbone.*``, ``1.* -> head.*`` (readable curriculum names)."""
    out = {}
    for k, v in params.items():
        head, rest = k.split(".", 1)
        out[("backbone." if head == "0" else "head.") + rest] = v
    return out


def pretrain(model: nn.Module, data, steps: int, seed: int) -> None:
    """Digits 0-4, plain torch.optim.Adam (the starting point of every member)."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = data
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,))
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()


def plan_of(fast: bool, steps: int) -> list[tuple[int, float]]:
    """(unfreeze step, backbone coefficient) per member: 6 x 2 = 12 members (6 with --fast)."""
    fractions = (0.0, 0.1, 0.25, 0.5, 0.75)
    at = [int(f * steps) for f in fractions] + [NEVER]
    coeffs = (1.0,) if fast else (1.0, 0.1)
    return [(n, c) for c in coeffs for n in at]


def schedules_of(cur: fc.Curriculum, plan) -> list[fc.Schedule]:
    out = []
    for n, c in plan:
        rules = [fc.SetCoefficient(c, "backbone")] if c != 1.0 else []
        if n == NEVER:
            out.append(fc.Schedule(cur.freeze("backbone"), *rules))
        elif n == 0:
            out.append(fc.Schedule(cur, *rules))
        else:
            out.append(
                fc.Schedule(cur, fc.Freezer(name_starts_with="backbone", until_step=n), *rules)
            )
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fast", action="store_true", help="tiny run (for tests / smoke checks)")
    ap.add_argument("--steps", type=int, default=300, help="transfer steps per member")
    ap.add_argument("--pretrain", type=int, default=300, help="pretraining steps on 0-4")
    ap.add_argument("--labelled", type=int, default=10, help="labelled 5-9 examples per class")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compile", action="store_true", help="torch.compile the swept step")
    ap.add_argument("--no-plot", action="store_true")
    add_common_args(ap)
    args = ap.parse_args(argv)
    if args.fast:
        args.steps, args.pretrain = 40, 60
    with num_threads(args.threads):
        return run(args)


def run(args: argparse.Namespace) -> dict:
    pre_tr, _, tgt_tr, tgt_te = transfer_split(*digits(), args.labelled, args.seed)
    torch.manual_seed(args.seed)
    pretrained = make_model()
    pretrain(pretrained, pre_tr, args.pretrain, args.seed)
    torch.manual_seed(args.seed + 1)
    model = copy.deepcopy(pretrained)
    model[1].reset_parameters()  # a fresh head for digits 5-9 (same init for every member)
    base = copy.deepcopy(model).to("meta")
    params = {k: v.detach().clone() for k, v in rename(dict(model.named_parameters())).items()}

    def loss_fn(p, batch):
        x, y = batch
        return F.cross_entropy(functional_call(base, _back(p), (x,)), y)

    plan = plan_of(args.fast, args.steps)
    scheds = schedules_of(fc.Curriculum(params), plan)
    E = len(plan)
    batch = tgt_tr  # the few labels, full batch: the same for every member and step
    opt = fc.adam(args.lr)

    # -- the runs one after another, static API (first: nothing compiled yet) ------------
    acc_alone = []
    t0 = time.perf_counter()
    for sched in progress(scheds, "one by one", not args.no_progress):
        one = fc.make_step(loss_fn, opt, sched)
        p, cur1 = dict(params), None
        st = opt.init(p, sched.at(step=0).masks)
        for t in range(args.steps):
            p, st, _, cur1 = one(p, st, batch, step=t, prev=cur1)
        with torch.no_grad():
            pred = functional_call(base, _back(p), (tgt_te[0],)).argmax(-1)
        acc_alone.append((pred == tgt_te[1]).float().mean().item())
    t_alone = time.perf_counter() - t0

    # -- the sweep: every member at once ------------------------------------------------
    step_fn = fc.make_sweep_step(loss_fn, opt, scheds, compile=args.compile)
    stacked0 = {k: v.expand(E, *v.shape).clone() for k, v in params.items()}
    if args.compile:  # compile outside the timing (a few seconds, once)
        warm = step_fn(stacked0, step_fn.init(stacked0), batch, step=0)
        del warm
    t0 = time.perf_counter()
    stacked, state, cur = stacked0, step_fn.init(stacked0), None
    for t in progress(range(args.steps), "sweep", not args.no_progress):
        stacked, state, _, cur = step_fn(stacked, state, batch, step=t, prev=cur)
    t_sweep = time.perf_counter() - t0
    with torch.no_grad():
        logits = vmap(lambda p: functional_call(base, _back(p), (tgt_te[0],)))(stacked)
    acc_sweep = (logits.argmax(-1) == tgt_te[1]).float().mean(-1).tolist()

    rows = [
        {
            "member": i,
            "unfreeze_step": "never" if n == NEVER else n,
            "backbone_coeff": c,
            "acc_sweep": acc_sweep[i],
            "acc_alone": acc_alone[i],
        }
        for i, (n, c) in enumerate(plan)
    ]
    print_table(rows)
    speedup = t_alone / t_sweep
    print(
        f"\n{E} members x {args.steps} steps: sweep {t_sweep:.2f} s, one after another "
        f"{t_alone:.2f} s -> {speedup:.1f}x faster ({torch.get_num_threads()} thread(s)"
        f"{', compiled' if args.compile else ''})"
    )
    diff = max(abs(a - b) for a, b in zip(acc_sweep, acc_alone))
    print(f"largest accuracy difference sweep vs alone: {diff:.4f}")
    plot = None if args.no_plot else save_plot(rows, args.steps)
    if plot is not None:
        print(f"plot: {plot}")
    return {
        "rows": rows,
        "t_sweep": t_sweep,
        "t_alone": t_alone,
        "speedup": speedup,
        "plot": plot,
        "params": stacked,
        "start": stacked0,
    }


def _back(p: dict) -> dict:
    """``backbone.* -> 0.*``, ``head.* -> 1.*`` (the module's own names)."""
    return {
        ("0." if k.startswith("backbone.") else "1.") + k.split(".", 1)[1]: v for k, v in p.items()
    }


def print_table(rows: list[dict]) -> None:
    print(
        f"{'member':>6} | {'unfreeze step':>13} | {'backbone coeff':>14} | {'acc (sweep)':>11} | {'acc (alone)':>11}"
    )
    print("-" * 68)
    for r in rows:
        print(
            f"{r['member']:>6} | {r['unfreeze_step']!s:>13} | {r['backbone_coeff']:>14g} | "
            f"{r['acc_sweep']:>11.3f} | {r['acc_alone']:>11.3f}"
        )


def save_plot(rows: list[dict], steps: int) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is optional
        print("(matplotlib not installed: no plot)")
        return None
    OUT.mkdir(exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for c in sorted({r["backbone_coeff"] for r in rows}, reverse=True):
        pts = [r for r in rows if r["backbone_coeff"] == c]
        xs = [steps if r["unfreeze_step"] == "never" else r["unfreeze_step"] for r in pts]
        ax.plot(xs, [r["acc_sweep"] for r in pts], "o-", label=f"backbone coefficient {c:g}")
    ax.set_xlabel(f"unfreeze step ({steps} = never)")
    ax.set_ylabel("final accuracy, digits 5-9")
    ax.set_title("When to unfreeze the backbone (one vmapped sweep)")
    ax.legend()
    fig.tight_layout()
    path = OUT / "unfreeze_sweep.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
