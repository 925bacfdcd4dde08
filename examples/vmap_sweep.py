"""A learning-rate sweep in one program: 32 models trained at once under ``vmap``.

Each ensemble member is the same small MLP (own random init) on scikit-learn's digits;
member ``i`` trains with ``lr * coefficient[i]``. The coefficients are simply a batched
input to ``vmap(opt.update)`` (one 0-d tensor per leaf, batched over members), so the
whole sweep is one vectorised training loop:

    stacked, _ = torch.func.stack_module_state(models)
    state = vmap(opt.init)(stacked)
    grads = vmap(grad(loss), in_dims=(0, None, None))(stacked, x, y)
    stacked, state = vmap(opt.update, in_dims=(0, 0, 0, None, 0))(
        stacked, grads, state, masks, coeffs)

The same sweep is then run as a Python loop of 32 ``torch.optim.Adam`` models (same
inits, same batches, ``lr * coefficient[i]``): the script prints both timings and
checks that both find the same accuracies.

Run:  python examples/vmap_sweep.py          (well under a minute on a 2-core CPU)
      python examples/vmap_sweep.py --fast   (a few seconds; used by the tests)
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from _common import add_common_args, digits, num_threads, progress, random_split
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

import funcurriculum as fc


def load_data(seed: int = 0):
    """Digits split 75/25 into ``(x_train, y_train), (x_val, y_val)``; x flattened to 64."""
    return random_split(*digits(), seed)


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def batches(n: int, batch: int, steps: int, seed: int) -> list[torch.Tensor]:
    """The index batches every member sees (shared by both implementations)."""
    g = torch.Generator().manual_seed(seed)
    out: list[torch.Tensor] = []
    while len(out) < steps:
        perm = torch.randperm(n, generator=g)
        out.extend(perm[i : i + batch] for i in range(0, n - batch + 1, batch))
    return out[:steps]


def sweep_vmap(models, coefficients, lr, data, idx, bar=True):
    """Train all members at once; returns (stacked params, seconds)."""
    base = copy.deepcopy(models[0]).to("meta")  # a skeleton for functional_call

    def loss(params, x, y):
        return F.cross_entropy(functional_call(base, params, (x,)), y)

    stacked, _ = stack_module_state(models)
    stacked = {k: v.detach().clone() for k, v in stacked.items()}
    opt = fc.adam(lr)
    masks = fc.Curriculum(stacked).masks  # all trainable (shared by every member)
    coeffs = {k: coefficients for k in stacked}  # one coefficient per member per leaf
    grads_of = vmap(grad(loss), in_dims=(0, None, None))
    update = vmap(opt.update, in_dims=(0, 0, 0, None, 0))
    x, y = data
    warm = vmap(opt.init)(stacked)  # one untimed step (first-call overheads), thrown away
    update(stacked, grads_of(stacked, x[idx[0]], y[idx[0]]), warm, masks, coeffs)
    t0 = time.perf_counter()
    state = vmap(opt.init)(stacked)
    for j in progress(idx, "vmap sweep", bar):
        grads = grads_of(stacked, x[j], y[j])
        stacked, state = update(stacked, grads, state, masks, coeffs)
    return stacked, time.perf_counter() - t0


def sweep_loop(models, coefficients, lr, data, idx, bar=True):
    """The classic way: one torch.optim.Adam per member, stepped in a Python loop."""
    models = [copy.deepcopy(m) for m in models]
    opts = [
        torch.optim.Adam(m.parameters(), lr=lr * float(c)) for m, c in zip(models, coefficients)
    ]
    x, y = data
    warm = copy.deepcopy(models[0])  # one untimed step, as for the vmap sweep
    warm_opt = torch.optim.Adam(warm.parameters(), lr=lr)
    F.cross_entropy(warm(x[idx[0]]), y[idx[0]]).backward()
    warm_opt.step()
    t0 = time.perf_counter()
    for j in progress(idx, "torch.optim loop", bar):
        for m, o in zip(models, opts):
            o.zero_grad()
            F.cross_entropy(m(x[j]), y[j]).backward()
            o.step()
    return models, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fast", action="store_true", help="tiny run (for tests / smoke checks)")
    ap.add_argument("--members", type=int, default=32)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-3, help="base lr (coefficients multiply it)")
    ap.add_argument("--seed", type=int, default=0)
    add_common_args(ap)
    args = ap.parse_args(argv)
    with num_threads(args.threads):
        return run(args)


def run(args: argparse.Namespace) -> dict:
    """Both sweeps; prints the tables, returns the results."""
    steps = 40 if args.fast else args.steps
    members = args.members
    bar = not args.no_progress
    train, val = load_data(args.seed)
    torch.manual_seed(args.seed)
    models = [make_model() for _ in range(members)]
    # log-spaced LR coefficients from 0.01x to 100x the base lr
    coefficients = torch.logspace(-2, 2, members, dtype=torch.float32)
    idx = batches(len(train[0]), 64, steps, args.seed)

    stacked, t_vmap = sweep_vmap(models, coefficients, args.lr, train, idx, bar)
    base = copy.deepcopy(models[0]).to("meta")
    with torch.no_grad():
        logits = vmap(functional_call, in_dims=(None, 0, None))(base, stacked, (val[0],))
        acc_vmap = (logits.argmax(-1) == val[1]).float().mean(-1)  # (members,)

    looped, t_loop = sweep_loop(models, coefficients, args.lr, train, idx, bar)
    with torch.no_grad():
        acc_loop = torch.stack([(m(val[0]).argmax(-1) == val[1]).float().mean() for m in looped])

    best = int(acc_vmap.argmax())
    show = sorted(set(range(0, members, max(members // 8, 1))) | {best, members - 1})
    print(f"LR sweep: {members} members x {steps} steps, base lr {args.lr:g}, Adam")
    print(
        f"showing {len(show)} of {members} members (every {max(members // 8, 1)}th, "
        f"the best and the last)\n"
    )
    header = f"{'coeff':>9}{'lr':>11}{'val acc (vmap)':>16}{'val acc (loop)':>16}"
    print(header)
    print("-" * len(header))
    for i in show:
        mark = "  <- best" if i == best else ""
        print(
            f"{coefficients[i].item():>9.3g}{args.lr * coefficients[i].item():>11.2e}"
            f"{acc_vmap[i].item():>16.1%}{acc_loop[i].item():>16.1%}{mark}"
        )
    diff = (acc_vmap - acc_loop).abs().max().item()
    print(f"\nbest coefficient: {coefficients[best].item():.3g} (val acc {acc_vmap[best]:.1%})")
    print(f"max |acc(vmap) - acc(loop)| over all {members} members: {diff:.1%}")
    print(
        f"time: vmap {t_vmap:.2f} s  vs  loop of {members} torch.optim.Adam {t_loop:.2f} s"
        f"  ({t_loop / t_vmap:.1f}x)"
    )
    return {
        "coefficients": coefficients,
        "acc_vmap": acc_vmap,
        "acc_loop": acc_loop,
        "best_coefficient": coefficients[best].item(),
        "t_vmap": t_vmap,
        "t_loop": t_loop,
        "stacked": stacked,
        "looped": looped,
    }


if __name__ == "__main__":
    main()
