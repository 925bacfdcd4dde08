"""The catalogue's one factory: a factory's keywords checked in one place, its rule built
from them and its `Optimizer` returned; and torch.optim's functional implementations as a
rule's in-place kernel.

A catalogue module is its rule, its kernel and a factory whose body is one call::

    _SPEC = Catalogued("adamax", AdamaxRule, inplace=torch_kernel(_torch_adamax))

    def adamax(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *,
               maximize=False, differentiable=False, weight_decay_mask=None):
        return _SPEC.build(locals())

Each keyword is checked by the checker of its name (`CHECKS`: torch.optim's keywords
mean the same thing in every optimizer that has them), which also maps it to the
rule's fields (``betas`` -> ``beta1``, ``beta2``).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .. import _hparams as V
from .._counts import add_
from ..leaf_rule import Kernels
from ..optimizer import Optimizer

Tensor = torch.Tensor
Check = Callable[[str, str, Any], dict[str, Any]]

#: the keywords every catalogue factory takes besides ``lr`` and its hyperparameters
OPTIONS = ("maximize", "differentiable", "weight_decay_mask")


# -- the checkers: keyword value -> the rule's fields ----------------------------------------


def _number(**bounds: Any) -> Check:
    def check(where: str, key: str, value: Any) -> dict[str, Any]:
        return {key: V.number(where, key, value, **bounds)}

    return check


def _flag(where: str, key: str, value: Any) -> dict[str, Any]:
    return {key: V.flag(where, key, value)}


def _betas(where: str, key: str, value: Any) -> dict[str, Any]:
    beta1, beta2 = V.betas(where, value, key)
    return {"beta1": beta1, "beta2": beta2}


def _items(where: str, key: str, value: Any, n: int, what: str) -> list[Any]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != n:
        raise ValueError(f"{where}: {key} must be {what}, got {value!r}")
    return list(value)


def eps_pair(where: str, key: str, value: Any) -> dict[str, Any]:
    """Adafactor's ``eps = (eps1 or None, eps2)`` -> fields ``eps1``, ``eps2``."""
    eps1, eps2 = _items(where, key, value, 2, "a pair (eps1 or None, eps2)")
    return {
        "eps1": None if eps1 is None else V.number(where, f"{key}[0]", eps1),
        "eps2": V.number(where, f"{key}[1]", eps2),
    }


def _coefficients(where: str, key: str, value: Any) -> dict[str, Any]:
    abc = _items(where, key, value, 3, "(a, b, c)")
    return {key: tuple(V.number(where, f"{key}[{i}]", c, low=None) for i, c in enumerate(abc))}


def _ns_steps(where: str, key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 100:
        raise ValueError(f"{where}: {key} must be an int in [0, 100), got {value!r}")
    return {key: value}


def _adjust_lr_fn(where: str, key: str, value: Any) -> dict[str, Any]:
    return {key: V.choice(where, key, value, (None, "original", "match_rms_adamw"))}


CHECKS: dict[str, Check] = {
    **dict.fromkeys(
        (
            "alpha",
            "eps",
            "weight_decay",
            "momentum",
            "momentum_decay",
            "lr_decay",
            "initial_accumulator_value",
        ),
        _number(),
    ),
    "rho": _number(high=1.0),
    "beta2_decay": _number(low=None, high=0.0),
    "d": _number(low=1.0),
    "betas": _betas,
    **dict.fromkeys(("centered", "decoupled_weight_decay", "nesterov"), _flag),
    "ns_coefficients": _coefficients,
    "ns_steps": _ns_steps,
    "adjust_lr_fn": _adjust_lr_fn,
}


def check_keywords(
    where: str, hparams: Mapping[str, Any], checks: Mapping[str, Check] | None = None
) -> dict[str, Any]:
    """Every hyperparameter checked (in the factory's keyword order) and mapped to fields.

    Args:
      where: the factory's name for the messages (``"fc.nadam"``).
      hparams: keyword -> value, as the caller passed them.
      checks: checkers that replace `CHECKS`' for this factory (Adafactor's ``eps`` pair).

    Returns:
      The rule's keyword arguments.

    Raises:
      ValueError: a value out of range, naming ``where`` and the keyword.
      TypeError: a value of the wrong type, likewise.

    Example:
      >>> check_keywords("fc.adamax", {"betas": (0.9, 0.99), "eps": 1e-8})
      {'beta1': 0.9, 'beta2': 0.99, 'eps': 1e-08}
    """
    checks = checks or {}
    fields: dict[str, Any] = {}
    for key, value in hparams.items():
        fields.update((checks.get(key) or CHECKS[key])(where, key, value))
    return fields


# -- torch.optim's functional implementations as in-place kernels ------------------------------


def torch_steps(counts: list[Tensor]) -> list[Tensor]:
    """The engine's counts for torch.optim's functional API, which increments the step
    tensors it is given: the engine passes counts that already include this update, so
    they are stepped back here in place (exact: small integers in float32) and torch
    brings them back."""
    add_(counts, -1.0)  # (one group: one device)
    return counts


def plain_float(p: Tensor) -> bool:
    """The default veto of a catalogue kernel: float32 / float64 leaves on CPU or CUDA.

    float16 / bfloat16 leaves take the engine's float32 path (torch's foreach kernels
    round every intermediate to the half dtype); complex leaves its real-pair views.
    """
    return p.dtype in _FLOATS and (p.is_cpu or p.is_cuda)


_FLOATS = (torch.float32, torch.float64)


def torch_kernel(
    fn: Callable[..., None], buffers: Callable[..., Any] | None = None, *, cpu_foreach: bool = False
):
    """torch.optim's functional implementation ``fn`` (``torch.optim.nadam.nadam``, ...)
    as a rule's in-place kernel: ``foreach=True`` on CUDA, the for-loop on CPU (torch's
    default choice) unless ``cpu_foreach``.

    The rule's dataclass fields that ``fn`` takes as keywords (``beta1``, ``eps``, ...)
    are passed by name; the buffers in the rule's field order, or as ``buffers(rule, ps,
    bufs)`` gives them to ``fn``.

    Args:
      fn: the functional implementation (params, grads, buffers..., state_steps, ...).
      buffers: ``(rule, ps, bufs) -> the buffer lists fn takes``, where they differ.
      cpu_foreach: take torch's multi-tensor implementation on CPU too, for an optimizer
        whose for-loop is the slower one there (RAdam's: docs/performance.md).

    Returns:
      ``inplace(rule, ps, gs, bufs, counts, lr, *, first, maximize)`` (see `Kernels`).

    Example:
      >>> from torch.optim.adamax import adamax
      >>> kernel = torch_kernel(adamax)
      >>> kernel.__doc__.split(":")[0]
      "torch.optim's adamax (foreach on CUDA) in place on one group"
    """
    takes = set(inspect.signature(fn).parameters)
    cache: dict[Any, dict[str, Any]] = {}

    def inplace(rule, ps, gs, bufs, counts, lr, *, first, maximize) -> None:
        hp = cache.get(rule)
        if hp is None:
            fields = dataclasses.fields(rule)
            hp = cache[rule] = {f.name: getattr(rule, f.name) for f in fields if f.name in takes}
        lists = bufs if buffers is None else buffers(rule, ps, bufs)
        # torch's own default: the multi-tensor implementation on CUDA, the for-loop one
        # on CPU (faster there for most: in place, no intermediate lists; docs/performance.md)
        foreach = cpu_foreach or ps[0].is_cuda
        fn(ps, gs, *lists, torch_steps(counts), foreach=foreach, maximize=maximize, lr=lr, **hp)

    inplace.__doc__ = (
        f"torch.optim's {fn.__name__} ({'foreach' if cpu_foreach else 'foreach on CUDA'}) "
        "in place on one group: "
        "counts already incremented, one lr"
    )
    return inplace


# -- the factory ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Catalogued:
    """How a catalogue factory builds its optimizer.

    Attributes:
      name: the optimizer's name (``"nadam"``; messages say ``fc.nadam``).
      rule: the rule's class, built with the checked keywords.
      elementwise: whether the rule is elementwise (buffers shaped like the leaf, no
        reduction over it): the engine may then chunk or flatten leaves.
      inplace: the rule's in-place multi-tensor kernel (see `Kernels`), or ``None``.
      accepts: the kernel's per-leaf veto.
      checks: checkers replacing `CHECKS`' for this factory's keywords.

    Example:
      >>> import torch
      >>> from funcurriculum.catalogue import AdamaxRule
      >>> spec = Catalogued("adamax", AdamaxRule)
      >>> opt = spec.build(dict(lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
      ...                       maximize=False, differentiable=False, weight_decay_mask=None))
      >>> opt.name, opt.rule.beta2
      ('adamax', 0.999)
    """

    name: str
    rule: type
    elementwise: bool = True
    inplace: Callable[..., None] | None = None
    accepts: Callable[[Tensor], bool] = plain_float
    checks: Mapping[str, Check] = dataclasses.field(default_factory=dict)

    def build(self, arguments: Mapping[str, Any]) -> Optimizer:
        """The `Optimizer` of a factory call.

        Args:
          arguments: the factory's arguments by name (its ``locals()`` on entry): ``lr``,
            the hyperparameters, and `OPTIONS`.

        Returns:
          An `Optimizer` over ``rule(**checked hyperparameters)``.
        """
        where = f"fc.{self.name}"
        hparams = dict(arguments)
        lr = hparams.pop("lr")
        if not callable(lr):
            V.number(where, "lr", lr)
        maximize, differentiable, weight_decay_mask = (hparams.pop(k) for k in OPTIONS)
        rule = self.rule(**check_keywords(where, hparams, self.checks))
        kernels = (
            None if self.inplace is None else Kernels(inplace=self.inplace, accepts=self.accepts)
        )
        return Optimizer(
            rule,
            lr,
            self.name,
            kernels=kernels,
            elementwise=self.elementwise,
            maximize=V.flag(where, "maximize", maximize),
            differentiable=V.flag(where, "differentiable", differentiable),
            weight_decay_mask=weight_decay_mask,
        )
