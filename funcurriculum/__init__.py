"""funcurriculum: curriculum learning for functional PyTorch (torch.func).

Params are pytrees; a :class:`Curriculum` says which leaves are frozen and which LR
coefficient each gets; optimizers are pure functions over pytrees that honour masks
and per-leaf coefficients, and ``transition`` refreshes the state of leaves that
were just unfrozen.
"""

from ._select import select_layers
from ._tree import layer_names, paths
from .checkpoint import load, save
from .curriculum import Curriculum
from .driver import LeafRule, Optimizer
from .lr_schedules import constant, cosine, join, linear_warmup, step_lr
from .optimizers import adam, adamw, sgd
from .partition import combine, partition

__version__ = "0.1.0"

__all__ = [
    "Curriculum",
    "LeafRule",
    "Optimizer",
    "adam",
    "adamw",
    "combine",
    "constant",
    "cosine",
    "join",
    "layer_names",
    "linear_warmup",
    "load",
    "partition",
    "paths",
    "save",
    "select_layers",
    "sgd",
    "step_lr",
]
