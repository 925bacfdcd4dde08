"""Tests of the one-launch Triton optimizer kernels (funcurriculum._triton_kernels).

Without CUDA they run in Triton's interpreter (``TRITON_INTERPRET=1``, numpy on the CPU).
Triton reads that variable each time a function is jitted, not at import, and our module
jits its kernels on first use (again if the mode changes), so the fixture below sets it
for this module only (and clears it when CUDA is there);
``test_runs_in_interpreter_or_cuda`` checks that it took effect.

Two references:

* ``AdamRule.step`` / ``SGDRule.step`` (the library's per-leaf math), with a tolerance:
  they use float32 throughout (``torch.lerp``, a float32 ``beta ** count``) where torch's
  CUDA kernel, which the Triton kernels follow, evaluates several steps in float64;
* an emulation of torch's CUDA kernel, written below with torch CPU ops in the same order
  and precisions: bitwise equal for float32 / float16 (every step is a correctly rounded
  IEEE operation in numpy and, with two workarounds noted there, in torch), within one
  unit in the last place for bfloat16 (the interpreter truncates float32 to bfloat16
  where torch and GPUs round).
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("triton")
pytest.importorskip("numpy")  # Triton's interpreter runs the kernels with numpy

from funcurriculum import _triton_kernels as tk  # noqa: E402
from funcurriculum.optimizers import AdamRule, SGDRule  # noqa: E402

CUDA = torch.cuda.is_available()
DEV = torch.device("cuda" if CUDA else "cpu")
# Small blocks: several programs per leaf, full blocks and masked tails, kept cheap for
# the interpreter.
KW = {"block": 256, "chunk": 1024}
SHAPES = [(1,), (7,), (8, 125), (4099,), (13, 17)]
COUNTS = [1.0, 5.0, 5.0, 5.0, 2.0]
LRS = [1e-3, 2e-3, 5e-4, 3e-3, 1e-2]


@pytest.fixture(autouse=True, scope="module")
def _interpret():
    with pytest.MonkeyPatch.context() as mp:
        if CUDA:
            mp.delenv("TRITON_INTERPRET", raising=False)
        else:
            mp.setenv("TRITON_INTERPRET", "1")
        yield


def _leaves(dtype=torch.float32, n_bufs=2, seed=0, shapes=SHAPES):
    gen = torch.Generator().manual_seed(seed)

    def r(shape, scale=1.0):
        return (torch.randn(shape, generator=gen) * scale).to(dtype).to(DEV)

    ps = [r(s) for s in shapes]
    gs = [r(s) for s in shapes]
    bufs = [[r(s, 0.1) for s in shapes]]
    if n_bufs == 2:
        bufs.append([(torch.rand(s, generator=gen) * 0.01).to(dtype).to(DEV) for s in shapes])
    return ps, gs, bufs[:n_bufs]


def _scalars(counts=COUNTS, lrs=LRS, n=None):
    n = len(SHAPES) if n is None else n
    c = torch.tensor(counts[:n], dtype=torch.float32, device=DEV)
    lr = torch.tensor(lrs[:n], dtype=torch.float32, device=DEV)
    return c, lr


def _clone(xs):
    return [x.clone() for x in xs]


def _close(a, b, dtype=torch.float32):
    tol = {torch.float32: (1e-6, 1e-7), torch.float64: (1e-12, 1e-14)}[dtype]
    torch.testing.assert_close(a, b, rtol=tol[0], atol=tol[1])


# -- emulation of torch's CUDA kernels (fused_adam_utils.cuh / FusedSgdKernel.cu) ---------


def _round(x: float, dtype: torch.dtype) -> float:
    return torch.tensor(x, dtype=torch.float64).to(dtype).item()


def _emulate_adam(p, g, m, v, count, lr, b1, b2, eps, wd, decoupled):
    f = torch.float64 if p.dtype == torch.float64 else torch.float32  # opmath
    d = torch.float64  # C++ double
    P, G, M, V = (x.cpu().to(f) for x in (p, g, m, v))
    if wd != 0:
        if decoupled:
            P = (P.to(d) - (lr * wd) * P.to(d)).to(f)
        else:
            G = (G.to(d) + P.to(d) * wd).to(f)
    M = (b1 * M.to(d) + (1 - b1) * G.to(d)).to(f)
    V = (b2 * V.to(d) + (1 - b2) * G.to(d) * G.to(d)).to(f)
    # Per-leaf scalars: Python floats are C++ doubles; _round gives the opmath value.
    bc1 = _round(1 - math.pow(b1, count), f)
    bc2_sqrt = _round(math.sqrt(1 - math.pow(b2, count)), f)
    step_size = _round(lr / bc1, f)
    # torch's CPU float32 sqrt is not correctly rounded (torch 2.13, AVX512: about 15% of
    # random inputs are off by one ulp); the float64 one, rounded to float32, is. Full
    # tensors, not scalars: torch's CPU kernel divides by a scalar as a multiplication by
    # its reciprocal, which is not correctly rounded either.
    sqrt_v = V.to(d).sqrt().to(f) if f == torch.float32 else V.sqrt()
    denom = ((sqrt_v / torch.full_like(V, bc2_sqrt)).to(d) + eps).to(f)
    P = P - torch.full_like(M, step_size) * M / denom
    return tuple(x.to(p.dtype) for x in (P, M, V))


def _emulate_sgd(p, g, buf, count, lr, momentum, dampening, nesterov, wd):
    f = torch.float64 if p.dtype == torch.float64 else torch.float32
    d = torch.float64
    P, G = p.cpu().to(f), g.cpu().to(f)
    if wd != 0:
        G = (G.to(d) + wd * P.to(d)).to(f)
    out = []
    if momentum != 0:
        B = momentum * buf.cpu().to(f).to(d) + (1 - dampening) * G.to(d)
        if dampening != 0 and count == 1:
            B = G.to(d)
        out.append(B.to(f).to(p.dtype))
        G = (G.to(d) + momentum * B).to(f) if nesterov else B.to(f)
    P = (P.to(d) - lr * G.to(d)).to(f)
    return P.to(p.dtype), out


# -- Adam / AdamW --------------------------------------------------------------------------

ADAM_CASES = [
    pytest.param(0.0, False, id="adam"),
    pytest.param(0.1, False, id="adam-l2"),
    pytest.param(0.1, True, id="adamw"),
]


def _run_adam(ps, gs, ms, vs, counts, lrs, wd, decoupled, inplace):
    outs = (
        (ps, ms, vs) if inplace else tuple([torch.empty_like(x) for x in xs] for xs in (ps, ms, vs))
    )
    tk.adam_multi(
        ps, gs, ms, vs, *outs, counts, lrs,
        beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=wd, decoupled=decoupled, **KW,
    )  # fmt: skip
    return outs


def test_runs_in_interpreter_or_cuda():
    assert tk.available(DEV)
    tk.adam_multi([], [], [], [], [], [], [], *_scalars(n=0), beta1=0.9, beta2=0.9, eps=0.0,
                  weight_decay=0.0, decoupled=False)  # fmt: skip
    ps, gs, (ms, vs) = _leaves(shapes=[(3,)])
    _run_adam(ps, gs, ms, vs, *_scalars(n=1), 0.0, False, True)
    assert tk._built["mode"] == ("compiled" if CUDA else "interpret")


def test_available(monkeypatch):
    assert tk.available(DEV)
    if not CUDA:
        assert not tk.available("cuda")  # interpreter: CPU tensors only
        monkeypatch.delenv("TRITON_INTERPRET")
    assert not tk.available("cpu")
    cpu = [[torch.zeros(3)] for _ in range(4)]
    counts, lrs = torch.ones(1), torch.ones(1)
    with pytest.raises(ValueError, match="cannot run"):
        _run_adam(*cpu, counts, lrs, 0.0, False, True)


@pytest.mark.parametrize("wd, decoupled", ADAM_CASES)
def test_adam_matches_rule(wd, decoupled):
    ps, gs, (ms, vs) = _leaves()
    counts, lrs = _scalars()
    before = [_clone(xs) for xs in (ps, gs, ms, vs)]
    out_p, out_m, out_v = _run_adam(ps, gs, ms, vs, counts, lrs, wd, decoupled, inplace=False)
    for xs, old in zip((ps, gs, ms, vs), before):  # inputs untouched
        assert all(torch.equal(x, o) for x, o in zip(xs, old))
    rule = AdamRule(0.9, 0.999, 1e-8, wd, decoupled)
    for i in range(len(ps)):
        p, (m, v) = rule.step(ps[i], gs[i], (ms[i], vs[i]), counts[i], lrs[i])
        _close(out_p[i], p)
        _close(out_m[i], m)
        _close(out_v[i], v)
        ref = _emulate_adam(ps[i], gs[i], ms[i], vs[i], COUNTS[i], float(lrs[i]),
                            0.9, 0.999, 1e-8, wd, decoupled)  # fmt: skip
        for got, want in zip((out_p[i], out_m[i], out_v[i]), ref):
            assert torch.equal(got.cpu(), want)

    # In place ("donate"): the same bits, written into the inputs.
    in_p, in_m, in_v = _run_adam(ps, gs, ms, vs, counts, lrs, wd, decoupled, inplace=True)
    assert in_p is ps
    for a, b in zip((ps, ms, vs), (out_p, out_m, out_v)):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(torch.equal(x, o) for x, o in zip(gs, before[1]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_adam_other_dtypes(dtype):
    ps, gs, (ms, vs) = _leaves(dtype, shapes=SHAPES[:4])
    counts, lrs = _scalars(n=4)
    lrs = lrs.double()  # float64 lrs are read as is
    out_p, out_m, out_v = _run_adam(ps, gs, ms, vs, counts, lrs, 0.1, True, inplace=False)
    rule = AdamRule(0.9, 0.999, 1e-8, 0.1, True)
    for i in range(4):
        got = (out_p[i].cpu(), out_m[i].cpu(), out_v[i].cpu())
        if dtype == torch.float64:
            p, (m, v) = rule.step(ps[i], gs[i], (ms[i], vs[i]), counts[i].double(), lrs[i])
            for a, b in zip(got, (p, m, v)):
                _close(a, b.cpu(), torch.float64)
            continue
        ref = _emulate_adam(ps[i], gs[i], ms[i], vs[i], COUNTS[i], float(lrs[i]),
                            0.9, 0.999, 1e-8, 0.1, True)  # fmt: skip
        for a, b in zip(got, ref):
            if dtype == torch.bfloat16 and not CUDA:
                # Interpreter truncates to bfloat16: at most one unit in the last place.
                torch.testing.assert_close(a.float(), b.float(), rtol=2**-7, atol=0)
            else:
                assert torch.equal(a, b)


def test_adam_zero_size_leaf_and_table_cache():
    ps, gs, (ms, vs) = _leaves(shapes=[(0,), (300,), (2, 0)])
    counts, lrs = _scalars(n=3)
    tk._tables.clear()
    out = _run_adam(ps, gs, ms, vs, counts, lrs, 0.0, False, inplace=True)
    assert len(tk._tables) == 1
    _run_adam(ps, gs, ms, vs, counts, lrs, 0.0, False, inplace=True)  # same table reused
    assert len(tk._tables) == 1
    assert out[0][0].numel() == 0 and out[0][2].shape == (2, 0)


# -- SGD -------------------------------------------------------------------------------------

SGD_CASES = [
    pytest.param(0.0, 0.0, False, 0.0, id="plain"),
    pytest.param(0.0, 0.0, False, 0.01, id="plain-wd"),
    pytest.param(0.9, 0.0, False, 0.0, id="momentum"),
    pytest.param(0.9, 0.5, False, 0.01, id="dampening-wd"),
    pytest.param(0.9, 0.0, True, 0.01, id="nesterov-wd"),
]


@pytest.mark.parametrize("momentum, dampening, nesterov, wd", SGD_CASES)
def test_sgd_matches_rule(momentum, dampening, nesterov, wd):
    ps, gs, (bufs,) = _leaves(n_bufs=1)
    if momentum == 0:
        bufs = []
    counts, lrs = _scalars(lrs=[0.1, 0.05, 0.2, 0.01, 0.3])
    before = [_clone(xs) for xs in (ps, gs, bufs)]
    out_p = [torch.empty_like(p) for p in ps]
    out_b = [torch.empty_like(b) for b in bufs]
    hp = {"momentum": momentum, "dampening": dampening, "nesterov": nesterov, "weight_decay": wd}
    tk.sgd_multi(ps, gs, bufs, out_p, out_b, counts, lrs, **hp, **KW)
    for xs, old in zip((ps, gs, bufs), before):
        assert all(torch.equal(x, o) for x, o in zip(xs, old))
    rule = SGDRule(momentum, dampening, nesterov, wd)
    for i in range(len(ps)):
        p, b = rule.step(ps[i], gs[i], (bufs[i],) if bufs else (), counts[i], lrs[i])
        _close(out_p[i], p)
        ref_p, ref_b = _emulate_sgd(ps[i], gs[i], bufs[i] if bufs else None, COUNTS[i],
                                    float(lrs[i]), momentum, dampening, nesterov, wd)  # fmt: skip
        assert torch.equal(out_p[i].cpu(), ref_p)
        if bufs:
            _close(out_b[i], b[0])
            assert torch.equal(out_b[i].cpu(), ref_b[0])

    tk.sgd_multi(ps, gs, bufs, ps, bufs, counts, lrs, **hp, **KW)  # in place
    assert all(torch.equal(x, y) for x, y in zip(ps, out_p))
    assert all(torch.equal(x, y) for x, y in zip(bufs, out_b))


def test_sgd_first_step_rule_per_leaf():
    # With dampening, a leaf at count 1 starts its buffer at g; the others do not.
    ps, gs, (bufs,) = _leaves(n_bufs=1, shapes=[(5,), (5,)])
    counts, lrs = _scalars(counts=[1.0, 3.0], n=2)
    out_b = [torch.empty_like(b) for b in bufs]
    out_p = [torch.empty_like(p) for p in ps]
    tk.sgd_multi(ps, gs, bufs, out_p, out_b, counts, lrs, momentum=0.9, dampening=0.5,
                 nesterov=False, weight_decay=0.0, **KW)  # fmt: skip
    assert torch.equal(out_b[0], gs[0])
    assert not torch.equal(out_b[1], gs[1])


# -- argument checks -------------------------------------------------------------------------


def test_bad_arguments():
    ps, gs, (ms, vs) = _leaves(shapes=[(4, 4), (3,)])
    counts, lrs = _scalars(n=2)
    kw = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "decoupled": False}
    with pytest.raises(ValueError, match="length"):
        tk.adam_multi(ps, gs[:1], ms, vs, ps, ms, vs, counts, lrs, **kw)
    with pytest.raises(ValueError, match="contiguous"):
        tk.adam_multi([ps[0].t(), ps[1]], gs, ms, vs, ps, ms, vs, counts, lrs, **kw)
    with pytest.raises(ValueError, match="lrs"):
        tk.adam_multi(ps, gs, ms, vs, ps, ms, vs, counts, lrs[:1], **kw)
    with pytest.raises(ValueError, match="power of 2"):
        tk.adam_multi(ps, gs, ms, vs, ps, ms, vs, counts, lrs, **kw, block=100)
    with pytest.raises(ValueError, match="momentum"):
        tk.sgd_multi(ps, gs, [], ps, [], counts, lrs, momentum=0.9, dampening=0.0,
                     nesterov=False, weight_decay=0.0)  # fmt: skip


# -- against torch's own CUDA kernels ----------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("wd, decoupled", ADAM_CASES)
def test_adam_matches_torch_fused_cuda(wd, decoupled):
    ps, gs, (ms, vs) = _leaves(shapes=[(1,), (7,), (1000,), (4099,), (300, 301)])
    counts, lrs = _scalars()
    lrs = lrs.double()  # a Python float lr, as torch gets below
    out_p, out_m, out_v = _run_adam(ps, gs, ms, vs, counts, lrs, wd, decoupled, inplace=False)
    fn = torch._fused_adamw_ if decoupled else torch._fused_adam_
    for i in range(len(ps)):  # torch: one lr per call
        p, m, v = ps[i].clone(), ms[i].clone(), vs[i].clone()
        fn([p], [gs[i]], [m], [v], [], [counts[i].clone()], lr=float(lrs[i]), beta1=0.9,
           beta2=0.999, weight_decay=wd, eps=1e-8, amsgrad=False, maximize=False)  # fmt: skip
        # Expected bitwise equal (see the kernels' docstring); not checked on a GPU yet.
        for a, b in ((out_p[i], p), (out_m[i], m), (out_v[i], v)):
            _close(a, b)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_sgd_matches_torch_fused_cuda():
    ps, gs, (bufs,) = _leaves(n_bufs=1, shapes=[(7,), (4099,), (300, 301)])
    counts, lrs = _scalars(counts=[4.0, 4.0, 4.0], n=3)
    lrs = lrs.double()
    out_p = [torch.empty_like(p) for p in ps]
    out_b = [torch.empty_like(b) for b in bufs]
    hp = {"momentum": 0.9, "dampening": 0.1, "nesterov": False, "weight_decay": 0.01}
    tk.sgd_multi(ps, gs, bufs, out_p, out_b, counts, lrs, **hp)
    for i in range(len(ps)):
        p, b = ps[i].clone(), bufs[i].clone()
        torch._fused_sgd_([p], [gs[i]], [b], lr=float(lrs[i]), maximize=False,
                          is_first_step=False, **hp)  # fmt: skip
        _close(out_p[i], p)
        _close(out_b[i], b)


# -- through the driver: opt.update routes leaves to the one-launch kernel ---------------


def _driver_case(name):
    import funcurriculum as fc

    return {
        "adam": lambda: fc.adam(1e-2, weight_decay=1e-3),
        "adamw": lambda: fc.adamw(1e-2, weight_decay=0.1),
        "sgd": lambda: fc.sgd(0.1),
        "sgd-damp-wd": lambda: fc.sgd(0.1, momentum=0.9, dampening=0.1, weight_decay=1e-2),
        "sgd-nesterov": lambda: fc.sgd(0.1, momentum=0.9, nesterov=True),
    }[name]()


@pytest.mark.parametrize("donate", [False, True], ids=["pure", "donate"])
@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "sgd-damp-wd", "sgd-nesterov"])
def test_update_uses_one_launch_per_step(name, donate, monkeypatch):
    """``opt.update`` sends every contiguous trainable leaf to one kernel launch per step,
    with a distinct rate per leaf (LLRD, a 0-d tensor and a zero coefficient), a frozen
    leaf untouched and a non-contiguous leaf left to torch's fused kernel; the results
    match the reference path over three steps, and a pure call mutates nothing."""
    from funcurriculum import force_reference

    launches = []
    for fn in ("adam_multi", "sgd_multi"):
        real = getattr(tk, fn)

        def spy(*a, _real=real, **k):
            launches.append(len(a[0]))
            return _real(*a, **k)

        monkeypatch.setattr(tk, fn, spy)
    gen = torch.Generator().manual_seed(3)
    shapes = {"a": (7,), "b": (8, 125), "c": (4099,), "d": (13, 17), "frozen": (5,)}
    params = {k: torch.randn(s, generator=gen).to(DEV) for k, s in shapes.items()}
    params["t"] = torch.randn(6, 4, generator=gen).to(DEV).t()  # non-contiguous
    masks = {k: k != "frozen" for k in params}
    coeffs = {"a": 1.0, "b": 0.9, "c": torch.tensor(0.81), "d": 0.0, "frozen": 1.0, "t": 0.5}
    grads = []
    for _ in range(3):
        g = {k: torch.randn(v.shape, generator=gen).to(DEV) for k, v in params.items()}
        g["t"] = torch.randn(6, 4, generator=gen).to(DEV).t()  # the param's layout
        g["frozen"] = None
        grads.append(g)

    opt = _driver_case(name).with_engine("auto" if CUDA else "triton")  # CPU: interpreter

    def run(ref):
        p = {k: v.clone() for k, v in params.items()}
        p["t"] = params["t"].clone()  # clone keeps the transposed layout
        s = opt.init(p, masks)
        for g in grads:
            before = {k: v.clone() for k, v in p.items()}
            if ref:
                with force_reference():
                    p2, s = opt.update(p, g, s, masks, coeffs)
            else:
                p2, s = opt.update(p, g, s, masks, coeffs, donate=donate)
            if not donate or ref:
                for k in p:
                    assert torch.equal(p[k], before[k]), f"input {k} was mutated"
            assert p2["frozen"] is p["frozen"]
            p = p2
        return p, s

    launches.clear()
    got_p, got_s = run(ref=False)
    assert launches == [4, 4, 4]  # a, b, c, d in one launch per step; t and frozen not
    want_p, want_s = run(ref=True)
    for k in params:
        torch.testing.assert_close(got_p[k], want_p[k], rtol=1e-5, atol=1e-6)
    for f in opt.rule.fields:
        for k in params:
            torch.testing.assert_close(got_s[f][k], want_s[f][k], rtol=1e-5, atol=1e-6)
    assert torch.equal(got_p["d"], params["d"])  # coefficient 0: the param does not move
    assert int(got_s["step"]) == 3 and float(got_s["count"]["a"]) == 3.0
