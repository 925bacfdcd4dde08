"""A 64-member learning-rate-coefficient sweep, vmapped, split over ranks.

Every member is the same small MLP on scikit-learn's digits, trained with Adam; member
``i`` gives the backbone and the head their own LR coefficients (a grid of 8 x 8).
Each rank trains its slice of the members in one ``torch.func.vmap`` (per-member
coefficients are a batched input to ``opt.update``); ``fc.distributed.gather_members``
collects the results and rank 0 prints one table. Nothing is communicated during
training: members are independent.

Run:  torchrun --nproc-per-node 2 examples/distributed_sweep.py   (CPU, gloo)
      python examples/distributed_sweep.py                        (one process)
      add --fast for a tiny run.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F
from _common import digits, random_split
from torch.func import grad, vmap

import funcurriculum as fc
import funcurriculum.distributed as fcd


def load_data(seed: int = 0):
    return random_split(*digits(), seed)


def init_params(seed: int, width: int = 32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "backbone.weight": torch.randn(width, 64, generator=g) / 8.0,
        "backbone.bias": torch.zeros(width),
        "head.weight": torch.randn(10, width, generator=g) / width**0.5,
        "head.bias": torch.zeros(10),
    }


def logits(p, x):
    h = torch.relu(x @ p["backbone.weight"].T + p["backbone.bias"])
    return h @ p["head.weight"].T + p["head.bias"]


def loss(p, x, y):
    return F.cross_entropy(logits(p, x), y)


def sweep(coeffs: torch.Tensor, steps: int, data, seed: int = 0) -> torch.Tensor:
    """Train one member per row of ``coeffs`` (backbone, head); rows: loss, test acc."""
    (x, y), (xt, yt) = data
    opt = fc.adam(1e-2)
    base = init_params(seed)
    n = coeffs.shape[0]
    params = {k: v.expand(n, *v.shape).clone() for k, v in base.items()}

    def step(p, s, c):
        cs = {k: c[0] if k.startswith("backbone") else c[1] for k in p}
        return opt.update(p, grad(loss)(p, x, y), s, None, cs)

    state = vmap(opt.init)(params)
    for _ in range(steps):
        params, state = vmap(step)(params, state, coeffs)
    final = vmap(loss, in_dims=(0, None, None))(params, x, y)
    acc = vmap(lambda p: (logits(p, xt).argmax(-1) == yt).float().mean())(params)
    return torch.stack([final, acc], dim=1)


def main(argv: list[str] | None = None) -> torch.Tensor | None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    owned = "RANK" in os.environ and not dist.is_initialized()
    if owned:
        dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    distributed = dist.is_initialized()
    try:
        grid = torch.logspace(-2, 1, 8)
        coeffs = torch.cartesian_prod(grid, grid)  # 64 members: (backbone, head)
        steps = 10 if args.fast else args.steps
        data = load_data()
        t0 = time.perf_counter()
        if distributed:
            mine = fcd.member_slice(len(coeffs))
            table = fcd.gather_members(sweep(coeffs[mine], steps, data), len(coeffs))
            rank, world = dist.get_rank(), dist.get_world_size()
        else:
            table = sweep(coeffs, steps, data)
            rank, world = 0, 1
        if rank == 0:
            print(
                f"{len(coeffs)} members over {world} rank(s), {steps} steps each, "
                f"{time.perf_counter() - t0:.1f} s"
            )
            order = torch.argsort(table[:, 0])
            print(
                f"{'member':>6}{'backbone c':>12}{'head c':>10}{'train loss':>12}{'test acc':>10}"
            )
            for i in order[:10].tolist():
                b, h = coeffs[i].tolist()
                print(f"{i:>6}{b:>12.3g}{h:>10.3g}{table[i, 0]:>12.4f}{table[i, 1]:>10.1%}")
            print(f"... {len(coeffs) - 10} more; worst train loss {table[:, 0].max():.4f}")
        return table
    finally:
        if owned:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
