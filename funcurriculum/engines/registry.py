"""Engines for whole trees of special tensors, registered by the modules that know them.

An entry claims a list of param leaves (e.g. "some leaf is a DTensor") and then runs the
whole ``update`` its own way (DTensor: on the local shards, see
``funcurriculum/distributed/dtensor.py``). The core never imports those modules: an
entry is either registered by its module at import, or declared here lazily by the name
of the torch module whose tensors it handles, and imported the first time such a torch
module is loaded and an update runs. Entries claim special tensors only: a tree whose
leaves are plain tensors (``torch.Tensor``, ``nn.Parameter``) or ``None`` is claimed by
none, without asking them.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .._validate import _PLAIN as _PLAIN_TENSORS
from .._validate import compiling

_ENTRIES: dict[str, tuple[Callable[[Sequence[Any]], bool], Callable[..., Any]]] = {}

# torch module whose tensors need an engine -> the funcurriculum module registering it
_LAZY = {"torch.distributed.tensor": "funcurriculum.distributed.dtensor"}


_PLAIN = frozenset({*_PLAIN_TENSORS, type(None)})


def register(name: str, claims: Callable[[Sequence[Any]], bool], update: Callable[..., Any]):
    """Register a tree engine: ``claims(leaves)`` decides, ``update(opt, params, grads,
    state, masks, coeffs, donate)`` runs the whole update (``claims`` is not asked about
    trees of plain tensors)."""
    _ENTRIES[name] = (claims, update)


def find(leaves: Sequence[Any]) -> Callable[..., Any] | None:
    """The tree engine claiming ``leaves``, if any (cheap when none is needed)."""
    if _PLAIN.issuperset(map(type, leaves)):
        return None
    if not compiling():  # (an import cannot be traced; eager calls register it first)
        for torch_mod, ours in _LAZY.items():
            if torch_mod in sys.modules and ours not in sys.modules:
                importlib.import_module(ours)
    for claims, update in _ENTRIES.values():
        if claims(leaves):
            return update
    return None
