"""Former home of the optimizer driver, kept so that old imports keep working.

The driver is now split by concept: `funcurriculum.optimizer` (the interface),
`funcurriculum.engines` (how leaves are updated), `funcurriculum._counts` (per-leaf step
counts), `funcurriculum._validate` (input checks) and `funcurriculum.leaf_rule` (the rule
protocol and its optional kernels).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ._validate import functorch_active, has_dtensor, mask_value
from .engines import keep_flag as _keep_flag
from .leaf_rule import Kernels, LeafRule
from .optimizer import Optimizer, _empty, force_reference

__all__ = ["Kernels", "LeafRule", "Optimizer", "force_reference", "functorch_active"]


def _mask_value(m: Any, path: str) -> bool:
    return mask_value(m, path)


def _has_dtensor(leaves: Sequence[Any]) -> bool:
    return has_dtensor(leaves)


_ = (torch, _keep_flag, _empty)
