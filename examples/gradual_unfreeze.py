"""Gradual unfreezing of a ResNet, driven by Lighter-style freezers.

The model is ``fc.models.ResNetSmall`` (torchvision's ResNet layer names: ``conv1``,
``bn1``, ``layer1..layer4``, ``fc``; random init) on scikit-learn's digits, or
torchvision's ``resnet18`` with ``--arch resnet18`` when torchvision is installed.

The phases are data: one ``fc.Freezer`` per stage, as one would write Lighter
``Freezer`` callbacks in a config, each releasing its stage one epoch later than the
stage above it (the head trains first, the stem last: fastai / ULMFiT-style gradual
unfreezing), on top of layer-wise LR decay coefficients. The same phases written with
``fc.GradualUnfreeze`` are checked to be identical. The loop asks the schedule for
the curriculum of each epoch and calls ``fc.apply_transition`` (fresh Adam state for
just-unfrozen leaves, one log line per phase change). BatchNorm layers stay trainable
inside frozen stages (Lighter's ``except_names``; fastai's ``train_bn``), and
``fc.shield_buffers`` would keep the running statistics of any frozen norm layer
bit-identical.

The schedule plot (effective LR per layer over steps, frozen spans grey) is saved
with ``fc.plot_schedule`` when matplotlib is installed (the ``[plot]`` extra).

Run:  python examples/gradual_unfreeze.py          (well under a minute on a 2-core CPU)
      python examples/gradual_unfreeze.py --fast   (used by the tests)
"""

from __future__ import annotations

import argparse
import os
import re
import time

import torch
import torch.nn.functional as F
from _common import add_common_args, digits, num_threads, output_path, progress, random_split
from torch.func import functional_call, grad_and_value

import funcurriculum as fc
from funcurriculum.models import ResNetSmall

STAGES = ["conv1", "layer1", "layer2", "layer3", "layer4"]  # input side first; "fc" is the head


def load_data(seed: int = 0, size: int = 8):
    """Digits as 1-channel images (optionally upsampled to ``size``), split 75/25."""
    x, y = digits(images=True)
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return random_split(x, y, seed)


def build_model(arch: str) -> torch.nn.Module | None:
    """The network, or ``None`` when ``arch`` needs a package that is not installed."""
    if arch == "small":
        return ResNetSmall(num_classes=10, widths=(8, 16, 16, 32), in_channels=1)
    if arch == "resnet18":
        try:
            import torchvision
        except ImportError:
            return None
        m = torchvision.models.resnet18(num_classes=10)  # random init
        m.conv1 = torch.nn.Conv2d(1, 64, 3, 1, 1, bias=False)  # 1-channel small images
        return m
    raise ValueError(f"unknown arch {arch!r}: choose 'small' or 'resnet18'")


def stage_patterns(stage: str) -> list[str]:
    """Prefixes of one stage (the stem is conv1 + bn1)."""
    return ["conv1", "bn1"] if stage == "conv1" else [stage]


def lighter_freezers(release_epoch: dict[str, int], keep: list[str]) -> list[fc.Freezer]:
    """One Lighter-style ``Freezer`` per stage: ``name_starts_with`` + ``until_epoch``.

    ``keep`` (layer names) go to ``except_names``: they stay trainable. In a Lighter
    YAML config each freezer would read::

        - _target_: lighter.callbacks.Freezer
          name_starts_with: ["layer3."]
          except_names: ["layer3.0.bn1.weight", ...]
          until_epoch: 2
    """
    return [
        fc.Freezer(
            name_starts_with=[p + "." for p in stage_patterns(s)], except_names=keep, until_epoch=e
        )
        for s, e in release_epoch.items()
    ]


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fast", action="store_true", help="tiny run (for tests / smoke checks)")
    ap.add_argument("--arch", default="small", choices=["small", "resnet18"])
    ap.add_argument("--every", type=int, default=1, help="epochs between two releases")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--decay", type=float, default=0.7, help="LLRD factor per stage")
    ap.add_argument(
        "--plot",
        default=str(output_path("gradual_unfreeze.png")),
        help="schedule plot file (default outputs/gradual_unfreeze.png; '' = none)",
    )
    ap.add_argument("--seed", type=int, default=0)
    add_common_args(ap)
    args = ap.parse_args(argv)
    with num_threads(args.threads):
        return run(args)


def run(args: argparse.Namespace) -> dict | None:
    torch.manual_seed(args.seed)
    model = build_model(args.arch)
    if model is None:
        print(f"--arch {args.arch} needs torchvision (pip install torchvision): skipped")
        return None
    n = len(STAGES)
    epochs = n * args.every + (2 if args.fast else 3)  # after the last release: all trainable
    batch = 64
    bar = not args.no_progress
    train, val = load_data(args.seed, size=8 if args.arch == "small" else 32)
    if args.fast:
        train = (train[0][:512], train[1][:512])
    x, y = train
    steps_per_epoch = len(x) // batch

    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}

    # Phases as data: LLRD coefficients (head 1.0, each stage towards the input x decay)
    # and one Lighter-style freezer per stage, released output side first.
    groups = [stage_patterns(s) for s in STAGES] + [["fc"]]
    base = fc.layer_decay(fc.Curriculum.from_module(model), args.decay, groups)
    release = {s: (n - i) * args.every for i, s in enumerate(STAGES)}  # layer4 first
    # BatchNorm layers stay trainable inside frozen stages (fastai / Lightning train_bn):
    # with a random init, a frozen BN's running statistics would never be learnt.
    norms = base.select_by_class(fc.NORM_LAYERS)
    schedule = fc.Schedule(base, *lighter_freezers(release, norms))

    # The same phases with one GradualUnfreeze rule.
    # (its groups are patterns: each stage's conv layers, BatchNorm left out)
    convs = [
        [re.escape(c) for c in base.select_by_class(torch.nn.Conv2d, under=stage_patterns(s))]
        for s in STAGES
    ]
    gradual = fc.Schedule(base, fc.GradualUnfreeze(convs, every_n_epochs=args.every))
    same_as_gradual = all(schedule.at(epoch=e) == gradual.at(epoch=e) for e in range(epochs))

    lr = fc.cosine(args.lr, epochs * steps_per_epoch, final=args.lr * 0.1)
    opt = fc.adam(lr)

    def loss_fn(trainable, frozen, bufs, xb, yb):
        out = functional_call(model, (fc.combine(trainable, frozen), bufs), (xb,))
        return F.cross_entropy(out, yb)

    step_grad = grad_and_value(loss_fn)
    g = torch.Generator().manual_seed(args.seed)
    cur0 = schedule.at(epoch=0)
    state = opt.init(params, cur0.masks)  # frozen leaves: no Adam moments yet
    stem_before = params["conv1.weight"].clone()
    prev, step, rows = None, 0, []
    t0 = time.perf_counter()
    for epoch in progress(range(epochs), "epochs", bar):
        cur = schedule.at(epoch=epoch)
        state = fc.apply_transition(opt, state, params, prev or cur0, cur, epoch=epoch)
        change = fc.describe_change(prev, cur) if prev is not None else "start"
        prev = cur
        masks, coeffs = cur.masks, cur.coeffs
        perm = torch.randperm(len(x), generator=g)
        losses = []
        for i in range(0, len(x) - batch + 1, batch):
            j = perm[i : i + batch]
            trainable, frozen = fc.partition(params, masks)
            bufs = fc.shield_buffers(buffers, cur)  # a frozen BN layer's stats would not move
            grads, loss = step_grad(trainable, frozen, bufs, x[j], y[j])
            params, state = opt.update(params, grads, state, masks, coeffs)
            losses.append(loss.item())
            step += 1
        model.eval()
        with torch.no_grad():
            acc = functional_call(model, (params, buffers), (val[0],)).argmax(-1) == val[1]
        model.train()
        rows.append((epoch, cur.num_trainable, sum(losses) / len(losses), acc.float().mean().item(),
                     change or "-"))  # fmt: skip
    elapsed = time.perf_counter() - t0

    print(f"gradual unfreezing: {args.arch} ResNet, {epochs} epochs x {steps_per_epoch} steps\n")
    print("Lighter-style freezers (release epoch per stage):")
    for s in STAGES:
        print(f"  Freezer(name_starts_with={[p + '.' for p in stage_patterns(s)]}, "
              f"except_names=<{len(norms)} BatchNorm layers>, until_epoch={release[s]})")  # fmt: skip
    print(f"same phases as GradualUnfreeze(every_n_epochs={args.every}): {same_as_gradual}\n")
    header = f"{'epoch':>5}{'trainable':>11}{'loss':>8}{'val acc':>9}  phase change"
    print(header)
    print("-" * (len(header) + 30))
    for e, k, loss, acc, change in rows:
        print(f"{e:>5}{k:>11,}{loss:>8.3f}{acc:>9.1%}  {change}")

    plot = None
    if args.plot:
        os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
        try:
            plot = fc.plot_schedule(schedule, epochs * steps_per_epoch, lr=lr, path=args.plot,
                                    steps_per_epoch=steps_per_epoch)  # fmt: skip
            print(f"\nschedule plot saved to {os.fspath(plot)}")
        except ImportError:
            print("\nschedule plot skipped: pip install matplotlib (the [plot] extra)")
    print(f"[{elapsed:.1f} s]")
    return {
        "rows": rows,
        "same_as_gradual": same_as_gradual,
        "final_acc": rows[-1][3],
        "plot": plot,
        "schedule": schedule,
        "stem_moved": not torch.equal(stem_before, params["conv1.weight"]),
        "stem_frozen_until": release["conv1"],
    }


if __name__ == "__main__":
    main()
