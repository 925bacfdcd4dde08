"""Masked global-norm clipping (oracle: torch.nn.utils.clip_grad_norm_) and the NaN/inf guard."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import vmap

import funcurriculum as fc

SHAPES = {"body.a": (5, 3), "body.b": (5,), "mid.w": (4, 5), "head.w": (2, 4), "head.b": (2,)}
MASKS = {"body.a": False, "body.b": False, "mid.w": True, "head.w": True, "head.b": True}
TRAINABLE = [k for k, m in MASKS.items() if m]


def grads_and_params(seed=0, frozen_scale=1e6):
    g = torch.Generator().manual_seed(seed)
    params = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    grads = {
        k: torch.randn(s, generator=g) * (frozen_scale if not MASKS[k] else 1.0)
        for k, s in SHAPES.items()
    }
    return params, grads


def torch_clip(grads, max_norm, keys, norm_type=2.0):
    """Oracle: clip_grad_norm_ over the .grad of leaf tensors for ``keys`` only."""
    ps = []
    for k in keys:
        p = torch.zeros(grads[k].shape, requires_grad=True)
        p.grad = grads[k].clone()
        ps.append(p)
    norm = torch.nn.utils.clip_grad_norm_(ps, max_norm, norm_type=norm_type)
    return {k: p.grad for k, p in zip(keys, ps)}, norm


@pytest.mark.parametrize("max_norm", [0.5, 3.0, 1e3])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_clip_matches_torch_on_trainable_leaves(max_norm, norm_type):
    _, grads = grads_and_params()
    copy = {k: v.clone() for k, v in grads.items()}
    clipped, norm = fc.clip_by_global_norm(grads, max_norm, MASKS, norm_type=norm_type)
    ref, ref_norm = torch_clip(grads, max_norm, TRAINABLE, norm_type)
    assert torch.equal(norm, ref_norm)
    for k in TRAINABLE:
        assert torch.equal(clipped[k], ref[k]), k
    for k in SHAPES:
        if not MASKS[k]:
            assert clipped[k] is grads[k]  # frozen: untouched, same object
        assert torch.equal(grads[k], copy[k])  # pure
    assert torch.equal(fc.global_norm(grads, MASKS, norm_type=norm_type), ref_norm)


def test_frozen_gradient_does_not_inflate_the_norm():
    _, grads = grads_and_params(frozen_scale=1.0)
    _, huge = grads_and_params(frozen_scale=1e8)
    assert torch.equal(fc.global_norm(grads, MASKS), fc.global_norm(huge, MASKS))
    a, _ = fc.clip_by_global_norm(grads, 1.0, MASKS)
    b, _ = fc.clip_by_global_norm(huge, 1.0, MASKS)
    for k in TRAINABLE:
        assert torch.equal(a[k], b[k])
    # without masks every leaf counts (the bug the masks prevent)
    assert fc.global_norm(huge) > 1e6


def test_none_and_partition_parts():
    params, grads = grads_and_params()
    with_none = {k: (v if MASKS[k] else None) for k, v in grads.items()}
    trainable, _ = fc.partition(grads, MASKS)
    ref, ref_norm = torch_clip(grads, 0.5, TRAINABLE)
    for g in (with_none, trainable):
        out, norm = fc.clip_by_global_norm(g, 0.5, MASKS)
        assert list(out) == list(g) and torch.equal(norm, ref_norm)
        for k in TRAINABLE:
            assert torch.equal(out[k], ref[k])
    out, norm = fc.clip_by_global_norm(trainable, 0.5)  # masks=None on a part: all count
    assert torch.equal(norm, ref_norm)
    none_only = {k: None for k in SHAPES}
    out, norm = fc.clip_by_global_norm(none_only, 1.0, MASKS)
    assert float(norm) == 0.0 and out == none_only


def test_clip_under_vmap_per_member():
    E = 4
    _, grads = grads_and_params()
    stacked = {k: torch.stack([v * (i + 1) for i in range(E)]) for k, v in grads.items()}
    max_norm = torch.tensor([0.5, 1.0, 50.0, 1e4])
    clipped, norms = vmap(lambda g, m: fc.clip_by_global_norm(g, m, MASKS))(stacked, max_norm)
    for i in range(E):
        member = {k: v[i] for k, v in stacked.items()}
        ref, ref_norm = torch_clip(member, float(max_norm[i]), TRAINABLE)
        torch.testing.assert_close(norms[i], ref_norm, rtol=1e-6, atol=0)
        for k in TRAINABLE:
            torch.testing.assert_close(clipped[k][i], ref[k], rtol=1e-6, atol=1e-7)
        for k in SHAPES:
            if not MASKS[k]:
                assert torch.equal(clipped[k][i], member[k])


def test_with_clipping_matches_torch_sgd_after_clip():
    params, _ = grads_and_params()
    params = {k: v.double() for k, v in params.items()}
    opt = fc.with_clipping(fc.sgd(0.1, momentum=0.9), max_norm=0.3)
    state = opt.init(params, MASKS)
    torch_params = {k: params[k].clone().requires_grad_(True) for k in TRAINABLE}
    torch_opt = torch.optim.SGD(list(torch_params.values()), lr=0.1, momentum=0.9, foreach=False)
    g = torch.Generator().manual_seed(3)
    for _ in range(4):
        grads = {
            k: torch.randn(v.shape, generator=g, dtype=v.dtype) * (1e6 if not MASKS[k] else 1.0)
            for k, v in params.items()
        }
        params, state = opt.update(params, grads, state, MASKS)
        for k, p in torch_params.items():
            p.grad = grads[k].clone()
        norm = torch.nn.utils.clip_grad_norm_(list(torch_params.values()), 0.3)
        torch_opt.step()
        assert torch.equal(state["grad_norm"], norm.float())
    for k in TRAINABLE:
        torch.testing.assert_close(params[k], torch_params[k].detach(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"max_norm": 0.0}, ValueError, "max_norm"),
        ({"max_norm": -1.0}, ValueError, "max_norm"),
        ({"max_norm": float("nan")}, ValueError, "max_norm"),
        ({"max_norm": "1"}, TypeError, "max_norm"),
        ({"max_norm": 1.0, "norm_type": 0}, ValueError, "norm_type"),
    ],
)
def test_clip_bad_arguments(kwargs, exc, match):
    _, grads = grads_and_params()
    with pytest.raises(exc, match=match):
        fc.clip_by_global_norm(grads, masks=MASKS, **kwargs)
    with pytest.raises(exc, match=match):
        fc.with_clipping(fc.sgd(0.1), **kwargs)


def test_clip_bad_structures_name_paths():
    _, grads = grads_and_params()
    extra = dict(grads, **{"tail.w": torch.ones(1)})
    with pytest.raises(ValueError, match="tail.w"):
        fc.clip_by_global_norm(extra, 1.0, MASKS)
    with pytest.raises(ValueError, match="tail.w"):
        fc.global_norm(extra, MASKS)
    bad = dict(grads, **{"head.b": 3.0})
    with pytest.raises(TypeError, match="head.b"):
        fc.global_norm(bad, MASKS)


# -- the non-finite guard ------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("donate", [False, True])
def test_nonfinite_trainable_grad_skips_the_step(bad, donate):
    params, _ = grads_and_params()
    opt = fc.skip_nonfinite(fc.adam(0.1))
    state = opt.init(params, MASKS)
    grads = {k: torch.ones_like(v) for k, v in params.items()}
    params, state = opt.update(params, grads, state, MASKS)  # one good step first
    snap_p = {k: v.clone() for k, v in params.items()}
    snap_s = {
        k: (v.clone() if isinstance(v, torch.Tensor) else {a: b.clone() for a, b in v.items()})
        for k, v in state.items()
    }
    grads["head.w"] = grads["head.w"].clone()
    grads["head.w"][1, 2] = bad
    new_p, new_s = opt.update(params, grads, state, MASKS, donate=donate)
    assert int(new_s["skipped"]) == 1 and int(state["skipped"]) == 0
    assert int(new_s["step"]) == 1
    for k in SHAPES:
        assert new_p[k] is params[k] and torch.equal(new_p[k], snap_p[k])
    for key, sub in snap_s.items():
        if key == "skipped":
            continue
        if isinstance(sub, torch.Tensor):
            assert torch.equal(new_s[key], sub)
        else:
            for k in sub:
                assert new_s[key][k] is state[key][k] and torch.equal(new_s[key][k], sub[k])


def test_nonfinite_frozen_grad_does_not_skip():
    params, _ = grads_and_params()
    guarded, plain = fc.skip_nonfinite(fc.adam(0.1)), fc.adam(0.1)
    grads = {k: torch.randn_like(v) for k, v in params.items()}
    grads["body.a"] = torch.full_like(grads["body.a"], float("nan"))  # frozen leaf
    p1, s1 = guarded.update(params, grads, guarded.init(params, MASKS), MASKS)
    p2, s2 = plain.update(params, grads, plain.init(params, MASKS), MASKS)
    assert int(s1["skipped"]) == 0 and int(s1["step"]) == 1
    for k in SHAPES:
        assert torch.equal(p1[k], p2[k])
    assert not torch.equal(p1["head.w"], params["head.w"])


def test_all_finite():
    g = {"a": torch.ones(2), "b": None, "c": torch.tensor([1.0, float("nan")])}
    assert not bool(fc.all_finite(g))
    assert bool(fc.all_finite(g, {"a": True, "b": False, "c": False}))
    assert bool(fc.all_finite({"a": None}))


def test_guard_under_vmap_selects_per_member():
    E = 4
    params, _ = grads_and_params()
    stacked = {k: torch.stack([v + i for i in range(E)]) for k, v in params.items()}
    g = torch.Generator().manual_seed(1)
    grads = {k: torch.randn(v.shape, generator=g) for k, v in stacked.items()}
    grads["mid.w"][1, 0, 0] = float("nan")  # member 1: trainable leaf
    grads["body.a"][2, 0, 0] = float("inf")  # member 2: frozen leaf only -> not skipped
    coeffs = torch.tensor([1.0, 0.5, 0.25, 2.0])
    guarded, plain = fc.skip_nonfinite(fc.adam(0.1)), fc.adam(0.1)
    gs = vmap(lambda p: guarded.init(p, MASKS))(stacked)
    ps = vmap(lambda p: plain.init(p, MASKS))(stacked)

    def upd(opt):
        return lambda p, g, s, c: opt.update(p, g, s, MASKS, {k: c for k in SHAPES})

    new_g, gs2 = vmap(upd(guarded))(stacked, grads, gs, coeffs)
    new_p, ps2 = vmap(upd(plain))(stacked, grads, ps, coeffs)
    assert gs2["skipped"].tolist() == [0, 1, 0, 0]
    assert gs2["step"].tolist() == [1, 0, 1, 1]
    for k in SHAPES:
        for i in range(E):
            if i == 1:
                assert torch.equal(new_g[k][i], stacked[k][i]), k
            else:
                assert torch.equal(new_g[k][i], new_p[k][i]), k
    for field in ("count", "exp_avg", "exp_avg_sq"):
        for k in SHAPES:
            assert torch.equal(gs2[field][k][1], gs[field][k][1])
            assert torch.equal(gs2[field][k][0], ps2[field][k][0])


def test_guard_transition_and_composition():
    params, _ = grads_and_params()
    opt = fc.skip_nonfinite(fc.with_clipping(fc.sgd(0.1, momentum=0.9), 1.0))
    state = opt.init(params, MASKS)
    assert set(state) == {"step", "count", "momentum_buffer", "grad_norm", "skipped"}
    grads = {k: torch.full_like(v, float("nan")) for k, v in params.items()}
    _, state = opt.update(params, grads, state, MASKS)
    new_masks = dict(MASKS, **{"body.b": True})
    state = opt.transition(state, params, MASKS, new_masks)
    assert int(state["skipped"]) == 1
    assert state["momentum_buffer"]["body.b"].shape == params["body.b"].shape
    grads = {k: torch.ones_like(v) for k, v in params.items()}
    new, state = opt.update(params, grads, state, new_masks)
    assert int(state["skipped"]) == 1 and int(state["step"]) == 1
    assert float(state["grad_norm"]) == pytest.approx(
        math.sqrt(sum(params[k].numel() for k in SHAPES if new_masks[k]))
    )
    with pytest.raises(ValueError, match="skipped"):
        opt.update(params, grads, {k: v for k, v in state.items() if k != "skipped"}, new_masks)
