"""The optimizer engine: rules without kernels, engine choice, maximize, amsgrad, complex
and half-precision leaves, weight-decay masks, differentiable updates, dynamic masks,
and the checks that run before anything is written (issue #19 rows 4, 7, 8, 16)."""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch.func import vmap

import funcurriculum as fc

SLOW = pytest.mark.slow
SHAPES = {"enc.weight": (5, 4), "enc.bias": (5,), "head.weight": (3, 5), "head.bias": (3,)}


def make(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for k, s in SHAPES.items()
    }


def grads(n, dtype=torch.float64):
    return [make(100 + t, dtype) for t in range(n)]


@dataclass(frozen=True)
class Lion:
    """Lion (Chen et al. 2023) written as a user would: fields, init, step only."""

    b1: float = 0.9
    b2: float = 0.99
    weight_decay: float = 0.0
    fields = ("exp_avg",)

    def init(self, p):
        return (torch.zeros_like(p),)

    def step(self, p, g, bufs, count, lr):
        (m,) = bufs
        u = torch.sign(self.b1 * m + (1 - self.b1) * g)
        return p - lr * (u + self.weight_decay * p), (self.b2 * m + (1 - self.b2) * g,)


def lion_by_hand(p, gs, lr, wd=0.0, b1=0.9, b2=0.99):
    m = torch.zeros_like(p)
    for g in gs:
        u = torch.sign(b1 * m + (1 - b1) * g)
        p = p - lr * (u + wd * p)
        m = b2 * m + (1 - b2) * g
    return p


# -- a rule with no kernels gets every path ----------------------------------------------


@pytest.mark.parametrize("elementwise", [True, False])
@pytest.mark.parametrize("donate", [False, True])
def test_custom_rule_default_path_masks_coeffs(donate, elementwise):
    opt = fc.Optimizer(Lion(weight_decay=0.1), 0.01, elementwise=elementwise, wave_elems=7)
    p0, gs = make(), grads(3)
    masks = {k: k != "enc.bias" for k in SHAPES}
    coeffs = {"enc.weight": 0.5, "enc.bias": 1.0, "head.weight": 1.0, "head.bias": 0.0}
    p = {k: v.clone() for k, v in p0.items()}
    s = opt.init(p, masks)
    for g in gs:
        p, s = opt.update(p, g, s, masks, coeffs, donate=donate)
    for k in SHAPES:
        want = lion_by_hand(p0[k], [g[k] for g in gs], 0.01 * coeffs[k], 0.1)
        if not masks[k]:
            want = p0[k]
        torch.testing.assert_close(p[k], want, rtol=0, atol=1e-12)
    assert float(s["count"]["enc.weight"]) == 3 and float(s["count"]["enc.bias"]) == 0
    assert torch.equal(p["head.bias"], p0["head.bias"])  # coefficient 0


def test_custom_rule_vmap_compile_checkpoint_transition(tmp_path):
    opt = fc.Optimizer(Lion(), 0.01, elementwise=True)
    p, gs = make(), grads(2)
    old, new = {k: k.startswith("head") for k in SHAPES}, {k: True for k in SHAPES}
    s = opt.init(p, old)
    p1, s = opt.update(p, gs[0], s, old)
    s = opt.transition(s, p1, old, new)
    assert float(s["count"]["enc.weight"]) == 0 and s["exp_avg"]["enc.weight"].shape == (5, 4)
    fc.save(tmp_path / "s.pt", {"params": p1, "state": s})
    back = fc.load(tmp_path / "s.pt")
    eager = opt.update(p1, gs[1], s, new)
    loaded = opt.update(back["params"], gs[1], back["state"], new)
    compiled = torch.compile(opt.update, backend="eager", fullgraph=True)(p1, gs[1], s, new)
    stacked = {k: torch.stack([v, v]) for k, v in p1.items()}
    sg = {k: torch.stack([v, v]) for k, v in gs[1].items()}
    ss = torch.utils._pytree.tree_map(lambda t: torch.stack([t, t]), s)
    vm = vmap(opt.update, in_dims=(0, 0, 0, None))(stacked, sg, ss, new)
    for k in SHAPES:
        torch.testing.assert_close(loaded[0][k], eager[0][k], rtol=0, atol=0)
        torch.testing.assert_close(compiled[0][k], eager[0][k])
        torch.testing.assert_close(vm[0][k][1], eager[0][k])


def test_rule_refusing_a_leaf_is_named():
    @dataclass(frozen=True)
    class MatricesOnly(Lion):
        def init(self, p):
            if p.dim() != 2:
                raise ValueError(f"needs 2-D leaves, got {p.dim()}-D")
            return super().init(p)

    opt = fc.Optimizer(MatricesOnly(), 0.1, name="mat")
    with pytest.raises(ValueError, match=r"mat: leaf 'enc.bias': needs 2-D"):
        opt.init(make())


def test_kernels_must_be_declared_not_discovered():
    class WithStrayFused(Lion):
        def fused(self, *a, **k):  # an attribute named like a kernel is not a kernel
            raise AssertionError("never called")

    opt = fc.Optimizer(WithStrayFused(), 0.01)
    p, gs = make(), grads(1)
    opt.update(p, gs[0], opt.init(p), donate=True)
    with pytest.raises(TypeError, match="fc.Kernels"):
        fc.Optimizer(Lion(), 0.1, kernels=object())
    with pytest.raises(TypeError, match="lacks 'fields'"):
        fc.Optimizer(object(), 0.1)


# -- engine choice per optimizer / per call ----------------------------------------------


@pytest.mark.parametrize(
    "engine",
    ["auto", "reference", "generic", "fused", "triton", pytest.param("compiled", marks=SLOW)],
)
def test_every_engine_gives_the_same_update(engine):
    opt = fc.adam(0.05, weight_decay=0.1)
    p, gs = make(dtype=torch.float32), grads(2, torch.float32)
    coeffs = {k: 0.5 + i / 10 for i, k in enumerate(SHAPES)}
    want = (p, opt.init(p))
    with fc.force_reference():
        for g in gs:
            want = opt.update(*want[:1], g, want[1], None, coeffs)
    if engine == "triton":
        pytest.importorskip("triton")
    o = opt.with_engine(engine)
    got = (p, o.init(p))
    for g in gs:
        got = o.update(got[0], g, got[1], None, coeffs)
    per_call = (p, opt.init(p))
    for g in gs:
        per_call = opt.update(per_call[0], g, per_call[1], None, coeffs, engine=engine)
    donated = ({k: v.clone() for k, v in p.items()}, o.init(p))
    for g in gs:
        donated = o.update(donated[0], g, donated[1], None, coeffs, donate=True)
    for k in SHAPES:
        torch.testing.assert_close(got[0][k], want[0][k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(per_call[0][k], want[0][k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(donated[0][k], want[0][k], rtol=1e-5, atol=1e-6)
    assert opt.engine == "auto"  # with_engine made a new optimizer
    with pytest.raises(ValueError, match="engine must be one of"):
        opt.with_engine("fastest")


def test_force_reference_is_scoped_to_its_thread(monkeypatch):
    from funcurriculum.engines import reference

    seen = []
    real = reference.run

    def spy(job, **k):
        seen.append(threading.current_thread().name)
        return real(job, **k)

    monkeypatch.setattr(reference, "run", spy)
    opt, p = fc.sgd(0.1), make(dtype=torch.float32)
    g = grads(1, torch.float32)[0]
    inside = threading.Event()
    done = threading.Event()

    def other():
        inside.wait()
        opt.update(p, g, opt.init(p))  # another thread: its own (default) engine
        done.set()

    t = threading.Thread(target=other, name="other")
    t.start()
    with fc.force_reference():
        inside.set()
        done.wait()
        opt.update(p, g, opt.init(p))
    t.join()
    assert seen == ["MainThread"]


# -- maximize, amsgrad: oracle torch.optim -------------------------------------------------

ORACLE = [
    (fc.sgd, torch.optim.SGD, {"momentum": 0.9, "maximize": True}),
    (fc.sgd, torch.optim.SGD, {"momentum": 0.9, "dampening": 0.2, "maximize": True}),
    (fc.adam, torch.optim.Adam, {"maximize": True, "weight_decay": 0.1}),
    (fc.adam, torch.optim.Adam, {"amsgrad": True}),
    (fc.adamw, torch.optim.AdamW, {"amsgrad": True, "maximize": True}),
]


def torch_traj(cls, p0, gs, lr, groups_of=None, **kw):
    ps = {k: v.clone().requires_grad_(True) for k, v in p0.items()}
    if groups_of is None:
        o = cls(list(ps.values()), lr=lr, foreach=False, **kw)
    else:
        o = cls([{"params": [ps[k] for k in ks], **g} for ks, g in groups_of], lr=lr, **kw)
    for g in gs:
        for k, v in ps.items():
            v.grad = g[k].clone()
        o.step()
    return {k: v.detach() for k, v in ps.items()}


@pytest.mark.parametrize("engine", ["auto", "reference", "generic"])
@pytest.mark.parametrize("ours,cls,kw", ORACLE)
def test_maximize_and_amsgrad_match_torch(ours, cls, kw, engine):
    p0, gs = make(), grads(4)
    want = torch_traj(cls, p0, gs, 0.05, **kw)
    opt = ours(0.05, **kw).with_engine(engine)
    for donate in (False, True):
        p = {k: v.clone() for k, v in p0.items()}
        s = opt.init(p)
        for g in gs:
            p, s = opt.update(p, g, s, donate=donate)
        for k in SHAPES:
            torch.testing.assert_close(p[k], want[k], rtol=1e-10, atol=1e-12)


# -- complex and half-precision leaves -------------------------------------------------


@pytest.mark.parametrize(
    "ours,cls,kw",
    [
        (fc.sgd, torch.optim.SGD, {"momentum": 0.9, "weight_decay": 0.1}),
        (fc.adam, torch.optim.Adam, {}),
        (fc.adam, torch.optim.Adam, {"amsgrad": True}),
        (fc.adamw, torch.optim.AdamW, {"weight_decay": 0.1}),
    ],
)
@pytest.mark.parametrize("engine", ["auto", "reference", "generic"])
def test_complex_leaves_are_real_pairs_as_torch(ours, cls, kw, engine):
    gen = torch.Generator().manual_seed(0)
    p0 = {"z": torch.randn(4, 3, dtype=torch.complex128, generator=gen), "r": torch.randn(2)}
    p0["r"] = p0["r"].double()
    gs = [{k: torch.randn(v.shape, dtype=v.dtype, generator=gen) for k, v in p0.items()}]
    gs = gs * 3
    want = torch_traj(cls, p0, gs, 0.1, **kw)
    opt = ours(0.1, **kw).with_engine(engine)
    for donate in (False, True):
        p = {k: v.clone() for k, v in p0.items()}
        s = opt.init(p)
        for g in gs:
            p, s = opt.update(p, g, s, donate=donate)
        assert p["z"].dtype == torch.complex128
        torch.testing.assert_close(p["z"], want["z"], rtol=1e-10, atol=1e-12)


def test_complex_issue_example_moves_the_imaginary_part():
    opt, p = fc.adam(0.1), {"w": torch.zeros(1, dtype=torch.complex64)}
    s = opt.init(p)
    for _ in range(3):
        p, s = opt.update(p, {"w": torch.tensor([1j], dtype=torch.complex64)}, s)
    assert p["w"].real.abs().max() == 0 and p["w"].imag.item() == pytest.approx(-0.3, abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_agrees_on_every_path(dtype):
    p = {"w": torch.ones(64, dtype=dtype), "b": torch.linspace(-1, 1, 8).to(dtype)}
    g = {"w": torch.full((64,), 1e-5, dtype=dtype), "b": torch.full((8,), -3e-6, dtype=dtype)}
    opt = fc.adam(0.1)
    fused, _ = opt.update(p, g, opt.init(p))
    generic, _ = opt.with_engine("generic").update(p, g, opt.init(p))
    with fc.force_reference():
        ref, _ = opt.update(p, g, opt.init(p))
    vm, _ = vmap(opt.update, in_dims=(0, 0, 0))(
        {k: v[None] for k, v in p.items()},
        {k: v[None] for k, v in g.items()},
        vmap(opt.init)({k: v[None] for k, v in p.items()}),
    )
    for k in p:
        assert torch.isfinite(ref[k]).all()
        assert ref[k].dtype == dtype
        for other in (fused, generic):
            torch.testing.assert_close(other[k], ref[k], rtol=0, atol=float(torch.finfo(dtype).eps))
        torch.testing.assert_close(vm[k][0], ref[k], rtol=0, atol=0)


# -- weight-decay masks: oracle torch.optim with a weight_decay=0 group ----------------------


@pytest.mark.parametrize("callable_mask", [False, True])
@pytest.mark.parametrize(
    "ours,cls,kw",
    [
        (fc.adamw, torch.optim.AdamW, {"weight_decay": 0.1}),
        (fc.adam, torch.optim.Adam, {"weight_decay": 0.1}),
        (fc.sgd, torch.optim.SGD, {"momentum": 0.9, "weight_decay": 0.1}),
    ],
)
def test_weight_decay_mask_matches_a_no_decay_group(ours, cls, kw, callable_mask):
    p0, gs = make(), grads(4)
    decay = [k for k in SHAPES if k.endswith("weight")]
    nodecay = [k for k in SHAPES if k not in decay]
    want = torch_traj(
        cls, p0, gs, 0.05, groups_of=[(decay, {}), (nodecay, {"weight_decay": 0.0})], **kw
    )
    mask = (
        (lambda t: {k: k.endswith("weight") for k in t})
        if callable_mask
        else {k: k in decay for k in SHAPES}
    )
    opt = ours(0.05, weight_decay_mask=mask, **kw)
    for donate in (False, True):
        p = {k: v.clone() for k, v in p0.items()}
        s = opt.init(p)
        for g in gs:
            p, s = opt.update(p, g, s, donate=donate)
        for k in SHAPES:
            torch.testing.assert_close(p[k], want[k], rtol=1e-10, atol=1e-12)


def test_weight_decay_mask_errors_name_the_leaf():
    @dataclass(frozen=True)
    class NoDecay:
        fields = ()

        def init(self, p):
            return ()

        def step(self, p, g, bufs, count, lr):
            return p - lr * g, bufs

    with pytest.raises(TypeError, match="weight_decay_mask needs a rule with weight_decay"):
        fc.Optimizer(NoDecay(), 0.1, weight_decay_mask={})
    opt = fc.adamw(0.1, weight_decay_mask={k: "yes" for k in SHAPES})
    p = make()
    with pytest.raises(TypeError, match="weight_decay_mask at 'enc.weight'"):
        opt.update(p, grads(1)[0], opt.init(p))


# -- differentiable updates -------------------------------------------------------------


def _unrolled_loss(opt, w, g_fn, c, steps=3):
    """Loss after ``steps`` updates as a function of the initial param and a coefficient."""
    p = {"w": w}
    s = opt.init({"w": w.detach()})
    for t in range(steps):
        p, s = opt.update(p, {"w": g_fn(p["w"], t)}, s, None, {"w": c})
    return (p["w"] ** 2).sum()


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda: fc.sgd(0.1, momentum=0.9, differentiable=True),
        lambda: fc.adam(0.05, differentiable=True),
        lambda: fc.adamw(0.05, amsgrad=True, differentiable=True),
    ],
)
def test_differentiable_matches_finite_differences(make_opt):
    opt = make_opt()

    def g_fn(w, t):  # a gradient that depends on the param: a real unrolled objective
        return torch.sin(w) * (t + 1) + w

    w = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64, requires_grad=True)
    c = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w, c: _unrolled_loss(opt, w, g_fn, c), (w, c))
    # torch.func.grad too
    dw = torch.func.grad(lambda w: _unrolled_loss(opt, w, g_fn, c.detach()))(w.detach())
    w.grad = None
    _unrolled_loss(opt, w, g_fn, c.detach()).backward()
    torch.testing.assert_close(dw, w.grad)


@pytest.mark.parametrize(
    "ours,cls,kw",
    [
        (fc.sgd, torch.optim.SGD, {"momentum": 0.9}),
        (fc.adam, torch.optim.Adam, {}),
        (fc.adamw, torch.optim.AdamW, {"weight_decay": 0.1}),
    ],
)
def test_differentiable_matches_torch_differentiable(ours, cls, kw):
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(4, dtype=torch.float64, generator=gen)
    gs = [torch.randn(4, dtype=torch.float64, generator=gen) for _ in range(3)]

    # Fixed grads: torch's differentiable SGD detaches the first momentum buffer
    # (``clone(grad).detach()``), so with param-dependent grads only ours is the true
    # derivative (checked against finite differences above). Torch's differentiable Adam
    # computes its bias corrections from a float32 step tensor: tolerance 1e-5.
    def torch_side(w):
        p = w.clone()  # a non-leaf param, as torch's own differentiable tests do
        o = cls([p], lr=0.05, differentiable=True, **kw)
        for g in gs:
            p.grad = g.clone()
            o.step()
        return (p**2).sum()

    def our_side(w):
        opt = ours(0.05, differentiable=True, **kw)
        p, s = {"w": w}, opt.init({"w": w.detach()})
        for g in gs:
            p, s = opt.update(p, {"w": g}, s)
        return (p["w"] ** 2).sum()

    wt = w0.clone().requires_grad_(True)
    wo = w0.clone().requires_grad_(True)
    (gt,) = torch.autograd.grad(torch_side(wt), wt)
    (go,) = torch.autograd.grad(our_side(wo), wo)
    tol = dict(rtol=1e-10, atol=1e-12) if cls is torch.optim.SGD else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(go, gt, **tol)


def test_default_update_is_not_differentiable():
    opt = fc.adam(0.1)
    w = torch.ones(2, requires_grad=True)
    new, _ = opt.update({"w": w}, {"w": torch.ones(2)}, opt.init({"w": w.detach()}))
    assert new["w"].grad_fn is None and new["w"].requires_grad  # a fresh leaf, flag kept


# -- dynamic masks ---------------------------------------------------------------------


def test_zero_d_bool_tensor_masks_equal_python_bools():
    opt, p, gs = fc.adam(0.1), make(), grads(2)
    pm = {k: k.startswith("head") for k in SHAPES}
    tm = {k: torch.tensor(v) for k, v in pm.items()}
    a, sa = p, opt.init(p, pm)
    b, sb = p, opt.init(p, pm)
    for g in gs:
        a, sa = opt.update(a, g, sa, pm)
        b, sb = opt.update(b, g, sb, tm)
    for k in SHAPES:
        assert torch.equal(a[k], b[k])
    assert b["enc.weight"] is p["enc.weight"]
    with pytest.raises(ValueError, match="outside vmap"):
        opt.update(p, gs[0], opt.init(p), {k: torch.ones(2, dtype=torch.bool) for k in SHAPES})


def test_batched_masks_give_each_member_its_static_run():
    E = 3
    opt = fc.adam(0.05)
    base, gs = make(), grads(3)
    member_masks = [
        {k: True for k in SHAPES},
        {k: k.startswith("head") for k in SHAPES},
        {k: k == "enc.bias" for k in SHAPES},
    ]
    stacked = {k: torch.stack([v] * E) for k, v in base.items()}
    masks = {k: torch.tensor([m[k] for m in member_masks]) for k in SHAPES}
    coeffs = {k: torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64) for k in SHAPES}
    p, s = stacked, vmap(opt.init)(stacked)
    step = vmap(opt.update, in_dims=(0, None, 0, 0, 0))
    for g in gs:
        p, s = step(p, g, s, masks, coeffs)
    for e, m in enumerate(member_masks):
        q, t = base, opt.init(base)
        for g in gs:
            q, t = opt.update(q, g, t, m, {k: float(coeffs[k][e]) for k in SHAPES})
        for k in SHAPES:
            if m[k]:
                torch.testing.assert_close(p[k][e], q[k], rtol=1e-12, atol=1e-14)
            else:  # bit-identical where this member is frozen
                assert torch.equal(p[k][e], base[k])
                assert torch.equal(s["exp_avg"][k][e], torch.zeros_like(base[k]))
            assert float(s["count"][k][e]) == (3.0 if m[k] else 0.0)


def test_batched_transition_refreshes_only_members_that_unfroze():
    opt, base, g = fc.adam(0.05), make(), grads(1)[0]
    stacked = {k: torch.stack([v, v]) for k, v in base.items()}
    on = {k: torch.tensor([True, True]) for k in SHAPES}
    s = vmap(opt.init)(stacked)
    p, s = vmap(opt.update, in_dims=(0, None, 0, 0))(stacked, g, s, on)
    old = {k: torch.tensor([True, False]) for k in SHAPES}  # member 1 was "frozen"
    s2 = vmap(opt.transition, in_dims=(0, 0, 0, 0))(s, p, old, on)
    for k in SHAPES:
        assert torch.equal(s2["exp_avg"][k][0], s["exp_avg"][k][0])
        assert torch.equal(s2["exp_avg"][k][1], torch.zeros_like(base[k]))
        assert s2["count"][k].tolist() == [1.0, 0.0]


# -- checks before writes (issue #19) -----------------------------------------------------


def test_donate_refuses_aliased_leaves_and_changes_nothing():
    opt = fc.adam(0.1)
    w = torch.ones(4)
    p = {"a.weight": w, "b.weight": w}  # one tensor at two keys, as state_dict() gives
    s = opt.init(p)
    before = {k: v.clone() for k, v in p.items()}
    with pytest.raises(ValueError, match=r"params 'a.weight' and params 'b.weight' share"):
        opt.update(p, {k: torch.ones(4) for k in p}, s, donate=True)
    assert torch.equal(w, before["a.weight"]) and float(s["count"]["a.weight"]) == 0
    flat = torch.zeros(6)
    views = {"x": flat[:4], "y": flat[2:]}  # overlapping views
    with pytest.raises(ValueError, match="share memory"):
        opt.update(views, {k: torch.ones(4) for k in views}, opt.init(views), donate=True)
    shared = opt.init({"a": torch.ones(4), "b": torch.ones(4)})
    shared["exp_avg"]["b"] = shared["exp_avg"]["a"]  # shared moments (e.g. after a load)
    with pytest.raises(ValueError, match=r"state\['exp_avg'\] 'a'.*share memory"):
        opt.update({"a": torch.ones(4), "b": torch.ones(4)}, {"a": w, "b": w}, shared, donate=True)
    # the pure update is unaffected by aliasing: both keys get the same new value
    new, _ = opt.update(p, {k: torch.ones(4) for k in p}, s)
    assert torch.equal(new["a.weight"], new["b.weight"])


def test_donate_refuses_aliased_counts():
    """The counts of ``init`` are views of one tensor (checked as that one span); one
    count at two leaves, or a param inside that tensor, is refused and named."""
    opt, g = fc.adam(0.1), {"a": torch.ones(2), "b": torch.ones(2)}
    s = opt.init({"a": torch.ones(2), "b": torch.ones(2)})
    s["count"]["b"] = s["count"]["a"]
    with pytest.raises(ValueError, match=r"state\['count'\] 'a' and state\['count'\] 'b' share"):
        opt.update({"a": torch.ones(2), "b": torch.ones(2)}, g, s, donate=True)
    assert float(s["count"]["a"]) == 0
    s = opt.init({"a": torch.ones(2), "b": torch.ones(2)})
    base = s["count"]["a"]._base
    with pytest.raises(ValueError, match=r"params 'b' and state\['count'\] \(the tensor the "):
        opt.update({"a": torch.ones(2), "b": base}, g, s, donate=True)
    assert base.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("bad", ["coeff_shape", "moment_dtype"])
def test_donate_checks_everything_before_writing(bad):
    opt = fc.adam(0.1)
    p = {"a": torch.ones(4), "b": torch.ones(4)}
    s = opt.init(p)
    coeffs = None
    if bad == "coeff_shape":
        coeffs = {"a": 1.0, "b": torch.ones(3)}
        match = "coefficient at 'b'"
    else:
        s["exp_avg"]["b"] = s["exp_avg"]["b"].double()
        match = "optimizer state at 'b' has dtype"
    snap = [p["a"].clone(), s["count"]["a"].clone(), s["step"].clone()]
    with pytest.raises(ValueError, match=match):
        opt.update(p, {k: torch.ones(4) for k in p}, s, None, coeffs, donate=True)
    assert torch.equal(p["a"], snap[0]) and torch.equal(s["count"]["a"], snap[1])
    assert torch.equal(s["step"], snap[2])


@pytest.mark.parametrize(
    "value,match",
    [(np.float32("nan"), "returned nan at step 0"), (-0.1, "returned -0.1"), ("x", "number")],
)
def test_lr_schedule_values_are_checked(value, match):
    opt = fc.sgd(lambda step: value)
    p = {"w": torch.ones(2)}
    with pytest.raises((ValueError, TypeError), match=match):
        opt.update(p, {"w": torch.ones(2)}, opt.init(p))
    ok = fc.sgd(lambda step: np.float32(0.5))
    assert ok.update(p, {"w": torch.ones(2)}, ok.init(p))[0]["w"].tolist() == [0.5, 0.5]


@pytest.mark.parametrize(
    "leaf,match",
    [
        (torch.ones(3, dtype=torch.int64), "dtype torch.int64"),
        (torch.ones(3, dtype=torch.bool), "dtype torch.bool"),
        (torch.eye(3).to_sparse(), "layout"),
    ],
)
def test_int_bool_sparse_params_are_refused(leaf, match):
    p = {"ok": torch.ones(3), "bad.leaf": leaf}
    for opt in (fc.sgd(0.1), fc.adam(0.1)):
        with pytest.raises(TypeError, match=rf"'bad.leaf'.*{match}|{match}.*'bad.leaf'"):
            opt.init(p)
        good = opt.init({"ok": torch.ones(3)})
        with pytest.raises(TypeError, match="bad.leaf"):
            opt.update(
                p,
                {"ok": torch.ones(3), "bad.leaf": leaf},
                {
                    **good,
                    "count": {**good["count"], "bad.leaf": torch.zeros(())},
                    **{f: {**good[f], "bad.leaf": torch.zeros(3)} for f in opt.rule.fields},
                },
            )


# -- the one-launch kernel's probe and the selftest ----------------------------------------


def test_unverified_triton_kernel_falls_back_with_one_warning(monkeypatch):
    """A one-launch kernel that fails or disagrees on its first probe is not used there:
    the leaves take torch's fused kernel, with one warning per (device, dtype, rule)."""
    from funcurriculum.engines import triton as tr

    monkeypatch.setattr(tr, "_PROBES", {})
    monkeypatch.setattr(tr, "usable", lambda device, on_cpu: True)  # pretend CPU is CUDA
    calls = []

    def wrong(rule, ps, gs, bufs, out_ps, out_bufs, counts, lrs):
        calls.append(len(ps))
        for o in out_ps:
            o.fill_(123.0)
        for col in out_bufs:
            for o in col:
                o.zero_()

    def raising(*a, **k):
        raise RuntimeError("no GPU compiler")

    base = fc.adam(0.1)
    p = {"a": torch.ones(5), "b": torch.ones(7)}
    g = {k: torch.full_like(v, 0.5) for k, v in p.items()}
    for bad, rule in ((wrong, base.rule), (raising, dataclasses.replace(base.rule, eps=1e-7))):
        kernels = fc.Kernels(inplace=base.kernels.inplace, multi=bad)
        opt = fc.Optimizer(rule, 0.1, kernels=kernels, elementwise=True)
        with fc.force_reference():
            want, _ = opt.update(p, g, opt.init(p))
        with pytest.warns(RuntimeWarning, match="using torch's fused kernels"):
            got, _ = opt.update(p, g, opt.init(p))
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no second warning
            got2, _ = opt.update(p, g, opt.init(p))
        for k in p:
            torch.testing.assert_close(got[k], want[k])
            torch.testing.assert_close(got2[k], want[k])
    assert calls == [3]  # only the probe ever ran the wrong kernel
    outcomes = [(ok, d.split(" ")[0]) for ok, d in tr.probe_results().values()]
    assert outcomes == [(False, "disagrees"), (False, "failed")]


def test_triton_probe_agrees_in_the_interpreter():
    pytest.importorskip("triton")
    from funcurriculum import _triton_kernels as tk
    from funcurriculum.engines import triton as tr

    if not tk.available("cpu"):
        pytest.skip("Triton's CPU interpreter is not available")
    opt = fc.adam(0.1)
    ok, detail = tr._probe(opt.rule, opt.kernels, torch.device("cpu"), torch.float32)
    assert ok, detail


def test_selftest_reports_every_optimizer(capsys):
    from funcurriculum import selftest

    assert selftest.main([]) == 0
    out = capsys.readouterr().out
    assert "all engines agree" in out
    for name in ("sgd", "adam", "adamw"):
        assert f"\n{name} " in out


def test_fused_kernel_calls_group_by_device_dtype_lr_and_first_flag():
    """One kernel call per (device, dtype, lr, first flag); a tensor lr is its own
    group; the one-group shortcut and the general grouping give the same partition."""
    from funcurriculum.engines.fused import _groups

    f32, f64 = torch.zeros(2), torch.zeros(2, dtype=torch.float64)
    ps = [f32, f32, f64, f32, f32, f32]
    lr = {0: 0.1, 1: 0.1, 2: 0.1, 3: 0.2, 4: torch.tensor(0.1), 5: 0.1}
    got = _groups(lr, list(range(6)), {}, ps)
    cpu = f32.device
    assert got == {
        (cpu, torch.float32, 0.1, False): [0, 1, 5],
        (cpu, torch.float64, 0.1, False): [2],
        (cpu, torch.float32, 0.2, False): [3],
        (cpu, torch.float32, ("tensor", 4), False): [4],
    }
    same = [f32] * 4
    assert _groups({i: 0.1 for i in range(4)}, [0, 1, 2, 3], {}, same) == {
        (cpu, torch.float32, 0.1, False): [0, 1, 2, 3]
    }
    lrs = {0: 0.1, 1: 0.2, 2: 0.1, 3: 0.2}
    assert _groups(lrs, [0, 1, 2, 3], {}, same) == {
        (cpu, torch.float32, 0.1, False): [0, 2],
        (cpu, torch.float32, 0.2, False): [1, 3],
    }
    first = {0: True, 1: False, 2: True, 3: False}
    assert _groups({i: 0.1 for i in range(4)}, [0, 1, 2, 3], first, same) == {
        (cpu, torch.float32, 0.1, True): [0, 2],
        (cpu, torch.float32, 0.1, False): [1, 3],
    }
    assert _groups(lr, [], {}, ps) == {}
