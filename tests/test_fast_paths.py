"""Every fast update path against the portable reference path and against torch.optim.

Fast paths (``funcurriculum.engines``): the pure CPU "wave" engine (fresh buffers filled
slice by slice, then torch's in-place fused kernel on them), the clone-then-fused engine
(other devices), and donation (torch's in-place kernel on the caller's buffers). The
reference path is the per-leaf pure math used under ``torch.func`` transforms, forced
here with ``fc.force_reference``.
"""

from __future__ import annotations

import pytest
import torch

import funcurriculum as fc
from funcurriculum.engines import reference as reference_engine

SHAPES = {
    "emb.weight": (13, 7),  # 91 elements: several waves of 16, last one short
    "block.0.weight": (5, 6),
    "block.0.bias": (5,),
    "block.1.weight": (40,),
    "head.weight": (3, 9),
    "head.bias": (3,),
}
NAMES = list(SHAPES)

OPTS = {
    "sgd": (fc.sgd, {}),
    "sgd-mom": (fc.sgd, {"momentum": 0.9}),
    "sgd-damp": (fc.sgd, {"momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01}),
    "sgd-nesterov": (fc.sgd, {"momentum": 0.8, "nesterov": True}),
    "adam": (fc.adam, {}),
    "adam-wd": (fc.adam, {"betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 0.1}),
    "adamw": (fc.adamw, {"weight_decay": 0.05}),
}
TORCH = {fc.sgd: torch.optim.SGD, fc.adam: torch.optim.Adam, fc.adamw: torch.optim.AdamW}
LR = {fc.sgd: 0.1, fc.adam: 0.05, fc.adamw: 0.05}

HALF = {k: i % 2 == 0 for i, k in enumerate(NAMES)}
GROUPED = {k: (0.5 if i % 3 else 1.0) for i, k in enumerate(NAMES)}
PER_LEAF = {k: 0.9 ** (len(NAMES) - i) for i, k in enumerate(NAMES)}
COEFFS = {
    "none": None,
    "grouped": GROUPED,
    "per_leaf": PER_LEAF,
    "zero": {**GROUPED, "head.bias": 0.0},
}

TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
}


WAVE = 16
"""Waves of 16 elements (``run`` sets it per optimizer), so the tiny leaves above are
split across several waves."""


@pytest.fixture
def no_reference(monkeypatch):
    """Fail if an update silently falls back to the reference path."""

    def boom(*a, **k):
        raise AssertionError("the fast path fell back to the reference path")

    monkeypatch.setattr(reference_engine, "run", boom)


def make(dtype=torch.float32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(s, generator=g, dtype=torch.float64).to(device, dtype)
        for k, s in SHAPES.items()
    }


def grads_seq(n, dtype=torch.float32, device="cpu"):
    return [make(dtype, seed=100 + t, device=device) for t in range(n)]


def clone_tree(tree):
    return {k: (clone_tree(v) if isinstance(v, dict) else v.clone()) for k, v in tree.items()}


def run(opt, params, grads, masks, coeffs, *, donate=False, reference=False, state=None, wave=WAVE):
    opt = opt.with_engine(wave_elems=wave)
    params = clone_tree(params)
    state = opt.init(params, masks) if state is None else state
    for g in grads:
        g = {k: (v if masks is None or masks[k] else None) for k, v in g.items()}
        if reference:
            with fc.force_reference():
                params, state = opt.update(params, g, state, masks, coeffs)
        else:
            params, state = opt.update(params, g, state, masks, coeffs, donate=donate)
    return params, state


def assert_trees_close(a, b, **tol):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_trees_close(a[k], b[k], **tol)
    else:
        torch.testing.assert_close(a, b, **tol)


# -- fast == reference ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("masks", [None, HALF], ids=["all", "half_frozen"])
@pytest.mark.parametrize("coeffs", list(COEFFS), ids=list(COEFFS))
@pytest.mark.parametrize("mode", ["pure", "donate", "clone_engine", "big_waves"])
@pytest.mark.parametrize("name", list(OPTS))
def test_fast_equals_reference(name, mode, coeffs, masks, dtype, no_reference):
    make_opt, kw = OPTS[name]
    opt = make_opt(LR[make_opt], **kw)
    params, grads = make(dtype), grads_seq(3, dtype)
    ref = _reference_run(opt, params, grads, masks, COEFFS[coeffs])
    # clone_engine: wave_elems=0; big_waves: one wave holds every leaf, none is split
    wave = {"clone_engine": 0, "big_waves": 1 << 20}.get(mode, WAVE)
    got = run(opt, params, grads, masks, COEFFS[coeffs], donate=mode == "donate", wave=wave)
    assert_trees_close(got[0], ref[0], **TOL[dtype])
    assert_trees_close(got[1], ref[1], **TOL[dtype])


def _reference_run(opt, params, grads, masks, coeffs):
    # the no_reference fixture may have patched the class: use the original method here
    saved = reference_engine.run
    reference_engine.run = _ORIGINAL_REFERENCE
    try:
        return run(opt, params, grads, masks, coeffs, reference=True)
    finally:
        reference_engine.run = saved


_ORIGINAL_REFERENCE = reference_engine.run


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd-mom"])
def test_tensor_coefficients_and_tensor_lr(name, no_reference):
    """0-d tensor coefficients and a schedule returning tensors use the fast path too."""
    make_opt, kw = OPTS[name]
    sched = fc.cosine(LR[make_opt], 10)
    opt = make_opt(sched, **kw)
    coeffs = {k: torch.tensor(v, dtype=torch.float64) for k, v in PER_LEAF.items()}
    params, grads = make(torch.float64), grads_seq(3, torch.float64)
    ref = _reference_run(opt, params, grads, HALF, coeffs)
    for donate in (False, True):
        got = run(opt, params, grads, HALF, coeffs, donate=donate)
        assert_trees_close(got[0], ref[0], **TOL[torch.float64])
        assert_trees_close(got[1], ref[1], **TOL[torch.float64])


def test_parameters_take_the_fast_path(no_reference):
    """nn.Parameter leaves (``dict(model.named_parameters())``) are fused and keep requires_grad."""
    opt = fc.adam(0.05)
    base = make(torch.float64)
    grads = grads_seq(2, torch.float64)
    ref = _reference_run(opt, base, grads, None, GROUPED)
    for donate in (False, True):
        p = {k: torch.nn.Parameter(v.clone()) for k, v in base.items()}
        state = opt.init(p)
        for g in grads:
            p, state = opt.update(p, g, state, None, GROUPED, donate=donate)
        assert all(v.requires_grad and v.is_leaf and v.grad_fn is None for v in p.values())
        assert all(t.grad_fn is None for t in flat_tensors(state))
        assert_trees_close({k: v.detach() for k, v in p.items()}, ref[0], **TOL[torch.float64])


@pytest.mark.parametrize("grad_layout", ["same", "contiguous"])
def test_strided_leaves(grad_layout, monkeypatch):
    """Fused kernels walk raw memory: a leaf whose grad has another layout than its param
    is updated on the reference path (per leaf), one with a shared layout stays fused."""
    calls = []
    original = reference_engine.run

    def spy(job, **k):
        calls.extend(job.idx)
        return original(job, **k)

    monkeypatch.setattr(reference_engine, "run", spy)
    opt = fc.adam(0.05)
    base = make(torch.float64)
    grads = grads_seq(2, torch.float64)
    ref = _reference_run(opt, base, grads, None, None)
    for donate in (False, True):
        p = {k: v.clone() for k, v in base.items()}
        p["emb.weight"] = base["emb.weight"].t().contiguous().t()  # column-major
        assert not p["emb.weight"].is_contiguous()
        state = opt.init(p)
        for g in grads:
            g = dict(g)
            if grad_layout == "same":
                g["emb.weight"] = g["emb.weight"].t().contiguous().t()
            calls.clear()
            p, state = opt.update(p, g, state, donate=donate)
            assert calls == ([] if grad_layout == "same" else [0])
        assert_trees_close(p, ref[0], **TOL[torch.float64])
        assert_trees_close(state, ref[1], **TOL[torch.float64])


# -- fast == torch.optim ----------------------------------------------------------------


def torch_run(make_opt, kw, params, grads, masks, coeffs, dtype, **flags):
    """torch.optim oracle: one param group per distinct coefficient, frozen leaves left out."""
    ps = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    groups: dict[float, list] = {}
    for k in NAMES:
        if masks is None or masks[k]:
            c = 1.0 if coeffs is None else coeffs[k]
            groups.setdefault(c, []).append(ps[k])
    lr = LR[make_opt]
    o = TORCH[make_opt](
        [{"params": v, "lr": lr * c} for c, v in groups.items()], lr=lr, **kw, **flags
    )
    for g in grads:
        for k, p in ps.items():
            p.grad = g[k].clone()
        o.step()
    return {k: v.detach() for k, v in ps.items()}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("coeffs", ["grouped", "per_leaf"])
@pytest.mark.parametrize("donate", [False, True], ids=["pure", "donate"])
@pytest.mark.parametrize("name", list(OPTS))
def test_fast_equals_torch_optim(name, donate, coeffs, dtype, no_reference):
    make_opt, kw = OPTS[name]
    opt = make_opt(LR[make_opt], **kw)
    params, grads = make(dtype), grads_seq(4, dtype)
    expect = torch_run(make_opt, kw, params, grads, HALF, COEFFS[coeffs], dtype, foreach=False)
    got, _ = run(opt, params, grads, HALF, COEFFS[coeffs], donate=donate)
    assert_trees_close(got, expect, **TOL[dtype])


@pytest.mark.parametrize("donate", [False, True], ids=["pure", "donate"])
@pytest.mark.parametrize("name", ["adam", "adamw", "adam-wd"])
def test_bfloat16_adam_matches_torch_fused(name, donate, no_reference):
    """bfloat16 Adam leaves run torch's fused kernel (float32 math inside), so they match
    ``torch.optim.Adam(fused=True)`` bit for bit; the reference path rounds every
    intermediate to bfloat16 and is only close."""
    make_opt, kw = OPTS[name]
    opt = make_opt(LR[make_opt], **kw)
    params, grads = make(torch.bfloat16), grads_seq(3, torch.bfloat16)
    expect = torch_run(make_opt, kw, params, grads, HALF, GROUPED, torch.bfloat16, fused=True)
    got, _ = run(opt, params, grads, HALF, GROUPED, donate=donate)
    assert_trees_close(got, expect, rtol=0, atol=0)
    ref, _ = _reference_run(opt, params, grads, HALF, GROUPED)
    assert_trees_close(got, ref, rtol=0.05, atol=0.05)


def test_torch_cpu_fused_sgd_half_precision_bug():
    """Why SGD keeps float16 / bfloat16 CPU leaves off torch's fused kernel: it leaves part
    of the tensor un-updated. If this starts failing, torch fixed it (the `accepts` veto of fc.sgd's Kernels)."""
    p, g = torch.ones(40, dtype=torch.bfloat16), torch.full((40,), 0.5, dtype=torch.bfloat16)
    torch._fused_sgd_(
        [p], [g], [], weight_decay=0.0, momentum=0.0, lr=0.1, dampening=0.0,
        nesterov=False, maximize=False, is_first_step=True,
    )  # fmt: skip
    assert not torch.equal(p, torch.full_like(p, 0.95))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("donate", [False, True], ids=["pure", "donate"])
@pytest.mark.parametrize("name", ["sgd-mom", "sgd-nesterov", "sgd-damp"])
def test_half_precision_sgd_matches_torch_forloop(name, donate, dtype):
    make_opt, kw = OPTS[name]
    opt = make_opt(LR[make_opt], **kw)
    params, grads = make(dtype), grads_seq(3, dtype)
    expect = torch_run(make_opt, kw, params, grads, HALF, GROUPED, dtype, foreach=False)
    got, _ = run(opt, params, grads, HALF, GROUPED, donate=donate)
    assert_trees_close(got, expect, rtol=0.02, atol=0.02)


# -- purity, donation, frozen leaves ------------------------------------------------------


def flat_tensors(tree):
    if isinstance(tree, dict):
        return [t for v in tree.values() for t in flat_tensors(v)]
    return [tree] if isinstance(tree, torch.Tensor) else []


@pytest.mark.parametrize("engine", ["waves", "clone", "generic"])
@pytest.mark.parametrize("name", ["adam", "sgd-damp", "sgd"])
def test_pure_never_mutates_inputs(name, engine, no_reference):
    make_opt, kw = OPTS[name]
    opt = make_opt(LR[make_opt], **kw)
    if engine == "generic":
        opt = opt.with_engine("generic", wave_elems=WAVE)
    else:
        opt = opt.with_engine(wave_elems=WAVE if engine == "waves" else 0)
    params = make()
    state = opt.init(params, HALF)
    params, state = opt.update(params, make(seed=7), state, HALF, GROUPED)  # non-zero state
    grads = make(seed=8)
    before = [t.clone() for t in flat_tensors(params) + flat_tensors(grads) + flat_tensors(state)]
    ptrs_in = {t.data_ptr() for t in flat_tensors(params) + flat_tensors(state) if t.numel()}
    new_p, new_s = opt.update(params, grads, state, HALF, GROUPED)
    after = flat_tensors(params) + flat_tensors(grads) + flat_tensors(state)
    for a, b in zip(before, after):
        assert torch.equal(a, b)
    for k in NAMES:
        if HALF[k]:  # trainable: fresh storage
            assert new_p[k].data_ptr() not in ptrs_in
            for f in opt.rule.fields:
                assert new_s[f][k].data_ptr() not in ptrs_in
            assert new_s["count"][k] is not state["count"][k]
        else:  # frozen: the very same tensors
            assert new_p[k] is params[k]
            assert new_s["count"][k] is state["count"][k]
            for f in opt.rule.fields:
                assert new_s[f][k] is state[f][k]
    assert int(new_s["step"]) == int(state["step"]) + 1


def allocated_bytes(fn):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    total = sum(max(e.self_cpu_memory_usage, 0) for e in prof.key_averages())
    return total, out


@pytest.mark.parametrize("masks", [None, HALF], ids=["all", "half_frozen"])
@pytest.mark.parametrize("name", ["adam", "adamw", "sgd-mom", "sgd-damp"])
def test_donate_reuses_buffers(name, masks, no_reference):
    make_opt, kw = OPTS[name]
    opt = make_opt(LR[make_opt], **kw).with_engine(wave_elems=1 << 18)
    params = {f"l{i}": torch.randn(4096) for i in range(6)}
    grads = {k: torch.randn(4096) for k in params}
    m = None if masks is None else {k: i % 2 == 0 for i, k in enumerate(params)}
    state = opt.init(params, m)
    params, state = opt.update(params, grads, state, m, donate=True)  # warm-up
    ptrs = [t.data_ptr() for t in flat_tensors(params) + flat_tensors(state)]
    nbytes = sum(t.numel() * t.element_size() for t in flat_tensors(params))
    used, (new_p, new_s) = allocated_bytes(
        lambda: opt.update(params, grads, state, m, {k: 0.5 for k in params}, donate=True)
    )
    assert [t.data_ptr() for t in flat_tensors(new_p) + flat_tensors(new_s)] == ptrs
    assert used < 0.01 * nbytes, f"donate allocated {used} bytes"
    # and a pure call really allocates fresh buffers (so the measure above is meaningful)
    used_pure, _ = allocated_bytes(lambda: opt.update(new_p, grads, new_s, m))
    assert used_pure > 0.4 * nbytes * (1 if m is None else 0.5)


def test_frozen_leaves_never_read(no_reference):
    """A frozen leaf may hold NaN (or anything) in its params and state: it is not touched."""
    opt = fc.adam(0.1)
    params = make()
    state = opt.init(params, HALF)
    params["block.0.weight"] = torch.full((5, 6), float("nan"))
    for donate in (False, True):
        new, st = opt.update(params, make(seed=3), state, HALF, donate=donate)
        assert new["block.0.weight"] is params["block.0.weight"]
        assert st["exp_avg"]["block.0.weight"].numel() == 0
        assert all(torch.isfinite(new[k]).all() for k in NAMES if HALF[k])


# -- transforms: the fast path steps aside ----------------------------------------------------


def test_vmap_falls_back_and_matches_members():
    E = 3
    opt = fc.adamw(0.05)
    members = [make(seed=s) for s in range(E)]
    stacked = {k: torch.stack([m[k] for m in members]) for k in NAMES}
    gseq = [[make(seed=50 + 10 * t + s) for s in range(E)] for t in range(2)]
    coeffs = {k: torch.tensor([0.5, 1.0, 2.0]) for k in NAMES}
    state = torch.func.vmap(opt.init)(stacked)
    upd = torch.func.vmap(opt.update, in_dims=(0, 0, 0, None, 0))
    p = stacked
    for t in range(2):
        g = {k: torch.stack([gseq[t][s][k] for s in range(E)]) for k in NAMES}
        p, state = upd(p, g, state, HALF, coeffs)
    for s in range(E):
        c = {k: float(coeffs[k][s]) for k in NAMES}
        q, st = members[s], opt.init(members[s])
        for t in range(2):
            q, st = opt.update(q, gseq[t][s], st, HALF, c)
        assert_trees_close({k: p[k][s] for k in NAMES}, q, rtol=1e-4, atol=1e-5)


def test_compiled_update_matches_eager_and_does_not_recompile_on_coeffs():
    torch._dynamo.reset()
    opt = fc.adam(0.05)
    params, grads = make(), make(seed=4)
    masks = HALF

    def step(p, g, s, coeffs):
        return opt.update(p, g, s, masks, coeffs)

    compiled = torch.compile(step, backend="eager", fullgraph=False)
    from torch._dynamo.utils import counters

    counters.clear()
    state = opt.init(params, masks)
    p_c, s_c, p_e, s_e = params, state, params, state
    for t in range(3):
        coeffs = {k: torch.tensor(0.5 + 0.1 * t + 0.01 * i) for i, k in enumerate(NAMES)}
        p_c, s_c = compiled(p_c, grads, s_c, coeffs)
        p_e, s_e = step(p_e, grads, s_e, coeffs)
    assert_trees_close(p_c, p_e, **TOL[torch.float32])
    frames = counters["stats"]["unique_graphs"]
    assert frames >= 1
    first = frames
    coeffs = {k: torch.tensor(3.0) for k in NAMES}
    compiled(p_c, grads, s_c, coeffs)
    assert counters["stats"]["unique_graphs"] == first


def test_compiled_update_is_one_graph_per_mask_set():
    """fullgraph: no graph break in update; a new mask set compiles exactly one more graph,
    a revisited one none, and every compiled step equals the eager step."""
    torch._dynamo.reset()
    opt = fc.adam(0.05)
    params, grads = make(), make(seed=4)
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def step(p, g, s, masks, coeffs):
        return opt.update(p, g, s, masks, coeffs)

    compiled = torch.compile(step, backend=counting, fullgraph=True)
    other = {k: not v for k, v in HALF.items()}
    all_on = dict.fromkeys(NAMES, True)
    coeffs = {k: torch.tensor(0.5 + 0.01 * i) for i, k in enumerate(NAMES)}
    p_c = p_e = params
    # full-size buffers from the start (an init(params, masks) state has 0-size buffers at
    # frozen leaves: other shapes, so its first revisit would be a new graph too)
    s_c = s_e = opt.init(params)
    prev, per_set = HALF, []
    for masks in (HALF, other, all_on, HALF, other):
        s_c = opt.transition(s_c, p_c, prev, masks)
        s_e = opt.transition(s_e, p_e, prev, masks)
        before = len(graphs)
        for _ in range(2):
            p_c, s_c = compiled(p_c, grads, s_c, masks, coeffs)
            with fc.force_reference():  # the same per-leaf math the trace records
                p_e, s_e = step(p_e, grads, s_e, masks, coeffs)
        per_set.append(len(graphs) - before)
        prev = masks
    assert per_set == [1, 1, 1, 0, 0]
    assert_trees_close(p_c, p_e, **TOL[torch.float32])
    for f in ("exp_avg", "exp_avg_sq", "count"):
        assert_trees_close(s_c[f], s_e[f], **TOL[torch.float32])
    assert int(s_c["step"]) == int(s_e["step"]) == 10


def test_traced_flatten_matches_optree():
    """The plain-Python walk used while dynamo traces gives optree's leaves, order, paths
    and containers (insertion order kept, None a leaf)."""
    import collections

    from funcurriculum import _tree

    nt = collections.namedtuple("nt", "b a")
    t = torch.zeros
    tree = {
        "z": [t(1), None, (t(2), nt(t(3), None))],
        "a": collections.OrderedDict(y=t(4), x=t(5)),
        3: collections.defaultdict(list, {"q": t(6)}),
        "d": collections.deque([t(7)], maxlen=4),
        "n": 1.5,
        "e": {},
    }
    leaves, spec = _tree.flatten(tree)
    walked: list = []
    tspec = _tree._walk(tree, walked)
    assert isinstance(tspec, _tree.TracedSpec)
    assert len(walked) == len(leaves) and all(a is b for a, b in zip(walked, leaves))
    assert _tree.spec_paths(tspec) == _tree.spec_paths(spec)
    assert _tree.key_paths(tspec) == _tree.key_paths(spec)
    back = _tree.unflatten(tspec, walked)
    ref = _tree.unflatten(spec, leaves)

    def shape(x):
        if isinstance(x, dict):
            return (type(x), [(k, shape(v)) for k, v in x.items()])
        if isinstance(x, (list, tuple, collections.deque)):
            return (type(x), [shape(v) for v in x])
        return x if not isinstance(x, torch.Tensor) else id(x)

    assert shape(back) == shape(ref)
    assert back[3].default_factory is list and back["d"].maxlen == 4
    walked2: list = []
    assert _tree._walk(tree, walked2) == tspec
    assert _tree._walk({"z": 1}, []) != tspec
    assert _tree._walk(collections.UserList([1]), []) is _tree._LEAF  # not a container
    assert _tree._walk({"u": type("D", (dict,), {})(a=1)}, []) is _tree._UNKNOWN


def test_flat_dict_flatten_matches_optree():
    """A flat dict of tensors / None / numbers with str keys takes the cached-spec path:
    the same leaves (the very objects), spec and paths as optree, insertion order kept;
    other trees (int or bool keys, nested values, dict subclasses) go to optree."""
    from funcurriculum import _tree

    before = len(_tree._FLAT_SPECS)
    _tree.flatten({"only-int-keys-here": 1, 2: 3})
    assert len(_tree._FLAT_SPECS) == before  # not cached
    import collections

    t = torch.zeros
    p = torch.nn.Parameter(t(2))
    flat = {"b.w": t(1), "a.w": p, "c": None, "d": 1.5, "e": True, "f": 3}
    cases = [
        flat,
        {},
        {1: t(1), "a": t(2)},  # int and bool keys: (1,) == (True,), so no cached spec
        {True: t(1)},
        {"x": {"y": t(1)}, "z": t(2)},
        {"x": [t(1)]},
        collections.OrderedDict(b=t(1), a=t(2)),
    ]
    for tree in cases:
        for _ in range(2):  # the second call reads the cache
            leaves, spec = _tree.flatten(tree)
            ref_leaves, ref_spec = _tree._optree_flatten(tree)
            assert spec == ref_spec, tree
            assert len(leaves) == len(ref_leaves)
            assert all(a is b for a, b in zip(leaves, ref_leaves))
            assert _tree.spec_paths(spec) == _tree.spec_paths(ref_spec)
    assert _tree.spec_paths(_tree.flatten(flat)[1]) == ("b.w", "a.w", "c", "d", "e", "f")
    assert type(_tree.unflatten(_tree.flatten(cases[-1])[1], [1, 2])) is collections.OrderedDict


def test_flat_spec_cache_is_bounded(monkeypatch):
    from funcurriculum import _tree

    monkeypatch.setattr(_tree, "_FLAT_SPECS", {})
    for i in range(2500):
        _tree.flatten({f"k{i}": None})
    assert 0 < len(_tree._FLAT_SPECS) <= 1024


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("donate", [False, True], ids=["pure", "donate"])
@pytest.mark.parametrize("name", ["adam", "adamw", "sgd-mom"])
def test_cuda_fast_equals_reference(name, donate):
    make_opt, kw = OPTS[name]
    opt = make_opt(LR[make_opt], **kw)
    params, grads = make(device="cuda"), grads_seq(3, device="cuda")
    ref = run(opt, params, grads, HALF, PER_LEAF, reference=True)
    got = run(opt, params, grads, HALF, PER_LEAF, donate=donate)
    assert_trees_close(got[0], ref[0], **TOL[torch.float32])
    assert_trees_close(got[1], ref[1], **TOL[torch.float32])


def test_donated_counts_take_the_batched_increment_and_stay_exact(monkeypatch):
    """Counts made by ``init`` are views of one tensor: a donated update adds 1 with one
    call (all leaves), or an index_add (a subset), or per tensor (mixed origins after a
    transition); every way gives each leaf its own exact count, frozen ones untouched."""
    calls = []
    real = torch._foreach_add_
    monkeypatch.setattr(torch, "_foreach_add_", lambda *a, **k: calls.append(1) or real(*a, **k))
    opt = fc.adam(0.1)
    params = {f"l{i}": torch.randn(3) for i in range(4)}
    grads = {k: torch.ones(3) for k in params}
    half = {k: i % 2 == 0 for i, k in enumerate(params)}
    state = opt.init(params)
    base = state["count"]["l0"]._base
    assert base is not None and all(c._base is base for c in state["count"].values())
    params, state = opt.update(params, grads, state, donate=True)  # all: base.add_
    params, state = opt.update(params, grads, state, half, donate=True)  # subset: index_add_
    assert calls == []
    assert [float(c) for c in state["count"].values()] == [2.0, 1.0, 2.0, 1.0]
    state = opt.transition(state, params, half, {k: True for k in params})  # fresh l1, l3
    params, state = opt.update(params, grads, state, donate=True)  # mixed: per tensor
    assert calls == [1]
    assert [float(c) for c in state["count"].values()] == [3.0, 1.0, 3.0, 1.0]
