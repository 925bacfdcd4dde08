"""The optimizer catalogue: torch.optim's optimizers (and Lion) as rules for the engine.

One module per optimizer, each a frozen-dataclass rule (torch.optim's per-leaf math) and
a factory with torch.optim's keyword names and defaults. See docs/catalogue.md.
"""

from ._adadelta import AdadeltaRule, adadelta
from ._adafactor import AdafactorRule, adafactor
from ._adagrad import AdagradRule, adagrad
from ._adamax import AdamaxRule, adamax
from ._lion import LionRule, lion
from ._muon import MuonRule, muon
from ._nadam import NAdamRule, nadam
from ._radam import RAdamRule, radam
from ._rmsprop import RMSpropRule, rmsprop

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
