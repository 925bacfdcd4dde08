"""Property tests (hypothesis) over random nested param trees, masks, coefficients and phases."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import funcurriculum as fc

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- tiny tree helpers of our own (dicts keep insertion order; None is a leaf) ---------------
def leaves(t):
    if isinstance(t, dict):
        return [x for v in t.values() for x in leaves(v)]
    if isinstance(t, (list, tuple)):
        return [x for v in t for x in leaves(v)]
    return [t]


def leaf_paths(t, prefix=()):
    if isinstance(t, dict):
        return [p for k, v in t.items() for p in leaf_paths(v, prefix + (str(k),))]
    if isinstance(t, (list, tuple)):
        return [p for i, v in enumerate(t) for p in leaf_paths(v, prefix + (str(i),))]
    return [".".join(prefix)]


def rebuild(t, it):
    if isinstance(t, dict):
        return {k: rebuild(v, it) for k, v in t.items()}
    if isinstance(t, list):
        return [rebuild(v, it) for v in t]
    if isinstance(t, tuple):
        return tuple(rebuild(v, it) for v in t)
    return next(it)


def like(t, values):
    values = list(values)
    assert len(values) == len(leaves(t))
    return rebuild(t, iter(values))


_BITS = {
    torch.float32: torch.int32,
    torch.float64: torch.int64,
    torch.int64: torch.int64,
    torch.bool: torch.bool,
}


def bit_equal(a, b):
    """Same dtype, shape and bits (so NaN == NaN)."""
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.view(_BITS[a.dtype]), b.view(_BITS[b.dtype]))
    )


def snapshot(tree):
    return leaf_paths(tree), [
        (x, x.clone(), x._version) if torch.is_tensor(x) else (x, x, None) for x in leaves(tree)
    ]


def assert_untouched(tree, snap, what):
    paths, entries = snap
    assert leaf_paths(tree) == paths, f"{what}: structure changed"
    for i, (x, (obj, copy, version)) in enumerate(zip(leaves(tree), entries)):
        assert x is obj, f"{what}: leaf {paths[i]} replaced"
        if torch.is_tensor(x):
            assert bit_equal(x, copy), f"{what}: leaf {paths[i]} changed"
            assert x._version == version, f"{what}: leaf {paths[i]} written in place"


def per_leaf_state(state, n):
    """[{key: tensor}] per leaf for every state key but "step" (each a params-shaped tree)."""
    out = [{} for _ in range(n)]
    for key, sub in state.items():
        if key == "step":
            continue
        ls = leaves(sub)
        assert len(ls) == n, key
        for i, x in enumerate(ls):
            out[i][key] = x
    return out


def same_leaf_state(a, b):
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a
    )


def assert_trees_equal(a, b):
    assert leaf_paths(a) == leaf_paths(b)
    for x, y in zip(leaves(a), leaves(b)):
        assert x.dtype == y.dtype and torch.equal(x, y)


# -- strategies -----------------------------------------------------------------------------
def make_tensor(shape, dtype, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


tensor_st = st.builds(
    make_tensor,
    st.sampled_from([(), (3,), (2, 2)]),
    st.sampled_from([torch.float32, torch.float64]),
    st.integers(0, 2**16),
)
KEY = st.sampled_from(list("abcdefgh"))


@st.composite
def subtree(draw, n, depth, root=False):
    if n == 1 and not root and (depth >= 3 or draw(st.booleans())):
        return draw(tensor_st)
    k = n if depth >= 3 else draw(st.integers(1, min(n, 3)))
    cuts = (
        sorted(draw(st.lists(st.integers(1, n - 1), min_size=k - 1, max_size=k - 1, unique=True)))
        if k > 1
        else []
    )
    sizes = [b - a for a, b in zip([0] + cuts, cuts + [n])]
    children = [draw(subtree(s, depth + 1)) for s in sizes]
    if root or draw(st.booleans()):
        keys = draw(st.lists(KEY, min_size=k, max_size=k, unique=True))
        return dict(zip(keys, children))
    return children


params_st = st.integers(1, 6).flatmap(lambda n: subtree(n, 0, root=True))

COEFF_VALUES = [0.0, 0.25, 1.0, 2.0]
coeff_st = st.one_of(
    st.sampled_from(COEFF_VALUES),
    st.builds(
        torch.tensor,
        st.sampled_from(COEFF_VALUES),
        dtype=st.sampled_from([torch.float32, torch.float64]),
    ),
)

OPTIMIZERS = [
    lambda: fc.sgd(0.1),
    lambda: fc.sgd(0.1, momentum=0.9, dampening=0.1, weight_decay=0.01),
    lambda: fc.sgd(0.05, momentum=0.9, nesterov=True),
    lambda: fc.adam(0.01, weight_decay=0.1),
    lambda: fc.adamw(fc.cosine(0.01, 10)),
]
opt_st = st.sampled_from(range(len(OPTIMIZERS))).map(lambda i: OPTIMIZERS[i]())


def random_grads(params, seed):
    g = torch.Generator().manual_seed(seed)
    return like(params, [torch.randn(x.shape, generator=g, dtype=x.dtype) for x in leaves(params)])


def grads_in_mode(full, masks, mode):
    if mode == "full":
        return full
    if mode == "nan_at_frozen":  # frozen leaves' grads are never read
        return like(
            full,
            [
                g if m else torch.full_like(g, float("nan"))
                for g, m in zip(leaves(full), leaves(masks))
            ],
        )
    if mode == "none_at_frozen":
        return like(full, [g if m else None for g, m in zip(leaves(full), leaves(masks))])
    return fc.partition(full, masks)[0]


def run_phases(opt, params, phases, seed, donate):
    """Run ``opt`` from ``params`` (cloned) through ``phases`` (masks, coefficients, step
    counts; a transition at each change) on seeded grads; frozen leaves must keep their
    very tensors at every update. Returns ``(params, state)``."""
    p = like(params, [x.clone() for x in leaves(params)])
    state = opt.init(p, like(params, phases[0][0]))
    prev = None
    for phase, (mask_list, coeff_list, nsteps) in enumerate(phases):
        masks, coeffs = like(params, mask_list), like(params, coeff_list)
        if prev is not None:
            state = opt.transition(state, p, prev, masks)
        for s in range(nsteps):
            grads = random_grads(params, seed + 7 * phase + s)
            frozen = [x for x, m in zip(leaves(p), mask_list) if not m]
            p, state = opt.update(p, grads, state, masks, coeffs, donate=donate)
            kept = [x for x, m in zip(leaves(p), mask_list) if not m]
            assert all(a is b for a, b in zip(frozen, kept))
        prev = masks
    return p, state


def phases_st(n):
    """1-3 phases of (masks, coefficients, steps) for a tree of ``n`` leaves."""
    bools = st.lists(st.booleans(), min_size=n, max_size=n)
    coeffs = st.lists(coeff_st, min_size=n, max_size=n)
    return st.lists(st.tuples(bools, coeffs, st.integers(1, 2)), min_size=1, max_size=3)


# -- the properties -------------------------------------------------------------------------
@SETTINGS
@given(params=params_st, opt=opt_st, data=st.data())
def test_phase_sequences_keep_invariants(params, opt, data):
    n = len(leaves(params))
    phases = data.draw(phases_st(n))
    seed = data.draw(st.integers(0, 2**16))
    masks0 = like(params, phases[0][0])
    state = opt.init(params, masks0)
    prev = None
    for phase, (mask_list, coeff_list, nsteps) in enumerate(phases):
        masks, coeffs = like(params, mask_list), like(params, coeff_list)
        if prev is not None:
            before = per_leaf_state(state, n)
            snaps = [snapshot(state), snapshot(params)]
            new_state = opt.transition(state, params, prev, masks)
            assert_untouched(state, snaps[0], "transition: state")
            assert_untouched(params, snaps[1], "transition: params")
            assert torch.equal(new_state["step"], state["step"])
            after = per_leaf_state(new_state, n)
            for i, (was, now, p) in enumerate(zip(leaves(prev), mask_list, leaves(params))):
                if now and not was:  # just activated: fresh state
                    assert float(after[i]["count"]) == 0.0
                    for key, x in after[i].items():
                        if key != "count":
                            assert x.shape == p.shape and not x.any(), key
                else:
                    assert same_leaf_state(after[i], before[i]), f"leaf {i} state changed"
            state = new_state
        for s in range(nsteps):
            mode = data.draw(
                st.sampled_from(["full", "none_at_frozen", "partition", "nan_at_frozen"])
            )
            grads = grads_in_mode(random_grads(params, seed + 7 * phase + s), masks, mode)
            snaps = [snapshot(params), snapshot(grads), snapshot(state)]
            old_leaf_state = per_leaf_state(state, n)
            new_params, new_state = opt.update(params, grads, state, masks, coeffs)
            assert_untouched(params, snaps[0], "update: params")
            assert_untouched(grads, snaps[1], "update: grads")
            assert_untouched(state, snaps[2], "update: state")
            assert leaf_paths(new_params) == leaf_paths(params)
            assert int(new_state["step"]) == int(state["step"]) + 1
            new_leaf_state = per_leaf_state(new_state, n)
            for i, (p, q, m, c) in enumerate(
                zip(leaves(params), leaves(new_params), mask_list, coeff_list)
            ):
                assert q.dtype == p.dtype and q.shape == p.shape
                if not m:  # frozen: bit-identical param and state
                    assert torch.equal(q, p), f"frozen leaf {i} moved"
                    assert same_leaf_state(new_leaf_state[i], old_leaf_state[i]), (
                        f"frozen leaf {i} state changed"
                    )
                    continue
                assert float(new_leaf_state[i]["count"]) == float(old_leaf_state[i]["count"]) + 1
                assert torch.isfinite(q).all()
                if float(c) == 0.0:  # coefficient 0: param unchanged, state advances
                    assert torch.equal(q, p), f"leaf {i} with coefficient 0 moved"
            params, state = new_params, new_state
        prev = masks


@SETTINGS
@given(params=params_st, opt=opt_st, data=st.data())
def test_none_masks_and_coeffs_mean_all_trainable_and_one(params, opt, data):
    n = len(leaves(params))
    all_true, all_one = like(params, [True] * n), like(params, [1.0] * n)
    assert_trees_equal(opt.init(params), opt.init(params, all_true))
    pa, sa, pb, sb = params, opt.init(params), params, opt.init(params, all_true)
    for _ in range(2):
        g = random_grads(params, data.draw(st.integers(0, 2**16)))
        pa, sa = opt.update(pa, g, sa, None, None)
        pb, sb = opt.update(pb, g, sb, all_true, all_one)
        assert_trees_equal(pa, pb)
        assert_trees_equal(sa, sb)


@SETTINGS
@given(params=params_st, opt=opt_st, data=st.data())
def test_grads_none_at_frozen_or_partition_part_equal_full_grads(params, opt, data):
    n = len(leaves(params))
    masks = like(params, data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    coeffs = like(params, data.draw(st.lists(coeff_st, min_size=n, max_size=n)))
    results = []
    for mode in ["full", "none_at_frozen", "partition", "nan_at_frozen"]:
        p, s = params, opt.init(params, masks)
        for step in range(2):
            g = grads_in_mode(random_grads(params, 100 + step), masks, mode)
            p, s = opt.update(p, g, s, masks, coeffs)
        results.append((p, s))
    for p, s in results[1:]:
        assert_trees_equal(p, results[0][0])
        assert_trees_equal(s, results[0][1])


@SETTINGS
@given(params=params_st, data=st.data())
def test_partition_combine_round_trip(params, data):
    n = len(leaves(params))
    mask_list = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    masks = like(params, mask_list)
    trainable, frozen = fc.partition(params, masks)
    want_t = sorted(id(x) for x, m in zip(leaves(params), mask_list) if m)
    want_f = sorted(id(x) for x, m in zip(leaves(params), mask_list) if not m)
    assert sorted(id(x) for x in leaves(trainable)) == want_t
    assert sorted(id(x) for x in leaves(frozen)) == want_f
    out = fc.combine(trainable, frozen, like=params)
    assert leaf_paths(out) == leaf_paths(params)
    assert all(a is b for a, b in zip(leaves(out), leaves(params)))


@SETTINGS
@given(params=params_st)
def test_paths_and_layer_names_follow_insertion_order(params):
    paths = leaf_paths(params)
    assert fc.paths(params) == paths
    expected: list[str] = []
    for p in paths:
        parts = p.split(".")
        for i in range(1, len(parts)):
            q = ".".join(parts[:i])
            if q not in expected:
                expected.append(q)
    names = fc.layer_names(params)
    assert names == expected
    for i, name in enumerate(names):  # parent before child
        parts = name.split(".")
        for j in range(1, len(parts)):
            assert names.index(".".join(parts[:j])) < i


def test_paths_not_sorted():
    t = torch.zeros(1)
    tree = {"b": {"y": t, "x": t}, "a": [t, {"d": t, "c": t}]}
    assert fc.paths(tree) == ["b.y", "b.x", "a.0", "a.1.d", "a.1.c"]
    assert fc.layer_names(tree) == ["b", "a", "a.1"]
    flat = {
        "head.w": t,
        "backbone.conv1.w": t,
        "backbone.conv1.b": t,
        "backbone.bn.w": t,
        "head.b": t,
    }
    assert fc.paths(flat) == list(flat)
    assert fc.layer_names(flat) == ["head", "backbone", "backbone.conv1", "backbone.bn"]


@SETTINGS
@given(params=params_st, opt=opt_st, data=st.data())
def test_donated_chain_equals_pure_chain(params, opt, data):
    """Over random phases (masks, coefficients, transitions), updating with ``donate=True``
    gives the pure chain's params, moments, counts and step bit for bit (the in-place
    count increments take one call, an index_add or one call per tensor depending on
    where the counts came from), and frozen leaves keep their very tensors."""
    n = len(leaves(params))
    phases = data.draw(phases_st(n))
    seed = data.draw(st.integers(0, 2**16))
    chains = {d: run_phases(opt, params, phases, seed, d) for d in (False, True)}
    (p0, s0), (p1, s1) = chains[False], chains[True]
    assert all(bit_equal(a, b) for a, b in zip(leaves(p0), leaves(p1)))
    assert set(s0) == set(s1) and int(s0["step"]) == int(s1["step"])
    for key in s0:
        if key != "step":
            assert all(bit_equal(a, b) for a, b in zip(leaves(s0[key]), leaves(s1[key]))), key
