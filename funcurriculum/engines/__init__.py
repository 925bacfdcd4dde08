"""The engines that run a rule over the trainable leaves of one update.

``Optimizer`` validates the inputs, then hands each group of leaves
to one engine (see ``funcurriculum.optimizer.Optimizer.update`` for how it chooses):

* `reference`: the rule's pure per-leaf ``step``; the only engine under ``torch.func``
  transforms, ``torch.compile`` and ``differentiable=True``, and the one that honours
  dynamic (tensor) masks;
* `generic`: the same ``step`` for rules without kernels, eagerly, on cache-sized flat
  chunks of each leaf when the rule is elementwise;
* `compiled` (opt-in): the same ``step`` through ``torch.compile``, one fused loop per
  leaf (fast once compiled; the first call per rule and dtype compiles);
* `fused`: the rule's declared in-place multi-tensor kernel (torch's fused kernels),
  directly on the caller's buffers (``donate=True``) or on fresh copies made wave by wave;
* `triton`: the rule's declared one-launch kernel (a learning rate and count per leaf,
  fresh outputs), on CUDA where Triton runs.

`registry` holds engines for whole trees of special tensors (DTensor leaves), registered
by the modules that know them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

ENGINES = ("auto", "reference", "generic", "compiled", "fused", "triton")


@dataclass
class Job:
    """One engine call: ``rule`` on leaves ``idx``; results replace the list entries."""

    rule: Any
    kernels: Any
    idx: list[int]
    lr_of: dict[int, Any]
    leaves: list[Any]
    grads: list[Any]
    cols: list[list[Any]]
    counts: list[Any]
    donate: bool
    maximize: bool
    wave: int


def keep_flag(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Carry ``requires_grad`` over to a fresh leaf tensor (params stay trainable)."""
    if old.requires_grad and not new.requires_grad and new.is_leaf:
        new.requires_grad_(True)
    return new


def check_engine(engine: Any) -> str:
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    return engine
