"""Optimizer.update_members: vmap(update)'s arithmetic on stacked leaves, without vmap."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import vmap

import funcurriculum as fc
from funcurriculum._tree import flatten

E = 4


def stacked(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return {
        "body.w": torch.randn(E, 3, 2, generator=g).to(dtype),
        "body.b": torch.randn(E, 3, generator=g).to(dtype),
        "head.w": torch.randn(E, 2, generator=g).to(dtype),
    }


OPTS = {
    "adam": lambda: fc.adam(0.1),
    "adamw_amsgrad": lambda: fc.adamw(0.05, weight_decay=0.1, amsgrad=True),
    "adam_maximize": lambda: fc.adam(0.1, maximize=True),
    "adamw_wd_mask": lambda: fc.adamw(
        0.1, weight_decay=0.2, weight_decay_mask=lambda p: {k: v.dim() > 1 for k, v in p.items()}
    ),
    "sgd_nesterov": lambda: fc.sgd(0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "sgd_plain": lambda: fc.sgd(0.3),
    "adam_schedule": lambda: fc.adam(fc.cosine(0.1, 6)),
}


def assert_same(a, b, exact):
    fa, _ = flatten(a)
    fb, _ = flatten(b)
    assert len(fa) == len(fb)
    for x, y in zip(fa, fb):
        assert x.dtype == y.dtype and x.shape == y.shape
        if exact:
            assert torch.equal(x, y), (x - y).abs().max()
        else:
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


def batched(tree):
    """The same values with a member dimension on every leaf (vmap's inputs must be)."""
    if tree is None:
        return None
    out = {}
    for k, v in tree.items():
        v = torch.as_tensor(v, dtype=torch.bool if isinstance(v, bool) else None)
        out[k] = v.expand(E).clone() if v.dim() == 0 else v
    return out


def run_both(opt, steps, masks_at, coeffs, dtype=torch.float32):
    p_v = p_m = stacked(dtype=dtype)
    s_v = vmap(opt.init)(p_v)
    s_m = vmap(opt.init)(p_m)
    g = torch.Generator().manual_seed(1)
    exact = not callable(opt.lr)  # a schedule's float64 value is rounded earlier (documented)
    for t in range(steps):
        grads = {k: torch.randn(v.shape, generator=g).to(dtype) for k, v in p_v.items()}
        m = masks_at(t)
        p_v, s_v = vmap(opt.update, in_dims=(0, 0, 0, 0, None if coeffs is None else 0))(
            p_v, grads, s_v, batched(m), batched(coeffs)
        )
        # the same coefficient tensors on both sides (a Python float coefficient is
        # arithmetic on a weak scalar, a tensor one on a float32 value: not the same bits)
        p_m, s_m = opt.update_members(p_m, grads, s_m, m, batched(coeffs))
        assert_same(p_m, p_v, exact)
        assert_same(s_m, s_v, exact)
    return p_m, s_m


@pytest.mark.parametrize("name", sorted(OPTS))
def test_equals_vmap_update_with_per_member_masks_and_coefficients(name):
    def masks_at(t):  # member 1 frozen throughout, member 3 unfrozen at step 2
        return {
            "body.w": torch.tensor([True, False, True, t >= 2]),
            "body.b": torch.tensor([True] * E),  # the same for every member
            "head.w": True,
        }

    coeffs = {
        "body.w": torch.tensor([1.0, 0.5, 0.0, 2.0]),
        "body.b": 0.3,
        "head.w": torch.tensor(1.0),
    }
    run_both(OPTS[name](), 5, masks_at, coeffs)


def test_half_precision_leaves_match_vmap():
    masks = {"body.w": torch.tensor([True, False, True, True]), "body.b": True, "head.w": True}
    p, _ = run_both(fc.adam(1e-2), 3, lambda t: masks, None, dtype=torch.bfloat16)
    assert all(v.dtype == torch.bfloat16 for v in p.values())


def test_frozen_members_bit_identical_and_inputs_untouched():
    opt = fc.adam(0.1)
    p = stacked()
    snap = {k: v.clone() for k, v in p.items()}
    s = vmap(opt.init)(p)
    s_snap = [x.clone() for x in flatten(s)[0]]
    grads = {k: torch.ones_like(v) for k, v in p.items()}
    m = {k: torch.tensor([True, False, False, True]) for k in p}
    new, s2 = opt.update_members(p, grads, s, m)
    for k in p:
        assert torch.equal(p[k], snap[k])  # inputs never mutated
        assert torch.equal(new[k][1:3], p[k][1:3])
        assert not torch.equal(new[k][0], p[k][0])
        assert torch.equal(s2["count"][k], torch.tensor([1.0, 0.0, 0.0, 1.0]))
        assert torch.equal(s2["exp_avg"][k][1:3], s["exp_avg"][k][1:3])
    assert all(torch.equal(a, b) for a, b in zip(flatten(s)[0], s_snap))


def test_a_leaf_frozen_in_every_member_comes_back_as_the_same_tensors():
    opt = fc.sgd(0.1, momentum=0.9)
    p = stacked()
    s = vmap(opt.init)(p)
    m = {"body.w": torch.zeros(E, dtype=torch.bool), "body.b": True, "head.w": False}
    new, s2 = opt.update_members(p, {k: torch.ones_like(v) for k, v in p.items()}, s, m)
    assert new["body.w"] is p["body.w"] and new["head.w"] is p["head.w"]
    assert s2["momentum_buffer"]["body.w"] is s["momentum_buffer"]["body.w"]


def test_sweep_of_a_non_elementwise_rule_still_runs_under_vmap():
    opt = fc.nadam(0.1)  # mu_product is a 0-d buffer per leaf: not elementwise
    p = stacked()
    with pytest.raises(ValueError, match="elementwise.*vmap"):
        opt.update_members(p, p, vmap(opt.init)(p))


@pytest.mark.parametrize(
    "bad, match",
    [
        ("state", r"stacked state.*step"),
        ("leaf", r"'head.w'.*not stacked over 4 members"),
        ("mask", r"mask at 'body.b' has shape \(3,\)"),
        ("coeff", r"coefficient at 'head.w' has shape \(4, 1\)"),
        ("count", r"count at 'head.w' has shape \(\): expected \(4,\)"),
    ],
)
def test_bad_inputs_are_refused_naming_the_path(bad, match):
    opt = fc.adam(0.1)
    p = stacked()
    s = vmap(opt.init)(p)
    grads = {k: torch.ones_like(v) for k, v in p.items()}
    masks, coeffs = None, None
    if bad == "state":
        s = opt.init(p)
    elif bad == "leaf":
        p = dict(p, **{"head.w": torch.zeros(3, 2)})
    elif bad == "mask":
        masks = {k: True for k in p} | {"body.b": torch.ones(3, dtype=torch.bool)}
    elif bad == "coeff":
        coeffs = {k: 1.0 for k in p} | {"head.w": torch.ones(E, 1)}
    else:
        s["count"] = dict(s["count"], **{"head.w": torch.zeros(())})
    snap = {k: v.clone() for k, v in p.items()}
    with pytest.raises(ValueError, match=match):
        opt.update_members(p, grads, s, masks, coeffs)
    assert all(torch.equal(p[k], snap[k]) for k in p)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.lists(st.booleans(), min_size=E, max_size=E), min_size=1, max_size=6),
    st.sampled_from(sorted(OPTS)),
)
def test_random_per_member_mask_sequences_equal_vmap(seq, name):
    def masks_at(t):
        return {
            "body.w": torch.tensor(seq[t]),
            "body.b": torch.tensor(seq[t][::-1]),
            "head.w": True,
        }

    run_both(OPTS[name](), len(seq), masks_at, None)
