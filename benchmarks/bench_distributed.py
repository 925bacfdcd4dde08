"""Scale-out benchmark: bytes communicated, step time and per-rank optimizer memory.

Two gloo ranks on this machine (CPU). Reports, for a model of ``--leaves`` equal leaves:

* ``all_reduce_grads`` with 90% of the leaves frozen vs all trainable (bytes through
  the collectives per rank per step, and time per call), and the hand-written baseline
  it replaces: one ``all_reduce`` per leaf, frozen leaves included;
* the sharded (ZeRO-1) Adam update vs the replicated one: time per update (including
  the parameter re-sync) and per-rank moment-buffer memory.

Run:   python benchmarks/bench_distributed.py            (spawns 2 ranks itself)
       torchrun --nproc-per-node 2 benchmarks/bench_distributed.py
Numbers are for gloo over loopback on a shared CPU; NCCL on several GPUs cannot be
measured on a single lent GPU, so none are claimed here.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import funcurriculum as fc
import funcurriculum.distributed as fcd


class Bytes:
    """Counts the bytes of floating-point tensors passed to all_reduce / broadcast."""

    def __init__(self):
        self.n = 0
        self._orig = {}

    def __enter__(self):
        for name in ("all_reduce", "broadcast"):
            orig = self._orig[name] = getattr(dist, name)

            def wrapped(t, *a, _orig=orig, **kw):
                if t.is_floating_point():
                    self.n += t.numel() * t.element_size()
                return _orig(t, *a, **kw)

            setattr(dist, name, wrapped)
        return self

    def __exit__(self, *exc):
        for name, orig in self._orig.items():
            setattr(dist, name, orig)


def timed(fn, reps: int) -> float:
    """Median seconds per call (after one warm-up), synchronised across ranks."""
    fn()
    times = []
    for _ in range(reps):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def per_leaf(grads):
    """The hand-written baseline: one all_reduce per leaf, frozen ones too."""
    out = {}
    for k, g in grads.items():
        t = g.clone()
        dist.all_reduce(t)
        out[k] = t.div_(dist.get_world_size())
    return out


def bench(args) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    params = {f"layer{i}.weight": torch.randn(args.numel) for i in range(args.leaves)}
    grads = {k: torch.randn_like(v) for k, v in params.items()}
    cur = fc.Curriculum(params)
    n_frozen = int(round(0.9 * args.leaves))
    frozen = cur.freeze([f"layer{i}" for i in range(n_frozen)])
    rows = []
    for name, c in (("all trainable", cur), ("90% frozen", frozen)):
        masks = c.masks
        with Bytes() as b:
            fcd.all_reduce_grads(grads, masks)
        t = timed(lambda m=masks: fcd.all_reduce_grads(grads, m), args.reps)
        rows.append((f"all_reduce_grads, {name}", b.n, t))
    with Bytes() as b:
        per_leaf(grads)
    rows.append(
        ("per-leaf all_reduce (hand-written)", b.n, timed(lambda: per_leaf(grads), args.reps))
    )

    opt = fc.adam(1e-3)
    sharded = fcd.shard_optimizer(opt)
    mem = {}
    for name, o in (("replicated Adam", opt), ("ZeRO-1 Adam", sharded)):
        state = o.init(params)
        mem[name] = sum(
            t.numel() * t.element_size()
            for f in ("exp_avg", "exp_avg_sq")
            for t in state[f].values()
        )
        p = {k: v.clone() for k, v in params.items()}
        box = [p, state]

        def step(o=o, box=box):
            box[0], box[1] = o.update(box[0], grads, box[1], donate=True)

        with Bytes() as b:
            step()
        rows.append((f"update, {name} (donate)", b.n, timed(step, args.reps)))
    mem_all = [None] * world
    dist.all_gather_object(mem_all, mem)
    if rank == 0:
        total = args.leaves * args.numel
        print(
            f"{world} gloo ranks, {args.leaves} leaves x {args.numel:,} fp32 = {total:,} params "
            f"({total * 4 / 2**20:.1f} MiB); median of {args.reps}"
        )
        print(f"{'case':<44}{'bytes in collectives/rank':>26}{'ms':>10}")
        for name, nbytes, t in rows:
            print(f"{name:<44}{nbytes:>26,}{t * 1e3:>10.2f}")
        ratio = rows[0][1] / max(rows[1][1], 1)
        print(f"bytes, all trainable / 90% frozen: {ratio:.1f}x")
        print("\nper-rank Adam moment memory (bytes):")
        for name in mem:
            per = [m[name] for m in mem_all]
            print(f"  {name:<20}" + "  ".join(f"rank{r} {v:>12,}" for r, v in enumerate(per)))


def worker(rank: int, world: int, port: int, args) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=120),
    )
    try:
        torch.set_num_threads(1)
        bench(args)
    finally:
        dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--leaves", type=int, default=50)
    ap.add_argument("--numel", type=int, default=50_000)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    if "RANK" in os.environ:  # under torchrun
        dist.init_process_group("gloo", timeout=timedelta(seconds=120))
        try:
            bench(args)
        finally:
            dist.destroy_process_group()
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(2, port, args), nprocs=2)


if __name__ == "__main__":
    main()
