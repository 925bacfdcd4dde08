"""Mask leaves as the gradient transforms see them: static bools or dynamic bool tensors.

A mask leaf is a Python ``bool`` (static: the fast path, decided in Python) or a 0-d
bool tensor (dynamic: per member under ``vmap``, see DESIGN "dynamic masks"). Transforms
branch in Python on static leaves only and combine dynamic ones with ``torch.where``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ._tree import PyTree, align
from ._validate import compiling, functorch_active, mask_value

Tensor = torch.Tensor
Flag = bool | Tensor


def mask_flag(m: Any, path: str) -> Flag:
    """``True`` / ``False`` for a bool leaf; for a bool tensor leaf, the tensor itself
    under ``torch.func`` transforms or ``torch.compile`` (a dynamic mask), else the bool
    it holds, as the optimizers read it (`funcurriculum._validate.mask_value`, which
    also raises the ``TypeError`` / ``ValueError`` naming ``path`` for anything else).
    """
    if m is True or m is False:
        return m
    flag = mask_value(m, path, functorch_active() or compiling())
    if isinstance(flag, Tensor) and flag.dim() != 0 and flag.numel() == 1:
        flag = flag.reshape(())
    return flag


def mask_flags(masks: PyTree | None, spec: Any, paths: Sequence[str], what: str) -> list[Flag]:
    """One flag per leaf of ``spec`` (all ``True`` when ``masks`` is ``None``)."""
    if masks is None:
        return [True] * len(paths)
    return [mask_flag(m, p) for m, p in zip(align(masks, spec, paths, what), paths)]


def flag_and(a: Flag, b: Flag) -> Flag:
    """Logical and of two flags, staying a Python bool where either is static."""
    if a is False or b is False:
        return False
    if a is True:
        return b
    if b is True:
        return a
    return a & b
