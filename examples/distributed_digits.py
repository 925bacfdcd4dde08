"""The digits transfer curriculum, data-parallel over ``torch.distributed`` ranks.

The curriculum of ``examples/digits_transfer.py`` on scikit-learn's bundled digits:
pretrain everything on digits 0-4, train a new head on digits 5-9 with the backbone
frozen, then unfreeze the backbone with layer-wise LR decay (LLRD). Each rank computes
the gradient of its share of every batch, gradients are averaged with
``fc.distributed.all_reduce_grads`` (frozen leaves never sent), and the optimizer state
is sharded over the ranks with ``fc.distributed.shard_optimizer`` (ZeRO-1). The run
matches the single-process one: each rank's loss is its share of the full-batch mean,
so the averaged gradient is the full-batch gradient (equal up to float rounding).

Run:  torchrun --nproc-per-node 2 examples/distributed_digits.py   (CPU, gloo)
      python examples/distributed_digits.py                        (one process)
      add --fast for a tiny run, --no-zero for replicated optimizer state.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import OrderedDict
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F
from _common import add_transfer_args, digits, transfer_split
from torch import nn
from torch.func import functional_call, grad_and_value

import funcurriculum as fc
import funcurriculum.distributed as fcd


def load_data(labelled_per_class: int, seed: int = 0):
    """Digits 0-4 (pretraining) and a few labelled digits 5-9; labels shifted to 0..4."""
    return transfer_split(*digits(), labelled_per_class, seed)


def make_model(width: int) -> nn.Module:
    body = OrderedDict(
        fc1=nn.Linear(64, width), act1=nn.ReLU(), fc2=nn.Linear(width, width), act2=nn.ReLU()
    )
    return nn.Sequential(OrderedDict(backbone=nn.Sequential(body), head=nn.Linear(width, 5)))


MODEL = make_model(64)  # a stateless skeleton: functional_call swaps the params in


def fresh_params(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.detach().clone() for k, v in make_model(64).named_parameters()}


@torch.no_grad()
def accuracy(params, data) -> float:
    x, y = data
    return (functional_call(MODEL, params, (x,)).argmax(-1) == y).float().mean().item()


def llrd(cur: fc.Curriculum, layers: list[str], decay: float) -> fc.Curriculum:
    """Layer-wise LR decay: the last of ``layers`` gets ``decay``, the first ``decay**n``."""
    for i, name in enumerate(layers):
        cur = cur.set_lr_coefficient(decay ** (len(layers) - i), name)
    return cur


def setup() -> tuple[int, int, bool]:
    """``(world, rank, owned)``: join the torchrun job, reuse a process group already
    initialised by the caller, or run as a single process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank(), False
    if "RANK" not in os.environ:
        return 1, 0, False
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    return dist.get_world_size(), dist.get_rank(), True


def shard_loss(trainable, frozen, x, y, scale):
    """This rank's share of the full-batch mean loss (``sum / global batch * world``)."""
    logits = functional_call(MODEL, fc.combine(trainable, frozen), (x,))
    return F.cross_entropy(logits, y, reduction="sum") * scale


def train(params, opt, state, cur, data, epochs, batch, seed, world, rank):
    """``epochs`` passes over ``data``; every rank sees the same batches, takes its share."""
    masks, coeffs = cur.masks, cur.coeffs
    x, y = data
    g = torch.Generator().manual_seed(seed)
    step_grad = grad_and_value(shard_loss)
    steps = 0
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            j = perm[i : i + batch]
            mine = j.chunk(world)[rank] if rank < len(j.chunk(world)) else j[:0]
            trainable, frozen = fc.partition(params, masks)
            grads, _loss = step_grad(trainable, frozen, x[mine], y[mine], world / len(j))
            if world > 1:
                grads = fcd.all_reduce_grads(grads, masks)
            params, state = opt.update(params, grads, state, masks, coeffs, donate=True)
            steps += 1
    return params, state, steps


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fast", action="store_true", help="tiny run (for tests / smoke checks)")
    add_transfer_args(ap)
    ap.add_argument("--no-zero", action="store_true", help="replicated optimizer state")
    ap.add_argument("--save", help="rank 0 writes final params and accuracies here (fc.save)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    world, rank, owned = setup()
    try:
        return run(args, world, rank)
    finally:
        if owned:
            dist.destroy_process_group()


def run(args, world: int, rank: int) -> dict:
    e_pre, e_head, e_fine = (1, 5, 5) if args.fast else (15, 40, 40)
    batch = 32
    t0 = time.perf_counter()
    pre_train, pre_test, tgt_train, tgt_test = load_data(args.labelled, args.seed)
    opt = fc.adam(args.lr)
    if world > 1 and not args.no_zero:
        opt = fcd.shard_optimizer(opt)
    say = print if rank == 0 else (lambda *a, **k: None)
    say(f"{world} rank(s), optimizer {opt!r}")
    acc = {}

    # Phase 1: pretrain everything on digits 0-4.
    params = fresh_params(args.seed)
    cur = fc.Curriculum(params)
    state = opt.init(params)
    params, state, n = train(
        params, opt, state, cur, pre_train, e_pre, batch, args.seed, world, rank
    )
    acc["pretrain"] = accuracy(params, pre_test)
    say(f"pretrain (0-4)       {n:4d} steps  test acc {acc['pretrain']:.1%}")

    # Phase 2: new head for digits 5-9, backbone frozen (never communicated).
    head = fresh_params(args.seed + 1)
    params = {k: (head[k] if k.startswith("head.") else v.clone()) for k, v in params.items()}
    cur = fc.Curriculum(params).freeze("backbone")
    state = opt.init(params, cur.masks)
    params, state, n = train(
        params, opt, state, cur, tgt_train, e_head, batch, args.seed + 2, world, rank
    )
    acc["head"] = accuracy(params, tgt_test)
    say(f"head only (5-9)      {n:4d} steps  test acc {acc['head']:.1%}")

    # Phase 3: unfreeze with layer-wise LR decay; ZeRO-1 rebalances ownership.
    layers = fc.select_layers(params, r"backbone\.\w+")
    new = llrd(cur.unfreeze("backbone"), layers, args.decay)
    state = opt.transition(state, params, cur.masks, new.masks)
    cur = new
    params, state, n = train(
        params, opt, state, cur, tgt_train, e_fine, batch, args.seed + 3, world, rank
    )
    acc["finetune"] = accuracy(params, tgt_test)
    say(f"finetune LLRD (5-9)  {n:4d} steps  test acc {acc['finetune']:.1%}")
    say(f"[{time.perf_counter() - t0:.1f} s]")
    if args.save and rank == 0:
        fc.save(args.save, {"params": params, "acc": acc, "world": world})
    return {"params": params, "acc": acc}


if __name__ == "__main__":
    main()
