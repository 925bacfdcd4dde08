"""The per-leaf rule protocol every optimizer is written in, and its optional kernels.

A rule is the math of one optimizer for one leaf; ``Optimizer``
owns everything else (masks, coefficients, per-leaf counts, the lr schedule, purity and
donation, vmap / compile, complex and half-precision leaves, weight-decay masks) and
chooses an engine to run the rule (see `funcurriculum.engines`).

A rule is complete with three members:

* ``fields``: the names of its state buffers;
* ``init(p)``: fresh buffers for one leaf (any shapes: factored moments are fine); raise
  ``ValueError`` / ``TypeError`` for a leaf the rule cannot take (the optimizer re-raises
  naming the leaf's path);
* ``step(p, g, bufs, count, lr) -> (new_p, new_bufs)``: the pure update of one leaf.
  ``count`` is a float32 0-d tensor that already includes this update (1.0 on the leaf's
  first update, also after an unfreeze); ``lr`` is a float or a 0-d tensor, the scheduled
  lr times the leaf's coefficient. Use tensor ops only (no ``.item()``, no Python
  ``if`` on tensor values: ``torch.where``), never modify the inputs: the same ``step``
  then runs eagerly, under ``torch.func.vmap``, under ``torch.compile`` and
  differentiably.

Anything faster is optional and declared explicitly with ``Kernels`` when the
optimizer is built, never discovered by attribute look-up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

Tensor = torch.Tensor


class LeafRule(Protocol):
    """What a rule must provide (see the module docstring).

    Example:
      >>> import torch, funcurriculum as fc
      >>> from dataclasses import dataclass
      >>> @dataclass(frozen=True)
      ... class SignSGD:
      ...     fields = ()
      ...     def init(self, p):
      ...         return ()
      ...     def step(self, p, g, bufs, count, lr):
      ...         return p - lr * torch.sign(g), bufs
      >>> opt = fc.Optimizer(SignSGD(), lr=0.1, elementwise=True)
      >>> p = {"w": torch.tensor([1.0, -1.0])}
      >>> opt.update(p, {"w": torch.tensor([3.0, -0.5])}, opt.init(p))[0]["w"]
      tensor([ 0.9000, -0.9000])
    """

    fields: tuple[str, ...]

    def init(self, p: Tensor) -> tuple[Tensor, ...]: ...

    def step(
        self, p: Tensor, g: Tensor, bufs: tuple[Tensor, ...], count: Tensor, lr: Any
    ) -> tuple[Tensor, tuple[Tensor, ...]]: ...


@dataclass(frozen=True)
class Kernels:
    """Optional fast kernels of a rule, declared when its optimizer is built.

    Args:
      inplace: ``inplace(rule, ps, gs, bufs, counts, lr, *, first, maximize)``: torch-style
        in-place multi-tensor update of one group of leaves sharing device, dtype and lr
        (``bufs``: one list per field; ``counts`` already incremented; ``first``: every
        leaf of the group takes its first update). Serves ``donate=True`` directly and
        the pure update on fresh copies.
      multi: ``multi(rule, ps, gs, bufs, out_ps, out_bufs, counts, lrs)``: one launch for
        every leaf of one device and dtype, with a per-leaf lr and count tensor, writing to
        ``out_*`` (which may be the inputs); used where Triton runs (CUDA).
      accepts: ``accepts(p) -> bool``, a per-leaf veto of both kernels (the leaf then
        takes the generic engine).
      needs_first_flag: whether ``inplace`` reads ``first`` (it costs a host sync).

    Example:
      >>> import funcurriculum as fc
      >>> fc.Kernels().inplace is None
      True
    """

    inplace: Callable[..., None] | None = None
    multi: Callable[..., None] | None = None
    accepts: Callable[[Tensor], bool] | None = None
    needs_first_flag: bool = False
