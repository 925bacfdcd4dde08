"""One-launch Triton kernels for Adam/AdamW and SGD with a learning rate per leaf.

torch's fused CUDA optimizers take one lr per call and update in place. These kernels
take a per-leaf lr and step count, read ``p, g, <moments>`` and write the results to
separate output tensors (which may be the inputs themselves: in-place "donate" mode),
all leaves of one dtype in a single launch.

Design
------
The host builds one int64 table per call (cached on its own content):

* 4 slots: the float hyperparameters as float64 bit patterns (Triton would round a
  Python float argument to float32; these must stay float64, see below);
* one row of 8 per leaf: the addresses of its input and output tensors, then its numel;
* one row of 2 per program: ``(leaf, chunk)``. Program ``i`` updates elements
  ``[chunk * CHUNK, (chunk + 1) * CHUNK)`` of that leaf, ``BLOCK`` at a time: the full
  blocks unmasked (so 16-byte-aligned tensors get vector loads), then a masked tail.

Inside the kernel the addresses are cast to typed pointers (``int64 -> tl.pointer_type``,
which also works in the interpreter, where they are host addresses); the leaf's lr and
count are read from the ``lrs`` / ``counts`` tensors, so nothing waits for the device.
The table costs a host-to-device copy only on a cache miss.

Numerics
--------
The operations follow torch's fused CUDA kernels (``adam_math`` in
``fused_adam_utils.cuh``, ``sgd_math`` in ``FusedSgdKernel.cu``) step by step, including
their C++ type promotions: the hyperparameters are ``double`` there, so e.g.
``exp_avg = beta1 * exp_avg + (1 - beta1) * grad`` is evaluated in float64 and rounded
once to float32; the bias corrections ``1 - beta**count`` are float64 rounded to
float32; ``sqrt(exp_avg_sq) / bias_correction2_sqrt`` and the final
``param - step_size * exp_avg / denom`` are float32. We reproduce each of these with
explicit casts (so about ten float64 operations per element: free on data-centre GPUs,
to be measured on consumer ones) and use only correctly rounded operations
(``tl.div_rn``, ``tl.sqrt_rn``: Triton's plain float32 ``/`` and ``sqrt`` compile to
``div.full.f32`` and ``sqrt.approx.ftz.f32``), with ``enable_fp_fusion=False`` so that
no multiply-add is contracted into an FMA (checked in the PTX for sm_90: every float op
is ``.rn``; the only FMAs are inside libdevice's ``pow``). Every step is then an IEEE
operation whose result does not depend on the backend, so the compiled kernel and
Triton's numpy interpreter (used by the tests) give the same bits, except for:

* ``beta**count``: libdevice's ``pow`` on the GPU (what torch's kernel calls), but
  ``exp(count * log(beta))`` in the interpreter, which has no libdevice; both are
  float64 and the result is rounded to float32, so they differ only if the float64
  values straddle a float32 rounding boundary (rare);
* bfloat16 stores: the interpreter truncates float32 to bfloat16 where the GPU rounds
  to nearest even.

nvcc (``--fmad=true`` by default) may contract torch's float64 multiply-adds into FMAs;
the float64 results then differ in their last bits and agree once rounded to float32
except in rare near-ties. Bitwise agreement with torch's CUDA kernel is therefore
expected but was not checked on a GPU; the CUDA tests compare with a tolerance. For
that agreement pass float64 ``lrs`` where torch gets a Python float ``lr`` (float32
``lrs`` match a float32 tensor ``lr``).

float16 / bfloat16 tensors are computed in float32 (as torch's ``opmath``) and float64
tensors entirely in float64. Moment buffers have the parameter's dtype.
"""

from __future__ import annotations

import os
import struct
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

Tensor = torch.Tensor

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_HP_SLOTS = 4
_LEAF_ROW = 8
_TABLE_CACHE_SIZE = 32

# Filled in by _build(): the Triton modules (the kernels below use them as globals) and
# the jitted kernels, for the interpreter mode they were built in.
tl: Any = None
libdevice: Any = None
_built: dict[str, Any] = {}
_tables: OrderedDict[tuple, Tensor] = OrderedDict()


def _interpreting() -> bool:
    import triton

    knobs = getattr(triton, "knobs", None)  # triton >= 3.4; older ones read the env var
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available(device: torch.device | str) -> bool:
    """Whether these kernels can run on ``device``.

    Args:
      device: where the tensors live.

    Returns:
      True when ``triton`` imports and either ``device`` is CUDA, or it is the CPU and
      ``TRITON_INTERPRET=1`` is set (Triton's numpy interpreter, used by the tests). The
      interpreter cannot run CUDA tensors here (the kernels read raw addresses from a
      table), so CUDA is unavailable while it is on.
    """
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.device(device).type == ("cpu" if _interpreting() else "cuda")


# -- kernels (plain functions, jitted lazily by _build) ---------------------------------


def _adam_kernel(
    tab,
    counts,
    lrs,
    prog_base,
    DT: tl.constexpr,
    OPM: tl.constexpr,
    BLOCK: tl.constexpr,
    CHUNK: tl.constexpr,
    HAS_WD: tl.constexpr,
    DECOUPLED: tl.constexpr,
    ALIGNED: tl.constexpr,
    LIBDEVICE: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    leaf = tl.load(tab + prog_base + 2 * pid)
    chunk = tl.load(tab + prog_base + 2 * pid + 1)
    row = tab + 4 + 8 * leaf
    p_in = tl.load(row).to(tl.pointer_type(DT))
    g_in = tl.load(row + 1).to(tl.pointer_type(DT))
    m_in = tl.load(row + 2).to(tl.pointer_type(DT))
    v_in = tl.load(row + 3).to(tl.pointer_type(DT))
    p_out = tl.load(row + 4).to(tl.pointer_type(DT))
    m_out = tl.load(row + 5).to(tl.pointer_type(DT))
    v_out = tl.load(row + 6).to(tl.pointer_type(DT))
    n = tl.load(row + 7)
    if ALIGNED:
        p_in = tl.multiple_of(p_in, 16)
        g_in = tl.multiple_of(g_in, 16)
        m_in = tl.multiple_of(m_in, 16)
        v_in = tl.multiple_of(v_in, 16)
        p_out = tl.multiple_of(p_out, 16)
        m_out = tl.multiple_of(m_out, 16)
        v_out = tl.multiple_of(v_out, 16)

    beta1 = tl.load(tab).to(tl.float64, bitcast=True)
    beta2 = tl.load(tab + 1).to(tl.float64, bitcast=True)
    eps = tl.load(tab + 2).to(tl.float64, bitcast=True)
    wd = tl.load(tab + 3).to(tl.float64, bitcast=True)
    lr = tl.load(lrs + leaf).to(tl.float64)
    count = tl.load(counts + leaf).to(tl.float64)

    # Per-leaf scalars, float64 as in torch, then rounded to the math type.
    if LIBDEVICE:
        pow1 = libdevice.pow(beta1, count)
        pow2 = libdevice.pow(beta2, count)
    else:
        pow1 = tl.exp(count * tl.log(beta1))
        pow2 = tl.exp(count * tl.log(beta2))
    bc1 = (1.0 - pow1).to(OPM).to(tl.float64)
    # float64 division and square root are correctly rounded on every backend.
    bc2_sqrt = tl.sqrt(1.0 - pow2).to(OPM)
    step_size = (lr / bc1).to(OPM)
    one_m_b1 = 1.0 - beta1
    one_m_b2 = 1.0 - beta2
    lr_wd = lr * wd

    start = chunk * CHUNK
    rem = tl.minimum(n - start, CHUNK)
    n_full = rem // BLOCK
    for part in tl.static_range(2):
        # part 0: full blocks, unmasked; part 1: the partial last block, masked.
        if part == 0:
            lo = 0
            hi = n_full
        else:
            lo = n_full
            hi = (rem + BLOCK - 1) // BLOCK
        for i in range(lo, hi):
            offs = start + i * BLOCK + tl.arange(0, BLOCK)
            if part == 0:
                mask = None
            else:
                mask = offs < n
            p = tl.load(p_in + offs, mask=mask).to(OPM)
            g = tl.load(g_in + offs, mask=mask).to(OPM)
            m = tl.load(m_in + offs, mask=mask).to(OPM)
            v = tl.load(v_in + offs, mask=mask).to(OPM)
            if HAS_WD:
                if DECOUPLED:
                    p64 = p.to(tl.float64)
                    p = (p64 - lr_wd * p64).to(OPM)
                else:
                    g = (g.to(tl.float64) + p.to(tl.float64) * wd).to(OPM)
            g64 = g.to(tl.float64)
            m = (beta1 * m.to(tl.float64) + one_m_b1 * g64).to(OPM)
            v = (beta2 * v.to(tl.float64) + one_m_b2 * g64 * g64).to(OPM)
            if OPM == tl.float64:
                denom = tl.sqrt(v) / bc2_sqrt + eps
                p = p - step_size * m / denom
            else:
                denom = (tl.div_rn(tl.sqrt_rn(v), bc2_sqrt).to(tl.float64) + eps).to(OPM)
                p = p - tl.div_rn(step_size * m, denom)
            tl.store(p_out + offs, p.to(DT), mask=mask)
            tl.store(m_out + offs, m.to(DT), mask=mask)
            tl.store(v_out + offs, v.to(DT), mask=mask)


def _sgd_kernel(
    tab,
    counts,
    lrs,
    prog_base,
    DT: tl.constexpr,
    OPM: tl.constexpr,
    BLOCK: tl.constexpr,
    CHUNK: tl.constexpr,
    HAS_WD: tl.constexpr,
    HAS_MOMENTUM: tl.constexpr,
    FIRST_RULE: tl.constexpr,
    NESTEROV: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    leaf = tl.load(tab + prog_base + 2 * pid)
    chunk = tl.load(tab + prog_base + 2 * pid + 1)
    row = tab + 4 + 8 * leaf
    p_in = tl.load(row).to(tl.pointer_type(DT))
    g_in = tl.load(row + 1).to(tl.pointer_type(DT))
    p_out = tl.load(row + 3).to(tl.pointer_type(DT))
    n = tl.load(row + 7)
    if ALIGNED:
        p_in = tl.multiple_of(p_in, 16)
        g_in = tl.multiple_of(g_in, 16)
        p_out = tl.multiple_of(p_out, 16)
    if HAS_MOMENTUM:
        b_in = tl.load(row + 2).to(tl.pointer_type(DT))
        b_out = tl.load(row + 4).to(tl.pointer_type(DT))
        if ALIGNED:
            b_in = tl.multiple_of(b_in, 16)
            b_out = tl.multiple_of(b_out, 16)

    momentum = tl.load(tab).to(tl.float64, bitcast=True)
    dampening = tl.load(tab + 1).to(tl.float64, bitcast=True)
    wd = tl.load(tab + 2).to(tl.float64, bitcast=True)
    lr = tl.load(lrs + leaf).to(tl.float64)
    first = tl.load(counts + leaf) == 1
    one_m_damp = 1.0 - dampening

    start = chunk * CHUNK
    rem = tl.minimum(n - start, CHUNK)
    n_full = rem // BLOCK
    for part in tl.static_range(2):
        if part == 0:
            lo = 0
            hi = n_full
        else:
            lo = n_full
            hi = (rem + BLOCK - 1) // BLOCK
        for i in range(lo, hi):
            offs = start + i * BLOCK + tl.arange(0, BLOCK)
            if part == 0:
                mask = None
            else:
                mask = offs < n
            p = tl.load(p_in + offs, mask=mask).to(OPM)
            g = tl.load(g_in + offs, mask=mask).to(OPM)
            if HAS_WD:
                g = (g.to(tl.float64) + wd * p.to(tl.float64)).to(OPM)
            if HAS_MOMENTUM:
                g64 = g.to(tl.float64)
                b = tl.load(b_in + offs, mask=mask).to(OPM)
                # torch keeps this buffer in float64 until it is stored.
                b64 = momentum * b.to(tl.float64) + one_m_damp * g64
                if FIRST_RULE:
                    b64 = tl.where(first, g64, b64)
                tl.store(b_out + offs, b64.to(OPM).to(DT), mask=mask)
                if NESTEROV:
                    g = (g64 + momentum * b64).to(OPM)
                else:
                    g = b64.to(OPM)
            p = (p.to(tl.float64) - lr * g.to(tl.float64)).to(OPM)
            tl.store(p_out + offs, p.to(DT), mask=mask)


def _build() -> dict[str, Any]:
    """The jitted kernels for the current interpreter mode (built once per mode)."""
    import triton

    mode = "interpret" if _interpreting() else "compiled"
    if _built.get("mode") != mode:
        import triton.language as tl_mod
        from triton.language.extra import libdevice as libdevice_mod

        # The kernels read these as module globals (Triton resolves names there).
        globals()["tl"] = tl_mod
        globals()["libdevice"] = libdevice_mod
        _built.clear()
        _built.update(
            mode=mode,
            # prog_base varies with the number of leaves: no recompilation for it.
            adam=triton.jit(_adam_kernel, do_not_specialize=["prog_base"]),
            sgd=triton.jit(_sgd_kernel, do_not_specialize=["prog_base"]),
            tl=tl_mod,
        )
    return _built


# -- host side --------------------------------------------------------------------------


def _f64_bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def _prepare(
    lists: Sequence[Sequence[Tensor]], counts: Tensor, lrs: Tensor
) -> tuple[torch.dtype, torch.device, list[list[int]], list[int]]:
    """Checks the arguments; returns the dtype, the device, each list's addresses and
    each leaf's numel (one pass over the tensors: this runs on every call)."""
    n = len(lists[0])
    if any(len(xs) != n for xs in lists):
        raise ValueError(f"tensor lists differ in length: {[len(xs) for xs in lists]}")
    for name, t in (("counts", counts), ("lrs", lrs)):
        if t.dim() != 1 or t.numel() != n or not t.is_floating_point() or t.stride(0) != 1:
            raise ValueError(f"{name} must be a contiguous 1-D float tensor of {n} entries")
    if n == 0:
        return torch.float32, counts.device, [], []
    dtype, device = lists[0][0].dtype, lists[0][0].device
    if not available(device):
        raise ValueError(f"the Triton kernels cannot run on {device} (see available())")
    if dtype not in _DTYPES:
        raise TypeError(f"unsupported dtype {dtype}")
    if counts.device != device or lrs.device != device:
        raise ValueError("counts and lrs must be on the tensors' device")
    numels = [t.numel() for t in lists[0]]
    cols = []
    for xs in lists:
        col = []
        for t, numel in zip(xs, numels):
            if (
                t.dtype != dtype
                or t.device != device
                or t.numel() != numel
                or not t.is_contiguous()
            ):
                raise ValueError(
                    f"leaf {len(col)}: tensors must be contiguous {dtype} on {device}, "
                    "with equal numel"
                )
            col.append(t.data_ptr())
        cols.append(col)
    return dtype, device, cols, numels


def _table(
    cols: Sequence[Sequence[int]],
    numels: Sequence[int],
    hp: Sequence[float],
    device: torch.device,
    chunk: int,
) -> tuple[Tensor, int, int, bool]:
    """The int64 launch table (see the module docstring) for the address columns
    ``cols`` (one per tensor list, the leaf row's slots in order), its program-row
    offset, the number of programs and whether every address is 16-byte aligned."""
    key = (device, chunk, tuple(hp), tuple(numels), *map(tuple, cols))
    aligned = all(a % 16 == 0 for col in cols for a in col)
    n_progs = sum(-(-n // chunk) for n in numels)
    prog_base = _HP_SLOTS + _LEAF_ROW * len(numels)
    tab = _tables.get(key)
    if tab is not None:
        _tables.move_to_end(key)
        return tab, prog_base, n_progs, aligned
    flat = [_f64_bits(x) for x in hp] + [0] * (_HP_SLOTS - len(hp))
    pad = [0] * (_LEAF_ROW - 1 - len(cols))
    for leaf, n in enumerate(numels):
        flat += [col[leaf] for col in cols] + pad + [n]
    for leaf, n in enumerate(numels):
        for c in range(-(-n // chunk)):
            flat += [leaf, c]
    # non_blocking: from pageable memory CUDA stages the copy at once, without waiting
    # for the stream (a blocking copy would synchronise with the queued work).
    tab = torch.tensor(flat, dtype=torch.int64).to(device, non_blocking=True)
    _tables[key] = tab
    if len(_tables) > _TABLE_CACHE_SIZE:
        _tables.popitem(last=False)
    return tab, prog_base, n_progs, aligned


def _launch(kernel: Any, n_progs: int, device: torch.device, args: tuple, **meta: Any) -> None:
    if n_progs == 0:
        return
    if device.type == "cuda":
        with torch.cuda.device(device):
            kernel[(n_progs,)](*args, **meta, num_warps=4, enable_fp_fusion=False)
    else:
        kernel[(n_progs,)](*args, **meta)


def _check_block(block: int, chunk: int) -> None:
    if block <= 0 or block & (block - 1) or chunk <= 0 or chunk % block:
        raise ValueError(f"block must be a power of 2 dividing chunk, got {block}, {chunk}")


def adam_multi(
    ps: Sequence[Tensor],
    gs: Sequence[Tensor],
    ms: Sequence[Tensor],
    vs: Sequence[Tensor],
    out_ps: Sequence[Tensor],
    out_ms: Sequence[Tensor],
    out_vs: Sequence[Tensor],
    counts: Tensor,
    lrs: Tensor,
    *,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    block: int = 1024,
    chunk: int = 8192,
) -> None:
    """Adam (``decoupled=False``) or AdamW update of many leaves in one launch.

    Each output tensor is either its input (updated in place) or a tensor that overlaps
    none of the inputs; the inputs are then left unchanged.

    Args:
      ps, gs, ms, vs: parameters, gradients, first and second moments: contiguous
        tensors of one floating dtype on one device, equal numel leaf by leaf.
      out_ps, out_ms, out_vs: where the new parameters and moments are written.
      counts: 1-D float tensor, each leaf's step count including this update.
      lrs: 1-D float tensor, each leaf's learning rate (float64 keeps a Python float
        exactly, as torch's kernel does with a float ``lr``; float32 matches a tensor
        ``lr``).
      beta1, beta2, eps, weight_decay: as in ``torch.optim.Adam``.
      decoupled: AdamW's decoupled weight decay instead of an L2 term on the gradient.
      block: elements per vector step of a program (a power of 2).
      chunk: elements per program (a multiple of ``block``).

    Returns:
      None; the results are in ``out_ps``, ``out_ms``, ``out_vs``.
    """
    _check_block(block, chunk)
    lists = (ps, gs, ms, vs, out_ps, out_ms, out_vs)  # the leaf row's slots, in order
    dtype, device, cols, numels = _prepare(lists, counts, lrs)
    if not numels:
        return
    k = _build()
    hp = (beta1, beta2, eps, weight_decay)
    tab, prog_base, n_progs, aligned = _table(cols, numels, hp, device, chunk)
    tl_mod = k["tl"]
    _launch(
        k["adam"],
        n_progs,
        device,
        (tab, counts, lrs, prog_base),
        DT=_tl_dtype(tl_mod, dtype),
        OPM=tl_mod.float64 if dtype == torch.float64 else tl_mod.float32,
        BLOCK=block,
        CHUNK=chunk,
        HAS_WD=weight_decay != 0,
        DECOUPLED=bool(decoupled),
        ALIGNED=aligned,
        LIBDEVICE=k["mode"] == "compiled",
    )


def sgd_multi(
    ps: Sequence[Tensor],
    gs: Sequence[Tensor],
    bufs: Sequence[Tensor],
    out_ps: Sequence[Tensor],
    out_bufs: Sequence[Tensor],
    counts: Tensor,
    lrs: Tensor,
    *,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
    block: int = 1024,
    chunk: int = 8192,
) -> None:
    """SGD update (``torch.optim.SGD``'s rule) of many leaves in one launch.

    With ``dampening != 0`` a leaf whose count is 1 starts its momentum buffer at the
    gradient (as ``SGDRule.step``). Outputs alias their inputs or nothing (see
    ``adam_multi``).

    Args:
      ps, gs: parameters and gradients (contiguous, one dtype, one device).
      bufs: momentum buffers; empty when ``momentum == 0``.
      out_ps, out_bufs: where the new parameters and buffers are written (``out_bufs``
        empty when ``momentum == 0``).
      counts: 1-D float tensor, each leaf's step count including this update.
      lrs: 1-D float tensor, each leaf's learning rate.
      momentum, dampening, nesterov, weight_decay: as in ``torch.optim.SGD``.
      block: elements per vector step of a program (a power of 2).
      chunk: elements per program (a multiple of ``block``).

    Returns:
      None; the results are in ``out_ps`` and ``out_bufs``.
    """
    _check_block(block, chunk)
    has_mom = momentum != 0
    if has_mom != bool(bufs) or len(bufs) != len(out_bufs):
        raise ValueError("bufs / out_bufs must be given exactly when momentum != 0")
    lists = (ps, gs, bufs, out_ps, out_bufs) if has_mom else (ps, gs, out_ps)
    dtype, device, cols, numels = _prepare(lists, counts, lrs)
    if not numels:
        return
    k = _build()
    if not has_mom:  # the leaf row's slots: p, g, buf, out_p, out_buf
        zeros = [0] * len(numels)
        cols = [cols[0], cols[1], zeros, cols[2], zeros]
    hp = (momentum, dampening, weight_decay)
    tab, prog_base, n_progs, aligned = _table(cols, numels, hp, device, chunk)
    tl_mod = k["tl"]
    _launch(
        k["sgd"],
        n_progs,
        device,
        (tab, counts, lrs, prog_base),
        DT=_tl_dtype(tl_mod, dtype),
        OPM=tl_mod.float64 if dtype == torch.float64 else tl_mod.float32,
        BLOCK=block,
        CHUNK=chunk,
        HAS_WD=weight_decay != 0,
        HAS_MOMENTUM=has_mom,
        FIRST_RULE=has_mom and dampening != 0,
        NESTEROV=bool(nesterov),
        ALIGNED=aligned,
    )


def _tl_dtype(tl_mod: Any, dtype: torch.dtype) -> Any:
    return {
        torch.float32: tl_mod.float32,
        torch.float16: tl_mod.float16,
        torch.bfloat16: tl_mod.bfloat16,
        torch.float64: tl_mod.float64,
    }[dtype]
