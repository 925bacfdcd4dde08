"""Save / load speed of a full training state (params + Adam state), against plain torch.save.

    python benchmarks/bench_checkpoint.py              # 256 MB state
    python benchmarks/bench_checkpoint.py --size-mb 1024

The state is params plus Adam's two moment buffers (three equal parts, float32, in 64
leaves). ``fc.save_training_state`` includes the fsync and the atomic rename;
plain ``torch.save`` does not fsync (so it measures less work). Each figure is the best of
``--repeat`` runs; the page cache is warm, so loads measure deserialisation, not the disk.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

import funcurriculum as fc


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=256.0, help="total state size in MB")
    ap.add_argument("--leaves", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="directory for the files (default: a temp dir)")
    args = ap.parse_args()

    n = int(args.size_mb * 2**20 / 4 / 3 / args.leaves)
    params = {f"layer{i}.weight": torch.randn(n) for i in range(args.leaves)}
    opt = fc.adam(1e-3)
    state = opt.init(params)
    state["exp_avg"] = {k: torch.randn(n) for k in params}
    state["exp_avg_sq"] = {k: torch.rand(n) for k in params}
    cur = fc.Curriculum(params)
    size = 3 * args.leaves * n * 4
    record = {"params": params, "opt_state": state}

    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        f_fc, f_pt = os.path.join(d, "fc.pt"), os.path.join(d, "plain.pt")
        save_fc = best(
            lambda: fc.save_training_state(
                f_fc, params=params, opt_state=state, curriculum=cur, step=1
            ),
            args.repeat,
        )
        load_fc = best(lambda: fc.load_training_state(f_fc, like_params=params), args.repeat)
        save_pt = best(lambda: torch.save(record, f_pt), args.repeat)
        load_pt = best(lambda: torch.load(f_pt, weights_only=False), args.repeat)
        load_wo = best(lambda: torch.load(f_pt, weights_only=True), args.repeat)
        load_mm = best(lambda: torch.load(f_pt, weights_only=True, mmap=True), args.repeat)

    gb = size / 2**30
    print(f"state: {size / 2**20:.0f} MB in {3 * args.leaves} tensors, torch {torch.__version__}")
    rows = [
        ("fc.save_training_state (atomic + fsync)", save_fc),
        ("torch.save (no fsync)", save_pt),
        ("fc.load_training_state (weights_only, checked)", load_fc),
        ("torch.load(weights_only=False)", load_pt),
        ("torch.load(weights_only=True)", load_wo),
        ("torch.load(weights_only=True, mmap=True) (lazy)", load_mm),
    ]
    for name, t in rows:
        print(f"{name:50s} {t:7.3f} s  {gb / t:6.2f} GB/s")


if __name__ == "__main__":
    main()
