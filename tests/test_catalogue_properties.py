"""Properties of every catalogue optimizer over random trees, masks, coefficients and
phase sequences (hypothesis), and half precision agreeing between eager and vmap."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_properties import (
    assert_untouched,
    leaves,
    like,
    params_st,
    phases_st,
    random_grads,
    snapshot,
)

import funcurriculum as fc

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FACTORIES = {
    "rmsprop": lambda: fc.rmsprop(0.01, momentum=0.5, centered=True, weight_decay=0.01),
    "adagrad": lambda: fc.adagrad(0.1, lr_decay=0.1),
    "adamax": lambda: fc.adamax(0.01, weight_decay=0.01),
    "nadam": lambda: fc.nadam(0.01, weight_decay=0.01, decoupled_weight_decay=True),
    "radam": lambda: fc.radam(fc.cosine(0.01, 5)),
    "adadelta": lambda: fc.adadelta(1.0),
    "adafactor": lambda: fc.adafactor(0.01, weight_decay=0.01),
    "muon": lambda: fc.muon(0.02),
    "lion": lambda: fc.lion(0.001, weight_decay=0.1),
}
NAMES = sorted(FACTORIES)


def matrices(params):
    """Muon's trees: every leaf a 2-D matrix."""
    g = torch.Generator().manual_seed(0)
    return like(params, [torch.randn(3, 2, generator=g, dtype=x.dtype) for x in leaves(params)])


def leaf_state(opt, state, i):
    return {f: leaves(state[f])[i] for f in ("count", *opt.rule.fields)}


def same(a, b):
    return all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(params=params_st, data=st.data())
def test_phase_sequences_keep_invariants(name, params, data):
    """Frozen leaves bit-identical (params and state), inputs never modified, fresh state
    (the rule's own init, count 0) exactly for the leaves a transition activates, and a
    donated update bit-identical to the pure one."""
    opt = FACTORIES[name]()
    if name == "muon":
        params = matrices(params)
    n = len(leaves(params))
    phases = data.draw(phases_st(n))
    state = opt.init(params, like(params, phases[0][0]))
    prev = None
    for phase, (mask_list, coeff_list, nsteps) in enumerate(phases):
        masks, coeffs = like(params, mask_list), like(params, coeff_list)
        if prev is not None:
            before = [leaf_state(opt, state, i) for i in range(n)]
            snap = snapshot(state)
            state = opt.transition(state, params, prev, masks)
            assert_untouched_state(snap, before, opt, n)
            for i, (was, now, p) in enumerate(zip(leaves(prev), mask_list, leaves(params))):
                now_state = leaf_state(opt, state, i)
                if now and not was:
                    assert float(now_state["count"]) == 0.0
                    for f, fresh in zip(opt.rule.fields, opt.rule.init(p)):
                        assert torch.equal(now_state[f], fresh), (i, f)
                else:
                    assert same(now_state, before[i]), i
        for s in range(nsteps):
            grads = random_grads(params, 7 * phase + s)
            snaps = [snapshot(params), snapshot(grads), snapshot(state)]
            before = [leaf_state(opt, state, i) for i in range(n)]
            new_params, new_state = opt.update(params, grads, state, masks, coeffs)
            assert_untouched(params, snaps[0], "update: params")
            assert_untouched(grads, snaps[1], "update: grads")
            assert_untouched(state, snaps[2], "update: state")
            don_params, don_state = opt.update(
                clone(params), grads, clone(state), masks, coeffs, donate=True
            )
            assert trees_bit_equal(don_params, new_params), "donate != pure: params"
            assert trees_bit_equal(don_state, new_state), "donate != pure: state"
            for i, (p, q, m, c) in enumerate(
                zip(leaves(params), leaves(new_params), mask_list, coeff_list)
            ):
                assert q.dtype == p.dtype and q.shape == p.shape
                after = leaf_state(opt, new_state, i)
                if not m:
                    assert torch.equal(q, p) and same(after, before[i]), f"frozen leaf {i}"
                    continue
                assert float(after["count"]) == float(before[i]["count"]) + 1
                assert torch.isfinite(q).all()
                if float(c) == 0.0 and name != "adafactor":  # adafactor's decay is lr-free
                    assert torch.equal(q, p), f"leaf {i} with coefficient 0 moved"
            params, state = new_params, new_state
        prev = masks


def clone(tree):
    return like(tree, [x.clone() if torch.is_tensor(x) else x for x in leaves(tree)])


def trees_bit_equal(a, b):
    la, lb = leaves(a), leaves(b)
    return len(la) == len(lb) and all(
        x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)
        if torch.is_tensor(x)
        else x == y
        for x, y in zip(la, lb)
    )


def assert_untouched_state(snap, before, opt, n):
    _, entries = snap
    for obj, copy, version in entries:
        if torch.is_tensor(obj):
            assert torch.equal(obj, copy) and obj._version == version, "transition wrote state"


# -- half precision: eager and vmap agree ------------------------------------------------------


def half_tree(name, dtype):
    g = torch.Generator().manual_seed(5)
    shapes = {"w": (4, 3), "v": (3, 4)} if name == "muon" else {"w": (4, 3), "b": (3,)}
    return {k: torch.randn(s, generator=g).to(dtype) for k, s in shapes.items()}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", NAMES)
def test_half_precision_eager_equals_vmap(name, dtype):
    """A vmapped update of half-precision leaves equals the eager one (small grads too).

    Muon's Newton-Schulz iteration runs bfloat16 matmuls, which torch's batched (vmap)
    and single kernels round differently: a few ulps apart there, bit-equal elsewhere.
    """
    tol = dict(rtol=2e-2, atol=1e-2) if name == "muon" else dict(rtol=0, atol=0)
    opt = FACTORIES[name]()
    params = half_tree(name, dtype)
    state = opt.init(params)
    members = 2
    bp = {k: v.expand(members, *v.shape).clone() for k, v in params.items()}
    bstate = {
        key: (
            {k: v.expand(members, *v.shape).clone() for k, v in sub.items()}
            if isinstance(sub, dict)
            else sub.expand(members).clone()
        )
        for key, sub in state.items()
    }
    step = torch.func.vmap(lambda p, g, s: opt.update(p, g, s))
    for t in range(4):
        scale = 1e-4 if t % 2 else 1.0  # small grads: the float16 underflow case
        g = {
            k: (torch.randn(v.shape, generator=torch.Generator().manual_seed(t)) * scale).to(dtype)
            for k, v in params.items()
        }
        bg = {k: v.expand(members, *v.shape).clone() for k, v in g.items()}
        params, state = opt.update(params, g, state)
        bp, bstate = step(bp, bg, bstate)
        for k in params:
            assert params[k].dtype == dtype
            assert torch.isfinite(params[k]).all(), (name, k, t)
            for m in range(members):
                torch.testing.assert_close(bp[k][m], params[k], **tol)


def _upcast(tree, dtype):
    return {
        k: _upcast(v, dtype) if isinstance(v, dict) else (v.float() if v.dtype == dtype else v)
        for k, v in tree.items()
    }


def _half_grads(params, t, dtype):
    scale = 1e-4 if t % 2 else 1.0  # small grads: the float16 underflow case
    gen = torch.Generator().manual_seed(t)
    return {k: (torch.randn(v.shape, generator=gen) * scale).to(dtype) for k, v in params.items()}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", NAMES)
def test_half_precision_computes_in_float32(name, dtype):
    """Each half-precision update is the float32 update of the upcast params, grads and
    state, rounded back to the half dtype (bit for bit), with frozen leaves and
    coefficients; the compiled update (aot_eager) equals the eager one."""
    opt = FACTORIES[name]()
    params = half_tree(name, dtype)
    keys = list(params)
    masks = {k: True for k in keys}
    coeffs = {k: [1.0, 0.5][i % 2] for i, k in enumerate(keys)}
    state = opt.init(params, masks)
    compiled = torch.compile(
        lambda p, g, s: opt.update(p, g, s, masks, coeffs), backend="aot_eager", fullgraph=False
    )
    tol = dict(rtol=2e-2, atol=1e-2) if name == "muon" else dict(rtol=0, atol=0)
    for t in range(4):
        g = _half_grads(params, t, dtype)
        new, new_state = opt.update(params, g, state, masks, coeffs)
        ref, ref_state = opt.update(
            _upcast(params, dtype), _upcast(g, dtype), _upcast(state, dtype), masks, coeffs
        )
        comp, _ = compiled(params, g, state)
        for k in keys:
            assert new[k].dtype == dtype and torch.isfinite(new[k]).all(), (k, t)
            assert torch.equal(new[k], ref[k].to(dtype)), (k, t)
            torch.testing.assert_close(comp[k], new[k], **tol, msg=f"compiled {k} at {t}")
        for f in opt.rule.fields:
            for k in keys:
                ours, theirs = new_state[f][k], ref_state[f][k]
                assert torch.equal(ours, theirs.to(ours.dtype)), (f, k, t)
        params, state = new, new_state
