"""funcurriculum: curriculum learning for functional PyTorch (torch.func).

Params are pytrees; a ``Curriculum`` says which leaves are frozen and which LR
coefficient each gets; optimizers are pure functions over pytrees that honour masks
and per-leaf coefficients, and ``transition`` refreshes the state of leaves that
were just unfrozen.
"""

from . import models as models
from ._rule import Rule
from ._select import select_layers
from ._tree import layer_names, paths
from .catalogue import (
    adadelta,
    adafactor,
    adagrad,
    adamax,
    lion,
    muon,
    nadam,
    radam,
    rmsprop,
)
from .chain import Chain, chain
from .checkpoint import checkpoint_files, latest_checkpoint, load, save
from .clip import (
    clip_by_global_norm,
    clip_grad_norm,
    clip_grad_value,
    global_norm,
    with_clipping,
)
from .coefficients import SetCoefficient, layer_decay
from .curriculum import Curriculum
from .freezer import Freezer
from .gradual import GradualUnfreeze
from .guard import SkipNonFinite, all_finite, nonfinite_guard, skip_nonfinite
from .inspection import plot_schedule, summary
from .leaf_rule import Kernels, LeafRule
from .lr_schedules import (
    constant,
    cosine,
    cosine_warm_restarts,
    cyclic_lr,
    exponential_lr,
    join,
    linear_lr,
    linear_warmup,
    multistep_lr,
    one_cycle,
    polynomial_lr,
    step_lr,
)
from .modules import (
    NORM_LAYERS,
    apply_requires_grad,
    frozen_norm_eval,
    merge_buffers,
    shield_buffers,
    stack_modules,
)
from .multi import MultiOptimizer, labels_by_pattern, multi_optimizer
from .optimizer import Optimizer, force_reference
from .optimizers import adam, adamw, sgd
from .param_index import ParamIndex
from .partition import combine, partition
from .plateau import ReduceOnPlateau, reduce_on_plateau
from .schedule import Schedule, apply_transition, describe_change
from .sweep import Sweep, make_sweep_step, stack_curricula
from .train_step import make_step
from .training_state import (
    TrainingState,
    load_training_state,
    rng_state,
    save_training_state,
    set_rng_state,
)

__version__ = "0.1.0"

__all__ = [
    "Chain",
    "Curriculum",
    "Kernels",
    "LeafRule",
    "force_reference",
    "Optimizer",
    "SkipNonFinite",
    "TrainingState",
    "adam",
    "adamw",
    "all_finite",
    "chain",
    "checkpoint_files",
    "clip_grad_norm",
    "clip_grad_value",
    "clip_by_global_norm",
    "combine",
    "constant",
    "cosine",
    "global_norm",
    "join",
    "latest_checkpoint",
    "layer_names",
    "linear_warmup",
    "labels_by_pattern",
    "load",
    "load_training_state",
    "nonfinite_guard",
    "multi_optimizer",
    "MultiOptimizer",
    "partition",
    "paths",
    "rng_state",
    "save",
    "save_training_state",
    "select_layers",
    "set_rng_state",
    "sgd",
    "skip_nonfinite",
    "step_lr",
    "with_clipping",
    "Rule",
    "SetCoefficient",
    "layer_decay",
    "Freezer",
    "GradualUnfreeze",
    "plot_schedule",
    "summary",
    "Schedule",
    "apply_transition",
    "describe_change",
    "make_step",
    "Sweep",
    "make_sweep_step",
    "stack_curricula",
    "NORM_LAYERS",
    "apply_requires_grad",
    "frozen_norm_eval",
    "merge_buffers",
    "shield_buffers",
    "adadelta",
    "adafactor",
    "adagrad",
    "adamax",
    "lion",
    "muon",
    "nadam",
    "radam",
    "rmsprop",
    "cosine_warm_restarts",
    "cyclic_lr",
    "exponential_lr",
    "linear_lr",
    "multistep_lr",
    "one_cycle",
    "polynomial_lr",
    "ReduceOnPlateau",
    "reduce_on_plateau",
    "stack_modules",
    "ParamIndex",
]


def __getattr__(name: str):
    # ``fc.distributed`` is imported on first use: it pulls in torch.distributed.
    if name == "distributed":
        import importlib

        return importlib.import_module(".distributed", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
