"""Hypothesis properties of chains and multi_optimizers over random trees and phases.

Reuses the strategies of tests/test_properties.py: frozen leaves keep bit-identical
params and state, inputs are never mutated (updates and transitions), donated runs equal
pure runs bit for bit, and grads given in any form (full, None / NaN at frozen leaves, a
partition part) give the same result.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from test_properties import (  # noqa: E402
    SETTINGS,
    assert_untouched,
    bit_equal,
    grads_in_mode,
    leaf_paths,
    leaves,
    like,
    params_st,
    phases_st,
    random_grads,
    run_phases,
    snapshot,
)

import funcurriculum as fc  # noqa: E402


def alternate(params):
    """Labels: every other leaf "a", the rest "b" (a callable, as users may pass)."""
    return like(params, ["a" if i % 2 else "b" for i in range(len(leaves(params)))])


COMPOSED = [
    lambda: fc.chain(fc.nonfinite_guard(), fc.clip_grad_norm(0.5), fc.adam(0.01)),
    lambda: fc.chain(fc.clip_grad_value(0.1), fc.sgd(0.1, momentum=0.9, dampening=0.1)),
    lambda: fc.multi_optimizer(
        {
            "a": fc.with_clipping(fc.sgd(0.05, momentum=0.9, nesterov=True), 1.0),
            "b": fc.adamw(fc.cosine(0.01, 10)),
        },
        alternate,
    ),
    lambda: fc.skip_nonfinite(
        fc.with_clipping(fc.multi_optimizer({"a": fc.adam(0.01), "b": fc.sgd(0.1)}, alternate), 0.3)
    ),
]
composed_st = st.sampled_from(range(len(COMPOSED))).map(lambda i: COMPOSED[i]())


def per_leaf_trees(state, params):
    """Every sub-tree of ``state`` shaped like ``params`` (moments, counts of each part)."""
    want = leaf_paths(params)
    out = []

    def walk(node):
        if isinstance(node, dict):
            if leaf_paths(node) == want and len(leaves(node)) == len(want) and node:
                out.append(node)
                return
            for v in node.values():
                walk(v)

    if isinstance(params, dict):
        walk(state)
    return out


def leaf_state(state, params, i):
    return [leaves(t)[i] for t in per_leaf_trees(state, params)]


def same(a, b):
    return len(a) == len(b) and all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.slow
@SETTINGS
@given(params=params_st, opt=composed_st, data=st.data())
def test_composed_phase_sequences_keep_invariants(params, opt, data):
    n = len(leaves(params))
    phases = data.draw(phases_st(n))
    seed = data.draw(st.integers(0, 2**16))
    state = opt.init(params, like(params, phases[0][0]))
    assert per_leaf_trees(state, params)  # the helper sees the per-leaf parts
    prev = None
    for phase, (mask_list, coeff_list, nsteps) in enumerate(phases):
        masks, coeffs = like(params, mask_list), like(params, coeff_list)
        if prev is not None:
            snaps = [snapshot(state), snapshot(params)]
            new_state = opt.transition(state, params, prev, masks)
            assert_untouched(state, snaps[0], "transition: state")
            assert_untouched(params, snaps[1], "transition: params")
            for i, (was, now) in enumerate(zip(leaves(prev), mask_list)):
                if was == now:
                    assert same(leaf_state(new_state, params, i), leaf_state(state, params, i))
            state = new_state
        for s in range(nsteps):
            mode = data.draw(
                st.sampled_from(["full", "none_at_frozen", "partition", "nan_at_frozen"])
            )
            grads = grads_in_mode(random_grads(params, seed + 7 * phase + s), masks, mode)
            snaps = [snapshot(params), snapshot(grads), snapshot(state)]
            new_params, new_state = opt.update(params, grads, state, masks, coeffs)
            assert_untouched(params, snaps[0], "update: params")
            assert_untouched(grads, snaps[1], "update: grads")
            assert_untouched(state, snaps[2], "update: state")
            assert int(new_state.get("skipped", 0)) == int(state.get("skipped", 0))
            for i, (p, q, m, c) in enumerate(
                zip(leaves(params), leaves(new_params), mask_list, coeff_list)
            ):
                assert q.dtype == p.dtype and q.shape == p.shape
                if not m:
                    assert q is p, f"frozen leaf {i} replaced"
                    assert same(leaf_state(new_state, params, i), leaf_state(state, params, i))
                else:
                    assert torch.isfinite(q).all()
                    if float(c) == 0.0:
                        assert torch.equal(q, p)
            params, state = new_params, new_state
        prev = masks


@pytest.mark.slow
@SETTINGS
@given(params=params_st, opt=composed_st, data=st.data())
def test_composed_donate_equals_pure(params, opt, data):
    n = len(leaves(params))
    phases = data.draw(phases_st(n))
    seed = data.draw(st.integers(0, 2**16))
    runs = {d: run_phases(opt, params, phases, seed, d) for d in (False, True)}
    (p0, s0), (p1, s1) = runs[False], runs[True]
    assert all(bit_equal(a, b) for a, b in zip(leaves(p0), leaves(p1)))
    l0, l1 = leaves(s0), leaves(s1)
    assert len(l0) == len(l1) and all(bit_equal(a, b) for a, b in zip(l0, l1))


@pytest.mark.slow
@SETTINGS
@given(params=params_st, opt=composed_st, data=st.data())
def test_composed_grads_in_any_form_give_the_same_result(params, opt, data):
    n = len(leaves(params))
    masks = like(params, data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    results = []
    for mode in ["full", "none_at_frozen", "partition", "nan_at_frozen"]:
        p, s = params, opt.init(params, masks)
        for step in range(2):
            p, s = opt.update(
                p, grads_in_mode(random_grads(params, 50 + step), masks, mode), s, masks
            )
        results.append((leaves(p), leaves(s)))
    for p, s in results[1:]:
        assert all(bit_equal(a, b) for a, b in zip(p, results[0][0]))
        assert all(bit_equal(a, b) for a, b in zip(s, results[0][1]))
