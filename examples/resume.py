"""Interrupt a curriculum run, resume it from a checkpoint, get the very same result.

A digits MLP (with dropout, so the random number generators matter) trains under a
phase schedule: the backbone is frozen for the first two epochs, then trains with
layer-wise LR decay; the base LR follows a cosine schedule over the whole run. Every
epoch ends with ``fc.save_training_state`` (params, optimizer state, the curriculum in
force, step, epoch and the RNG states; atomic, code-free, last two files kept).

The script runs the same training three times:

1. uninterrupted;
2. "crashing" in the middle of an epoch after the phase change (a simulated
   failure: the process state is thrown away, only the checkpoint files survive);
3. resumed from the newest checkpoint with ``fc.load_training_state``, which also
   restores the RNG states, and trained to the end.

It prints a table and checks that the resumed run's params and optimizer state are
bit-identical to the uninterrupted run's.

Run:  python examples/resume.py          (a few seconds on a 2-core CPU)
      python examples/resume.py --fast   (used by the tests)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
import torch.nn.functional as F
from _common import add_common_args, digits, num_threads, progress, random_split, show_phase_changes
from torch import nn
from torch.func import functional_call

import funcurriculum as fc


class SimulatedCrash(RuntimeError):
    """Stands for a killed job / preempted machine."""


def load_data(seed: int = 0):
    return random_split(*digits(), seed)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 64), nn.ReLU()
        )
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.backbone(x))


MODEL = Net()  # train mode: dropout draws from torch's global generator


def init_params(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.detach().clone() for k, v in Net().named_parameters()}


def loss_fn(params, batch):
    x, y = batch
    return F.cross_entropy(functional_call(MODEL, params, (x,)), y)


@torch.no_grad()
def accuracy(params, data) -> float:
    MODEL.eval()
    try:
        return (
            (functional_call(MODEL, params, (data[0],)).argmax(-1) == data[1]).float().mean().item()
        )
    finally:
        MODEL.train()


def setup(params, epochs: int, steps_per_epoch: int, lr: float):
    """The optimizer and the phase schedule (pure data: rebuilt identically on resume)."""
    opt = fc.adamw(fc.cosine(lr, epochs * steps_per_epoch), weight_decay=1e-4)
    base = fc.layer_decay(params, 0.5, ["backbone.0", "backbone.3", "head"])
    schedule = fc.Schedule(base, fc.Freezer(name_starts_with="backbone", until_epoch=2))
    return opt, fc.make_step(loss_fn, opt, schedule)


def fit(
    params,
    state,
    prev,
    data,
    *,
    step_fn,
    start_epoch: int,
    epochs: int,
    batch: int,
    ckpt: str | None = None,
    crash_at_step: int | None = None,
    bar: bool = True,
    desc: str = "train",
):
    """Train from ``start_epoch`` to ``epochs``; checkpoint at each epoch's end.

    Shuffling and dropout use torch's global generator, which the checkpoint stores.
    Returns ``(params, state, curriculum, mean loss of the last epoch)``.
    """
    x, y = data
    step = int(state["step"])
    losses: list[float] = []
    for epoch in progress(range(start_epoch, epochs), desc, bar, start_epoch, epochs):
        perm = torch.randperm(len(x))
        losses = []
        for i in range(0, len(x) - batch + 1, batch):
            if crash_at_step is not None and step == crash_at_step:
                raise SimulatedCrash(f"simulated failure at step {step} (epoch {epoch})")
            j = perm[i : i + batch]
            params, state, loss, prev = step_fn(
                params, state, (x[j], y[j]), step=step, epoch=epoch, prev=prev
            )
            losses.append(loss.item())
            step += 1
        if ckpt is not None:
            fc.save_training_state(
                ckpt,
                params=params,
                opt_state=state,
                curriculum=prev,
                step=step,
                epoch=epoch + 1,  # the epoch to start from
                keep_last=2,
            )
    return params, state, prev, sum(losses) / max(len(losses), 1)


def same_tree(a, b) -> bool:
    """Bit-exact equality of two nested dicts / lists of tensors (and numbers)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same_tree(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same_tree, a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return a == b


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fast", action="store_true", help="tiny run (for tests / smoke checks)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--ckpt-dir", default=None, help="where to write checkpoints (default: a temp dir)"
    )
    add_common_args(ap)
    args = ap.parse_args(argv)
    with num_threads(args.threads), show_phase_changes():
        if args.ckpt_dir is None:
            with tempfile.TemporaryDirectory() as d:
                return run(args, d)
        os.makedirs(args.ckpt_dir, exist_ok=True)
        return run(args, args.ckpt_dir)


def run(args: argparse.Namespace, ckpt_dir: str) -> dict:
    epochs = 4 if args.fast else args.epochs
    batch = 64
    bar = not args.no_progress
    train, val = load_data(args.seed)
    steps_per_epoch = len(train[0]) // batch
    pattern = os.path.join(ckpt_dir, "run-epoch{epoch:03d}.pt")
    t0 = time.perf_counter()

    def fresh():
        """Everything a new process would build before training (or resuming)."""
        params = init_params(args.seed)
        opt, step_fn = setup(params, epochs, steps_per_epoch, args.lr)
        return params, opt, step_fn

    kw = dict(data=train, epochs=epochs, batch=batch, bar=bar)

    # 1. uninterrupted
    params, opt, step_fn = fresh()
    torch.manual_seed(args.seed + 1)  # shuffling and dropout
    ref_params, ref_state, ref_cur, ref_loss = fit(
        params, opt.init(params), None, step_fn=step_fn, start_epoch=0, desc="uninterrupted", **kw
    )

    # 2. the same run, killed mid-epoch after the phase change (epoch 2 unfreezes)
    crash_at = (2 * steps_per_epoch) + steps_per_epoch // 2 + 1
    params, opt, step_fn = fresh()
    torch.manual_seed(args.seed + 1)
    try:
        fit(params, opt.init(params), None, step_fn=step_fn, start_epoch=0, ckpt=pattern,
            crash_at_step=crash_at, desc="interrupted", **kw)  # fmt: skip
        raise AssertionError("the simulated crash did not happen")
    except SimulatedCrash as exc:
        crash_msg = str(exc)
    del params, opt, step_fn  # the crash loses everything but the files

    # 3. a new "process": rebuild the model and schedule, load the newest checkpoint
    torch.manual_seed(12345)  # whatever the new process would have: load restores it
    params, opt, step_fn = fresh()
    path = fc.latest_checkpoint(pattern)
    ts = fc.load_training_state(path, like_params=params)
    res_params, res_state, res_cur, res_loss = fit(
        ts.params, ts.opt_state, ts.curriculum, step_fn=step_fn, start_epoch=ts.epoch,
        ckpt=pattern, desc="resumed", **kw)  # fmt: skip

    same_params = same_tree(ref_params, res_params)
    same_state = same_tree(ref_state, res_state)
    total = epochs * steps_per_epoch
    print(f"resume: {epochs} epochs x {steps_per_epoch} steps; backbone frozen until epoch 2")
    print(
        f"{crash_msg}; resumed from {os.path.basename(path)} (step {ts.step}, epoch {ts.epoch})\n"
    )
    header = f"{'run':<16}{'steps':>12}{'last loss':>11}{'val acc':>9}"
    print(header)
    print("-" * len(header))
    print(
        f"{'uninterrupted':<16}{f'0-{total}':>12}{ref_loss:>11.4f}{accuracy(ref_params, val):>9.1%}"
    )
    print(f"{'interrupted':<16}{f'0-{crash_at}':>12}{'-':>11}{'-':>9}")
    print(
        f"{'resumed':<16}{f'{ts.step}-{total}':>12}{res_loss:>11.4f}"
        f"{accuracy(res_params, val):>9.1%}"
    )
    print(f"\ncurriculum at the end: frozen={sorted(res_cur.frozen)}, same as uninterrupted: "
          f"{res_cur == ref_cur}")  # fmt: skip
    print(
        f"resumed == uninterrupted (bit-exact): params {same_params}, optimizer state {same_state}"
    )
    print(f"[{time.perf_counter() - t0:.1f} s]")
    return {
        "same_params": same_params,
        "same_state": same_state,
        "same_curriculum": res_cur == ref_cur,
        "resumed_from_step": ts.step,
        "resumed_from_epoch": ts.epoch,
        "crash_at": crash_at,
        "val_acc": accuracy(res_params, val),
        "checkpoints": [os.path.basename(f) for f in fc.checkpoint_files(pattern)],
    }


if __name__ == "__main__":
    main()
