"""Scale-out on ``torch.distributed``: data-parallel grads, ZeRO-1, DTensor leaves, DCP.

Import explicitly (``import funcurriculum.distributed as fcd``) or reach it lazily as
``fc.distributed``. Everything here is built on ``torch.distributed`` collectives (gloo
on CPU, NCCL on CUDA); frozen leaves are never communicated. DTensor leaves need no
import from here: ``fc.adam(...).update`` handles them shard-locally.
"""

from __future__ import annotations

from .checkpoint import load, save
from .ensemble import gather_members, member_slice
from .grads import all_reduce_grads
from .zero import ShardedOptimizer, shard_optimizer

__all__ = [
    "ShardedOptimizer",
    "all_reduce_grads",
    "gather_members",
    "load",
    "member_slice",
    "save",
    "shard_optimizer",
]
