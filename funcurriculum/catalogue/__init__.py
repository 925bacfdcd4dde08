"""The optimizer catalogue: torch.optim's optimizers (and Lion) as rules for the engine.

One module per optimizer, each a frozen-dataclass rule (torch.optim's per-leaf math) and
a factory with torch.optim's keyword names and defaults. See docs/catalogue.md.
"""

from .adadelta import AdadeltaRule, adadelta
from .adafactor import AdafactorRule, adafactor
from .adagrad import AdagradRule, adagrad
from .adamax import AdamaxRule, adamax
from .lion import LionRule, lion
from .muon import MuonRule, muon
from .nadam import NAdamRule, nadam
from .radam import RAdamRule, radam
from .rmsprop import RMSpropRule, rmsprop

__all__ = [
    "AdadeltaRule",
    "AdafactorRule",
    "AdagradRule",
    "AdamaxRule",
    "LionRule",
    "MuonRule",
    "NAdamRule",
    "RAdamRule",
    "RMSpropRule",
    "adadelta",
    "adafactor",
    "adagrad",
    "adamax",
    "lion",
    "muon",
    "nadam",
    "radam",
    "rmsprop",
]
