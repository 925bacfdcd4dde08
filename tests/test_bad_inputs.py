"""The bad-input catalogue: every mistake raises a clear error naming the path / pattern,
and leaves its inputs unchanged."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import funcurriculum as fc

SHAPES = {
    "backbone.conv1.weight": (4, 3),
    "backbone.conv1.bias": (4,),
    "backbone.layer4.weight": (3, 4),
    "head.weight": (2, 3),
    "head.bias": (2,),
}


def params():
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}


def grads_for(p):
    return {k: torch.ones_like(v) for k, v in p.items()}


def snapshot(tree):
    return copy.deepcopy(tree)


def assert_same(a, b):
    """Same structure and bitwise-equal tensors."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b) and a.dtype == b.dtype and a.shape == b.shape
    else:
        assert a == b


@pytest.fixture
def setup():
    p = params()
    cur = fc.Curriculum(p).freeze("backbone")
    opt = fc.adam(0.1)
    state = opt.init(p, cur.masks)
    p, state = opt.update(p, grads_for(p), state, cur.masks, cur.coeffs)
    return p, cur, opt, state


# -- patterns ------------------------------------------------------------------------------
def test_unknown_pattern_suggests_close_matches():
    p = params()
    cur = fc.Curriculum(p)
    for call in (
        lambda: fc.select_layers(p, "backbone.layer3"),
        lambda: cur.freeze("backbone.layer3"),
        lambda: cur.unfreeze(["head", "backbone.layer3"]),
        lambda: cur.set_lr_coefficient(0.5, "backbone.layer3"),
    ):
        with pytest.raises(ValueError, match=r"'backbone\.layer3'.*did you mean.*backbone\.layer4"):
            call()
    assert cur == fc.Curriculum(p) and cur.frozen == frozenset()


def test_invalid_regex_is_named():
    cur = fc.Curriculum(params())
    with pytest.raises(ValueError, match=r"'backbone\.\(conv' is not a valid regular expression"):
        cur.freeze("backbone.(conv")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        fc.select_layers(params(), ["head", "[a-"])


@pytest.mark.parametrize("patterns", [[], ()])
def test_empty_pattern_list(patterns):
    cur = fc.Curriculum(params())
    with pytest.raises(ValueError, match="patterns is empty"):
        cur.freeze(patterns)
    with pytest.raises(ValueError, match="patterns is empty"):
        fc.select_layers(params(), patterns)


@pytest.mark.parametrize("patterns", [None, 3, [b"head"], {"head"}])
def test_non_string_patterns(patterns):
    with pytest.raises(TypeError, match="pattern"):
        fc.Curriculum(params()).freeze(patterns)


# -- coefficients ----------------------------------------------------------------------------
@pytest.mark.parametrize("c", [-0.1, math.nan, math.inf, -math.inf])
def test_bad_coefficient_in_curriculum(c):
    cur = fc.Curriculum(params()).set_lr_coefficient(0.5, "head")
    with pytest.raises(ValueError, match="coefficient must be finite and >= 0"):
        cur.set_lr_coefficient(c, "backbone")
    assert cur.lr_coefficients == {"head": 0.5}


@pytest.mark.parametrize("c", [-0.1, math.nan, math.inf])
def test_bad_coefficient_in_update(setup, c):
    p, cur, opt, state = setup
    before_p, before_s = snapshot(p), snapshot(state)
    coeffs = dict(cur.coeffs, **{"head.bias": c})
    with pytest.raises(ValueError, match=r"coefficient at 'head\.bias' must be finite and >= 0"):
        opt.update(p, grads_for(p), state, cur.masks, coeffs)
    assert_same(p, before_p)
    assert_same(state, before_s)


def test_non_number_coefficient(setup):
    p, cur, opt, state = setup
    with pytest.raises(TypeError, match="coefficient"):
        fc.Curriculum(p).set_lr_coefficient("0.1", "head")
    with pytest.raises(TypeError, match=r"coefficient at 'head\.weight'"):
        opt.update(p, grads_for(p), state, cur.masks, dict(cur.coeffs, **{"head.weight": "1"}))


# -- structures ----------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["masks", "coeffs", "grads"])
def test_structure_mismatch_names_missing_and_extra_paths(setup, which):
    p, cur, opt, state = setup
    before_p, before_s = snapshot(p), snapshot(state)
    trees = {"masks": dict(cur.masks), "coeffs": dict(cur.coeffs), "grads": grads_for(p)}
    bad = trees[which]
    del bad["backbone.conv1.bias"]
    bad["head.extra"] = bad["head.bias"]
    with pytest.raises(ValueError, match=which) as err:
        opt.update(p, trees["grads"], state, trees["masks"], trees["coeffs"])
    msg = str(err.value)
    assert "head.extra" in msg
    if which != "grads":  # grads may omit frozen leaves (a partition part)
        assert "backbone.conv1.bias" in msg
    assert_same(p, before_p)
    assert_same(state, before_s)


def test_grads_missing_a_trainable_leaf(setup):
    p, cur, opt, state = setup
    grads, _ = fc.partition(grads_for(p), cur.masks)
    del grads["head.bias"]
    with pytest.raises(ValueError, match=r"'head\.bias'"):
        opt.update(p, grads, state, cur.masks)
    grads = dict(grads_for(p), **{"head.bias": None})
    with pytest.raises(ValueError, match=r"no gradient for trainable leaf 'head\.bias'"):
        opt.update(p, grads, state, cur.masks)


def test_state_structure_mismatch(setup):
    p, cur, opt, state = setup
    bad = dict(state, exp_avg={k: v for k, v in state["exp_avg"].items() if k != "head.weight"})
    with pytest.raises(ValueError, match=r"exp_avg.*head\.weight"):
        opt.update(p, grads_for(p), bad, cur.masks)
    with pytest.raises(ValueError, match="state lacks"):
        opt.update(p, grads_for(p), {"step": state["step"]}, cur.masks)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda g: g.reshape(-1), r"grad at 'head\.weight' has shape \(6,\), param has \(2, 3\)"),
        (lambda g: g.double(), r"grad at 'head\.weight' has dtype torch\.float64"),
        (lambda g: torch.empty(g.shape, device="meta"), r"grad at 'head\.weight' is on meta"),
    ],
    ids=["shape", "dtype", "device"],
)
def test_grad_shape_dtype_device_mismatch(setup, change, match):
    p, cur, opt, state = setup
    before_p, before_s = snapshot(p), snapshot(state)
    grads = grads_for(p)
    grads["head.weight"] = change(grads["head.weight"])
    with pytest.raises(ValueError, match=match):
        opt.update(p, grads, state, cur.masks, cur.coeffs)
    with pytest.raises(ValueError, match=match):
        opt.update(p, grads, state, cur.masks, cur.coeffs, donate=True)
    assert_same(p, before_p)
    assert_same(state, before_s)


def test_bad_grad_at_frozen_leaf_is_ignored(setup):
    p, cur, opt, state = setup
    grads = grads_for(p)
    grads["backbone.conv1.weight"] = torch.ones(7)  # frozen: never read
    new, _ = opt.update(p, grads, state, cur.masks)
    assert new["backbone.conv1.weight"] is p["backbone.conv1.weight"]


def test_non_tensor_leaves():
    p = params()
    bad = dict(p, **{"head.bias": [0.0, 0.0]})
    with pytest.raises(TypeError, match=r"'head\.bias\.0' is a float"):
        fc.Curriculum(bad)
    with pytest.raises(TypeError, match=r"'head\.bias\.0'"):
        fc.adam(0.1).init(bad)
    opt = fc.sgd(0.1)
    state = opt.init(p)
    grads = dict(grads_for(p), **{"head.weight": 1.0})
    with pytest.raises(TypeError, match=r"grad at 'head\.weight' is a float"):
        opt.update(p, grads, state)
    with pytest.raises(TypeError, match=r"mask at 'head\.bias' must be a bool"):
        opt.update(p, grads_for(p), state, dict.fromkeys(p, True) | {"head.bias": 1})
    with pytest.raises(TypeError, match="cannot checkpoint a object at x"):
        fc.save("/nonexistent-dir/never.pt", {"x": object()})


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0])
def test_schedule_returning_bad_lr(setup, value):
    p, cur, _, state = setup
    opt = fc.adam(lambda step: 0.1 if step < 1 else value)
    before_p, before_s = snapshot(p), snapshot(state)
    with pytest.raises(
        ValueError, match=r"lr schedule returned .* at step 1: must be finite and >= 0"
    ):
        opt.update(p, grads_for(p), state, cur.masks)
    tensor_opt = fc.adam(lambda step: torch.tensor(value, dtype=torch.float64))
    with pytest.raises(ValueError, match="lr schedule returned"):
        tensor_opt.update(p, grads_for(p), state, cur.masks)
    assert_same(p, before_p)
    assert_same(state, before_s)


def test_transition_with_wrong_mask_structure(setup):
    p, cur, opt, state = setup
    before_s = snapshot(state)
    new = dict(fc.Curriculum(p).masks)
    del new["head.bias"]
    with pytest.raises(ValueError, match=r"new_masks.*missing paths \['head\.bias'\]"):
        opt.transition(state, p, cur.masks, new)
    old = dict(cur.masks, **{"tail": True})
    with pytest.raises(ValueError, match=r"old_masks.*unexpected paths \['tail'\]"):
        opt.transition(state, p, old, fc.Curriculum(p).masks)
    with pytest.raises(TypeError, match=r"mask at 'head\.bias'"):
        opt.transition(state, p, cur.masks, dict(cur.masks, **{"head.bias": "yes"}))
    assert_same(state, before_s)


def test_update_with_stale_state_after_unfreeze(setup):
    p, cur, opt, state = setup
    with pytest.raises(
        ValueError,
        match=r"'backbone\.conv1\.weight' is trainable but has no optimizer state.*transition",
    ):
        opt.update(p, grads_for(p), state, fc.Curriculum(p).masks)


def test_curriculum_params_mismatch_in_checkpoint_load(tmp_path):
    p = params()
    f = fc.save_training_state(tmp_path / "s.pt", params=p, curriculum=fc.Curriculum(p))
    small = {k: v for k, v in p.items() if k.startswith("head")}
    with pytest.raises(ValueError, match=r"unexpected paths \['backbone\.conv1\.weight'"):
        fc.load_training_state(f, like_params=small)
