"""Validation of the optimizer's inputs, one function per kind of input.

Every check here runs before the update writes anything, so a refused call changes
nothing (with ``donate=True`` too). Errors name the offending leaf's path.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

Tensor = torch.Tensor

_FLOAT_KINDS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_STRIDED = torch.strided


def functorch_active() -> bool:
    """True inside a ``torch.func`` transform (vmap, grad, ...)."""
    return torch._C._functorch.peek_interpreter_stack() is not None


def compiling() -> bool:
    """True while ``torch.compile`` traces."""
    compiler = getattr(torch, "compiler", None)
    return compiler is not None and compiler.is_compiling()


def has_dtensor(leaves: Sequence[Any]) -> bool:
    """Whether any leaf is a DTensor (no scan before torch.distributed.tensor is imported)."""
    mod = sys.modules.get("torch.distributed.tensor")
    return mod is not None and any(isinstance(x, mod.DTensor) for x in leaves)


def mask_value(m: Any, path: str, dynamic: bool = False) -> bool | Tensor:
    """A mask leaf as a Python bool, or (``dynamic``: under vmap / compile) a bool tensor.

    Outside transforms a 0-d bool tensor is read as the bool it holds.
    """
    if isinstance(m, bool):
        return m
    if isinstance(m, Tensor) and m.dtype == torch.bool:
        if dynamic:
            return m
        if m.numel() == 1:
            return bool(m)
        raise ValueError(
            f"mask at {path!r} is a bool tensor of shape {tuple(m.shape)}: outside vmap a "
            "mask leaf must be a bool or a 0-d bool tensor (batched masks need vmap)"
        )
    raise TypeError(f"mask at {path!r} must be a bool, got {type(m).__name__}: {m!r}")


def masks_of(masks_l: Sequence[Any] | None, paths: Sequence[str], dynamic: bool) -> list[Any]:
    """Every mask leaf validated (``None`` masks: all trainable)."""
    if masks_l is None:
        return [True] * len(paths)
    if _BOOL.issuperset(map(type, masks_l)):  # (the common case: all Python bools)
        return list(masks_l)
    return [mask_value(m, p, dynamic) for m, p in zip(masks_l, paths)]


_BOOL = frozenset({bool})


def nonneg_real(x: Any, what: str, kinds: str) -> float:
    """``x`` as a float: a real number (not a bool), finite and >= 0; the errors say
    ``"{what} must be {kinds}"`` / ``"{what} must be finite and >= 0"``."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{what} must be {kinds}, got {type(x).__name__}: {x!r}")
    v = float(x)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{what} must be finite and >= 0, got {x!r}")
    return v


def members_of(state: Any, leaves: Sequence[Any], paths: Sequence[str]) -> int:
    """The ensemble size ``E`` of a stacked state (`Optimizer.update_members`): ``step``
    of shape ``(E,)`` and every leaf stacked over ``E`` members."""
    step = state.get("step") if isinstance(state, dict) else None
    if not isinstance(step, Tensor) or step.dim() != 1:
        shape = tuple(step.shape) if isinstance(step, Tensor) else type(step).__name__
        raise ValueError(
            "update_members needs a stacked state, vmap(opt.init)(params), whose step has "
            f"shape (E,); got step {shape}"
        )
    e = step.shape[0]
    for p, path in zip(leaves, paths):
        if not isinstance(p, Tensor) or p.dim() == 0 or p.shape[0] != e:
            shape = tuple(p.shape) if isinstance(p, Tensor) else type(p).__name__
            raise ValueError(f"leaf {path!r} of shape {shape} is not stacked over {e} members")
    return e


def check_members(
    e: int, paths: Sequence[str], masks: Sequence[Any], coeffs: Sequence[Any] | None,
    counts: Sequence[Any],
) -> None:  # fmt: skip
    """Masks and coefficients of `Optimizer.update_members` are shared (Python values,
    0-d tensors) or per member (shape ``(E,)``); counts are per member."""
    for what, values in (("mask", masks), ("coefficient", coeffs or ())):
        for path, v in zip(paths, values):
            if isinstance(v, Tensor) and tuple(v.shape) not in ((), (e,)):
                raise ValueError(
                    f"{what} at {path!r} has shape {tuple(v.shape)}: expected () or ({e},) "
                    f"for {e} members"
                )
    for path, c in zip(paths, counts):
        if not (isinstance(c, Tensor) and tuple(c.shape) == (e,)):
            shape = tuple(c.shape) if isinstance(c, Tensor) else type(c).__name__
            raise ValueError(f"count at {path!r} has shape {shape}: expected ({e},), per member")


def uniform_mask(m: Any) -> Any:
    """A per-member bool tensor that is all True (all False) as ``True`` (``False``):
    the same result, without the per-member selects (reads the mask: eager only)."""
    if isinstance(m, Tensor) and m.device.type == "cpu":
        if bool(m.all()):
            return True
        if not bool(m.any()):
            return False
    return m


def coeff_value(c: Any, path: str, transformed: bool = False) -> Any:
    """A coefficient: a finite float >= 0, or a tensor (0-d outside transforms)."""
    if isinstance(c, Tensor):
        if not transformed and c.numel() != 1:
            raise ValueError(
                f"coefficient at {path!r} must be a float or a 0-d tensor, got a tensor of "
                f"shape {tuple(c.shape)}"
            )
        return c
    return nonneg_real(c, f"coefficient at {path!r}", "a float or a 0-d tensor")


def lr_value(lr: Any, step: int) -> Any:
    """A schedule's value: a finite float >= 0 (numpy scalars too), or a device tensor."""
    if isinstance(lr, Tensor):
        if lr.numel() == 1 and lr.device.type == "cpu":
            lr = lr.item()
        else:
            return lr
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
        raise TypeError(f"lr schedule returned {lr!r} at step {step}: expected a number")
    lr = float(lr)
    if not math.isfinite(lr) or lr < 0:
        raise ValueError(f"lr schedule returned {lr} at step {step}: must be finite and >= 0")
    return lr


def check_param(p: Any, path: str, what: str = "params") -> None:
    """A parameter leaf: a strided floating-point or complex tensor."""
    if not isinstance(p, Tensor):
        raise TypeError(f"{what} leaf {path!r} is a {type(p).__name__}, expected a torch.Tensor")
    if p.layout != torch.strided:
        raise TypeError(
            f"{what} leaf {path!r} has layout {p.layout}: only dense (strided) tensors can be "
            "optimized (sparse grads: see torch.optim.SparseAdam)"
        )
    if not (p.is_floating_point() or p.is_complex()):
        raise TypeError(
            f"{what} leaf {path!r} has dtype {p.dtype}: only floating-point and complex "
            "tensors can be optimized (keep integer / bool tensors as buffers)"
        )


def check_params(leaves: Sequence[Any], paths: Sequence[str], what: str = "params") -> None:
    for leaf, path in zip(leaves, paths):
        check_param(leaf, path, what)


def check_state(state: Any, fields: Sequence[str], owner: Any) -> None:
    """The optimizer state dict made by ``owner.init``."""
    if not isinstance(state, dict):
        raise TypeError(f"state must be the dict returned by init, got {type(state).__name__}")
    missing = [k for k in ("step", "count", *fields) if k not in state]
    if missing:
        raise ValueError(f"state lacks {missing}: was it made by another optimizer? ({owner!r})")


def check_leaf(path: str, p: Any, g: Any, bufs: Sequence[Any], like: Sequence[bool]) -> None:
    """A trainable leaf: its grad matches the param; buffers ``like`` the param do too."""
    if g is None:
        raise ValueError(f"grads hold no gradient for trainable leaf {path!r}")
    check_param(p, path)
    if not isinstance(g, Tensor):
        raise TypeError(f"grad at {path!r} is a {type(g).__name__}, expected a tensor")
    if g.layout != torch.strided:
        raise TypeError(f"grad at {path!r} has layout {g.layout}: sparse grads are not supported")
    if g.shape != p.shape:
        raise ValueError(f"grad at {path!r} has shape {tuple(g.shape)}, param has {tuple(p.shape)}")
    if g.dtype != p.dtype:
        raise ValueError(f"grad at {path!r} has dtype {g.dtype}, param has {p.dtype}")
    if g.device != p.device:
        raise ValueError(f"grad at {path!r} is on {g.device}, param on {p.device}")
    for b, is_like in zip(bufs, like):
        if not isinstance(b, Tensor):
            raise TypeError(f"optimizer state at {path!r} is a {type(b).__name__}, not a tensor")
        if b.numel() == 0 and p.numel() != 0:
            raise ValueError(
                f"leaf {path!r} is trainable but has no optimizer state (it was frozen at "
                "init): call opt.transition(state, params, old_masks, new_masks) when the "
                "masks change"
            )
        if is_like and b.shape != p.shape:
            raise ValueError(
                f"optimizer state at {path!r} has shape {tuple(b.shape)}, param has {tuple(p.shape)}"
            )
        if is_like and b.dtype != p.dtype:
            raise ValueError(
                f"optimizer state at {path!r} has dtype {b.dtype}, param has {p.dtype}"
            )
        if b.device != p.device:
            raise ValueError(f"optimizer state at {path!r} is on {b.device}, param on {p.device}")


def plain_leaf(p: Any, g: Any, bufs: Sequence[Any]) -> bool:
    """Cheap test that a trainable leaf is valid, on CPU / CUDA, with grad and buffers of
    its shape, dtype and one dense memory layout (then ``check_leaf`` is not needed,
    and every engine can take it: the fused kernels walk raw memory).

    Runs once per leaf and update, so it reads each attribute once (dtypes and layouts
    are singletons: compared with ``is``)."""
    if type(p) not in _PLAIN or type(g) not in _PLAIN:
        return False
    shape, dtype = p.shape, p.dtype
    if (
        dtype not in _FLOAT_KINDS
        or g.dtype is not dtype
        or p.layout is not _STRIDED
        or g.layout is not _STRIDED
        or g.shape != shape
    ):
        return False
    cpu = p.is_cpu
    if cpu:
        if not g.is_cpu:
            return False
        index = -1
    elif p.is_cuda and g.is_cuda:
        index = p.get_device()
        if g.get_device() != index:
            return False
    else:
        return False
    contiguous = p.is_contiguous() and g.is_contiguous()
    for b in bufs:
        if (
            type(b) not in _PLAIN
            or b.layout is not _STRIDED
            or not (b.is_cpu if cpu else b.is_cuda and b.get_device() == index)
        ):
            return False
        if b.shape != shape:
            # a buffer of the rule's own shape (factored moments, a 0-d product):
            # contiguous, any dtype; the engines that walk raw memory check leaf_shaped
            if b.numel() == 0 or not b.is_contiguous():
                return False
        elif b.dtype is not dtype:
            return False
        elif contiguous and not b.is_contiguous():
            contiguous = False
    if contiguous:
        return True
    stride = p.stride()
    return (
        _dense(p)
        and g.stride() == stride
        and all(b.stride() == stride for b in bufs if b.shape == shape)
    )


def leaf_shaped(p: Tensor, bufs: Sequence[Any]) -> bool:
    """Every buffer has the leaf's shape (flat slices of the leaf slice them alike)."""
    return all(b.shape == p.shape for b in bufs)


def _dense(p: Tensor) -> bool:
    """Non-overlapping and dense: the strides are a permutation of contiguous ones."""
    expect = 1
    for size, stride in sorted(zip(p.shape, p.stride()), key=lambda t: t[1]):
        if size != 1 and stride != expect:
            return False
        expect *= size
    return True


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def is_plain(t: Any) -> bool:
    return type(t) in _PLAIN


def check_no_aliasing(
    tensors: Sequence[Tensor], name: Callable[[int], str], dense: int = 0
) -> None:
    """Refuse overlapping memory among tensors a donated update writes in place.

    Two written tensors whose byte ranges overlap (one tensor at two keys, overlapping
    views, moment buffers shared after loading) would be updated twice.

    Args:
      tensors: every tensor the update writes (params, counts, each state column).
      name: ``k -> "params 'a.w'"``: what ``tensors[k]`` is, called only on error.
      dense: how many leading ``tensors`` the caller knows to be dense (`plain_leaf`
        said so): their bytes are ``nbytes`` from ``data_ptr``, with no layout test.

    Raises:
      ValueError: naming the first two tensors found to overlap.
    """
    starts = [t.data_ptr() for t in tensors]
    sizes = [t.nbytes for t in tensors[:dense]]
    sizes += [t.nbytes if t.is_contiguous() else _extent(t) for t in tensors[dense:]]
    end, last = -1, -1
    for k in sorted(range(len(starts)), key=starts.__getitem__):
        size = sizes[k]
        if not size:
            continue
        start = starts[k]
        if start < end:
            raise ValueError(
                f"donate=True: {name(last)} and {name(k)} share memory, so an in-place "
                "update would write it twice; pass distinct tensors (e.g. clone tied or "
                "loaded buffers) or use the pure update (donate=False)"
            )
        if start + size > end:
            end, last = start + size, k


def _extent(t: Tensor) -> int:
    if t.is_contiguous():
        return t.numel() * t.element_size()
    span = 1 + sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()))
    return span * t.element_size()
