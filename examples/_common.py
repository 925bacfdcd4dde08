"""Helpers shared by the example scripts (not part of the ``funcurriculum`` package).

The examples are run as ``python examples/<name>.py``, so this folder is on ``sys.path``
and ``from _common import ...`` works; the tests add the folder themselves.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

try:  # optional progress bar: pip install tqdm (or the [examples] extra)
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - exercised when tqdm is absent
    tqdm = None

Split = tuple[torch.Tensor, torch.Tensor]


def interactive() -> bool:
    """Whether stderr (where tqdm draws) is a terminal."""
    return sys.stderr.isatty()


def progress(
    iterable: Iterable, desc: str, enabled: bool = True, initial: int = 0, total: int | None = None
) -> Iterable:
    """Wrap ``iterable`` in a tqdm bar when tqdm is installed, ``enabled`` and stderr is a TTY.

    Non-interactive logs (CI, ``> log.txt``) get no bar: tqdm's carriage returns clutter them.
    """
    if tqdm is None or not enabled or not interactive():
        return iterable
    return tqdm(iterable, desc=desc, leave=False, initial=initial, total=total)


OUTPUTS = Path(__file__).resolve().parents[1] / "outputs"


def output_path(name: str) -> Path:
    """Where an example writes a file: ``outputs/<name>`` (gitignored), never the repo root."""
    return OUTPUTS / name


@contextmanager
def show_phase_changes(enabled: bool = True) -> Iterator[None]:
    """Print the ``funcurriculum`` logger's INFO lines (the phase changes) inside the block.

    ``fc.make_step`` / ``fc.apply_transition`` log one line per phase change on the
    ``"funcurriculum"`` logger; Python shows INFO records only once logging is configured,
    so an example that wants them visible attaches a handler for the block.
    """
    if not enabled:
        yield
        return
    logger = logging.getLogger("funcurriculum")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("  [funcurriculum] %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def digits(images: bool = False) -> Split:
    """sklearn's 8x8 digits as ``(x, y)``: ``x`` in ``[0, 1]``, ``(n, 1, 8, 8)`` or ``(n, 64)``."""
    from sklearn.datasets import load_digits  # the [examples] extra

    data = load_digits()
    if images:
        x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    else:
        x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    return x, torch.tensor(data.target, dtype=torch.int64)


def random_split(x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> tuple[Split, Split]:
    """A seeded 75/25 split into ``(x_train, y_train), (x_val, y_val)``."""
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    cut = (len(x) * 3) // 4
    return (x[perm[:cut]], y[perm[:cut]]), (x[perm[cut:]], y[perm[cut:]])


def transfer_split(
    x: torch.Tensor, y: torch.Tensor, labelled_per_class: int, seed: int = 0
) -> tuple[Split, Split, Split, Split]:
    """Digits 0-4 (75/25 per class) and ``labelled_per_class`` labelled digits 5-9.

    Returns ``(pre_train, pre_test, tgt_train, tgt_test)``, labels shifted to ``0..4``.
    """
    g = torch.Generator().manual_seed(seed)

    def split(classes: Sequence[int], n_train: int | None) -> tuple[Split, Split]:
        tr, te = [], []
        for c in classes:
            idx = torch.nonzero(y == c).flatten()
            idx = idx[torch.randperm(len(idx), generator=g)]
            cut = n_train if n_train is not None else (len(idx) * 3) // 4
            tr.append(idx[:cut])
            te.append(idx[cut:])
        tr_i, te_i = torch.cat(tr), torch.cat(te)
        return (x[tr_i], y[tr_i] - classes[0]), (x[te_i], y[te_i] - classes[0])

    return (*split(range(0, 5), None), *split(range(5, 10), labelled_per_class))


def add_common_args(ap: argparse.ArgumentParser) -> None:
    """Add the ``--threads`` and ``--no-progress`` options every example shares."""
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (tiny models: 1 is fastest)"
    )
    ap.add_argument("--no-progress", action="store_true")


def add_transfer_args(ap: argparse.ArgumentParser) -> None:
    """Add the options of the digits 0-4 -> 5-9 transfer experiment (serial and distributed)."""
    ap.add_argument("--labelled", type=int, default=10, help="labelled 5-9 examples per class")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--decay", type=float, default=0.5, help="LLRD factor per layer")
    ap.add_argument("--seed", type=int, default=0)


@contextmanager
def num_threads(n: int) -> Iterator[None]:
    """Use ``n`` torch threads inside the block and restore the previous count after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class DigitsMLP(nn.Module):
    """The digits examples' model: a three-layer MLP backbone (8x8 image -> 64 features,
    under ``backbone``) and a linear ``head``."""

    def __init__(self, classes: int):
        super().__init__()
        self.backbone = nn.Sequential(
            OrderedDict(
                flat=nn.Flatten(),
                fc1=nn.Linear(64, 128),
                act1=nn.ReLU(),
                fc2=nn.Linear(128, 128),
                act2=nn.ReLU(),
                fc3=nn.Linear(128, 64),
                act3=nn.ReLU(),
            )
        )
        self.head = nn.Linear(64, classes)

    def forward(self, x):
        return self.head(self.backbone(x))


def digits_params(classes: int, seed: int) -> dict[str, torch.Tensor]:
    """Freshly initialised `DigitsMLP` params (torch's default init, seeded)."""
    torch.manual_seed(seed)
    return {k: v.detach().clone() for k, v in DigitsMLP(classes).named_parameters()}
