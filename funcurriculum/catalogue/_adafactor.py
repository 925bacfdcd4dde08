"""Adafactor (torch.optim.Adafactor): factored second moments."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim._adafactor import adafactor as _torch_adafactor

from ..lr_schedules import Schedule
from ..optimizer import Optimizer
from ._common import cast, lr64, refuse_complex, step64, zeros
from ._factory import Catalogued, eps_pair, torch_kernel

Tensor = torch.Tensor


@dataclass(frozen=True)
class AdafactorRule:
    """torch.optim.Adafactor's update for one leaf.

    State: for a leaf of 2 or more dims, ``row_var`` (the last dim reduced to 1) and
    ``col_var`` (the second-to-last reduced to 1), with ``variance`` a 0-d placeholder;
    for a vector or scalar, ``variance`` shaped like the leaf and the other two 0-d
    placeholders. torch keeps only the buffers a leaf uses; a placeholder is one unused
    element (zero-size buffers mean "frozen at init" to the engine).
    """

    beta2_decay: float = -0.8
    eps1: float | None = None
    eps2: float = 1e-3
    d: float = 1.0
    weight_decay: float = 0.0

    fields = ("row_var", "col_var", "variance")

    def init(self, p: Tensor) -> tuple[Tensor, ...]:
        refuse_complex(p, "fc.adafactor")
        if p.dim() > 1:
            row = p.new_zeros((*p.shape[:-1], 1))
            col = p.new_zeros((*p.shape[:-2], 1, p.shape[-1]))
            return row, col, p.new_zeros(())
        return p.new_zeros(()), p.new_zeros(()), zeros(p)

    def step(self, p, g, bufs, count, lr):
        row, col, var = bufs
        eps1 = torch.finfo(p.dtype).eps if self.eps1 is None else self.eps1
        t = step64(count)
        lr_t = lr64(lr, t)
        one_minus_beta2 = cast(t**self.beta2_decay, p)
        rho = torch.minimum(lr_t, 1 / t.sqrt())
        rms = p.norm(2).to(torch.float64) / math.sqrt(p.numel())
        alpha = torch.clamp(rms, min=self.eps2) * rho
        if self.weight_decay != 0:
            p = p * cast(1 - lr_t * self.weight_decay, p)
        if g.dim() > 1:
            row_mean = torch.norm(g, dim=-1, keepdim=True).square() / g.size(-1)
            row = torch.lerp(row, row_mean, one_minus_beta2)
            col_mean = torch.norm(g, dim=-2, keepdim=True).square() / g.size(-2)
            col = torch.lerp(col, col_mean, one_minus_beta2)
            estimate = (row @ col) / row.mean(dim=-2, keepdim=True).clamp(min=eps1)
        else:
            var = torch.lerp(var, g * g, one_minus_beta2)
            estimate = var
        update = estimate.clamp(min=eps1 * eps1).rsqrt() * g
        rms_update = update.norm(2).to(torch.float64) / (math.sqrt(update.numel()) * self.d)
        denom = torch.clamp(rms_update, min=1.0)
        return p - cast(alpha / denom, p) * update, (row, col, var)


def _torch_buffers(rule, ps, bufs):
    """The buffers as torch keeps them: the placeholders of the ones a leaf does not use
    (a matrix's ``variance``, a vector's ``row_var`` / ``col_var``) go over as ``None``."""
    rows, cols, variances = bufs
    matrix = [p.dim() > 1 for p in ps]
    return (
        [r if m else None for r, m in zip(rows, matrix)],
        [c if m else None for c, m in zip(cols, matrix)],
        [None if m else v for v, m in zip(variances, matrix)],
    )


_inplace = torch_kernel(_torch_adafactor, _torch_buffers)
_SPEC = Catalogued(
    "adafactor",
    AdafactorRule,
    elementwise=False,
    inplace=_inplace,
    checks={"eps": eps_pair},
)


def adafactor(
    lr: float | Schedule = 1e-2,
    beta2_decay: float = -0.8,
    eps: tuple[float | None, float] = (None, 1e-3),
    d: float = 1.0,
    weight_decay: float = 0.0,
    *,
    maximize: bool = False,
    differentiable: bool = False,
    weight_decay_mask: Any = None,
) -> Optimizer:
    """Adafactor with torch.optim.Adafactor's keywords, defaults and exact update rule.

    Leaves of 2 or more dims keep factored second moments (a row and a column vector
    over the last two dims), others a full one. The decay ``count ** beta2_decay`` and
    the relative step size ``min(lr, 1 / sqrt(count))`` use each leaf's own count.
    Complex leaves raise ``TypeError`` (torch refuses them too). With ``eps[0] = None``,
    ``eps1`` is the machine epsilon of the dtype the update computes in (float32 for
    float16 / bfloat16 leaves, which the engine computes in float32; torch would take
    the half dtype's).

    Args:
      lr: a float or a schedule ``step -> lr`` (caps the relative step size).
      beta2_decay: exponent of the second-moment decay schedule (``<= 0``).
      eps: ``(eps1, eps2)``: regularisation of the second moment (``None``: machine
        epsilon) and the floor of the param RMS in the step size.
      d: clipping threshold of the update RMS (``>= 1``).
      weight_decay: decoupled decay: ``p *= 1 - lr * weight_decay``.
      maximize: maximise the objective (the engine negates the gradients).
      differentiable: let autograd run through the update (see `Optimizer`).
      weight_decay_mask: bool pytree (or callable) saying which leaves decay.

    Returns:
      An `Optimizer` whose state holds ``row_var``, ``col_var`` and ``variance`` per leaf.

    Example:
      >>> import torch, funcurriculum as fc
      >>> opt = fc.adafactor(0.01)
      >>> p = {"w": torch.ones(4, 3), "b": torch.ones(3)}
      >>> state = opt.init(p)
      >>> state["row_var"]["w"].shape, state["col_var"]["w"].shape, state["variance"]["b"].shape
      (torch.Size([4, 1]), torch.Size([1, 3]), torch.Size([3]))
      >>> p, state = opt.update(p, {"w": torch.ones(4, 3), "b": torch.ones(3)}, state)
      >>> p["w"][0]
      tensor([0.9900, 0.9900, 0.9900])
    """
    return _SPEC.build(locals())
