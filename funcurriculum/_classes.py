"""Module classes by name: torch's normalisation layers and class-name matching.

Curricula record layer classes as qualified names (checkpoints stay code-free), so
every class test here works on names: a wanted entry is a qualified name
(``"torch.nn.modules.linear.Linear"``), a bare class name (``"Linear"``) or the
by-name norm rule that ``NORM_LAYERS`` brings with it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import Any

from torch import nn


def _norm_layers() -> tuple[type[nn.Module], ...]:
    names = (
        "BatchNorm1d",
        "BatchNorm2d",
        "BatchNorm3d",
        "SyncBatchNorm",
        "LazyBatchNorm1d",
        "LazyBatchNorm2d",
        "LazyBatchNorm3d",
        "LayerNorm",
        "GroupNorm",
        "InstanceNorm1d",
        "InstanceNorm2d",
        "InstanceNorm3d",
        "LazyInstanceNorm1d",
        "LazyInstanceNorm2d",
        "LazyInstanceNorm3d",
        "RMSNorm",  # torch >= 2.4
    )
    return tuple(getattr(nn, n) for n in names if hasattr(nn, n))


#: torch's parameter-bearing normalisation classes: BatchNorm1d/2d/3d, SyncBatchNorm,
#: LayerNorm, GroupNorm, InstanceNorm1d/2d/3d, RMSNorm and the Lazy variants.
#: Pass it as ``keep=`` to `Curriculum.freeze` for fastai's / Lightning's
#: ``train_bn`` behaviour. Subclasses match too (classes are compared along the MRO).
#: Given to ``keep=`` / ``classes=`` as a whole, it also recognises other libraries'
#: norm layers by name (see `NORM_NAME_RULE`).
NORM_LAYERS: tuple[type[nn.Module], ...] = _norm_layers()

#: The by-name rule for other libraries' norm layers (transformers' ``LlamaRMSNorm``,
#: ``T5LayerNorm``, ``MistralRMSNorm``, timm's ``LayerNorm2d``, apex's ``FusedLayerNorm``):
#: a layer whose class name (or a base's) ends in ``Norm`` (optionally ``Norm1d/2d/3d``)
#: and whose parameters are all its own (no parameter-bearing child module) and named
#: ``weight`` / ``bias``. The second half leaves out composite layers such as diffusers'
#: ``AdaLayerNorm`` (a Linear plus a norm).
NORM_NAME_RULE = re.compile(r".*Norm([123]d)?")

# The marker ``normalize_classes`` adds when all of NORM_LAYERS is wanted.
NORM_BY_NAME = "<norm layers by name>"


def qualified_name(cls: type) -> str:
    """``module.QualName`` of a class (what checkpoints store)."""
    return f"{cls.__module__}.{cls.__qualname__}"


def class_mro_names(cls: type) -> tuple[str, ...]:
    """Qualified names of ``cls`` and its bases (``object`` left out), most derived first."""
    return tuple(qualified_name(k) for k in cls.__mro__ if k is not object)


def short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


_NORM_NAMES = frozenset(qualified_name(c) for c in NORM_LAYERS)


def normalize_classes(classes: Any, what: str) -> tuple[str, ...]:
    """Validate a class spec (a class, a class name, or a tuple / list of them).

    Returns qualified names (for classes) and the strings as given (for names); when
    the spec holds every class of `NORM_LAYERS`, the by-name norm marker is added.
    """
    items = list(classes) if isinstance(classes, (tuple, list)) else [classes]
    out = []
    for c in items:
        if isinstance(c, type):
            out.append(qualified_name(c))
        elif isinstance(c, str) and c:
            out.append(c)
        else:
            raise TypeError(
                f"{what} must be a module class, a class name or a tuple of them, got "
                f"{type(c).__name__}: {c!r}"
            )
    if _NORM_NAMES <= set(out):
        out.append(NORM_BY_NAME)
    return tuple(out)


def class_matches(
    mro: Sequence[str], wanted: Sequence[str], own_params: Sequence[str] = ()
) -> bool:
    """Does a layer with MRO names ``mro`` match any of ``wanted``?

    A wanted entry containing a ``.`` is a qualified name; a bare name matches the
    class name at the end of a qualified name (``"Linear"``). The norm marker matches
    by `NORM_NAME_RULE`, given the layer's parameter names relative to it
    (``own_params``; a dotted one means a child module holds parameters).
    """
    for w in wanted:
        if w == NORM_BY_NAME:
            if (
                own_params
                and all(p in ("weight", "bias") for p in own_params)
                and any(NORM_NAME_RULE.fullmatch(short(m)) for m in mro)
            ):
                return True
        elif "." in w:
            if w in mro:
                return True
        elif any(short(m) == w for m in mro):
            return True
    return False


def describe_classes(wanted: Sequence[str]) -> str:
    names = [short(w) for w in wanted if w != NORM_BY_NAME]
    if NORM_BY_NAME in wanted:
        names = ["NORM_LAYERS (torch's and other libraries' *Norm layers)"]
    return ", ".join(names)


#: Classes that stand in for a common one in some libraries: selecting the key finds
#: none / few layers when the model uses the others (transformers' GPT-2 ``Conv1D``
#: is a Linear with a transposed weight).
LOOKALIKES: dict[str, tuple[str, ...]] = {"Linear": ("Conv1D",)}


def lookalike_hint(wanted: Sequence[str], present: Sequence[str]) -> str:
    """A sentence naming stand-in classes present for a wanted class (or "")."""
    shorts = {short(p) for p in present}
    wanted_short = {short(w) for w in wanted}
    for w, others in LOOKALIKES.items():
        if w not in wanted_short:
            continue
        there = [o for o in others if o in shorts and o not in wanted_short]
        if there:
            return (
                f"; this model also uses {there} layers in the role of {w} (transformers' "
                f"Conv1D is a Linear with a transposed weight, e.g. GPT-2's attention and MLP): "
                f"select classes=({w!r}, {there[0]!r}) to include them"
            )
    return ""


def class_hint(wanted: Sequence[str], present: Sequence[str]) -> str:
    """Close matches among the classes present (short names), and stand-ins."""
    shorts = sorted({short(p) for p in present})
    near: list[str] = []
    for w in wanted:
        if w != NORM_BY_NAME:
            near += difflib.get_close_matches(short(w), shorts, n=3, cutoff=0.5)
    near = list(dict.fromkeys(near))
    out = f"; layer classes there: {shorts[:12]}" + (" ..." if len(shorts) > 12 else "")
    if near:
        out += f"; did you mean {near}?"
    return out + lookalike_hint(wanted, present)
