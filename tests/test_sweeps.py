"""Curriculum sweeps under vmap: dynamic (batched) masks, stack_curricula, Sweep,
partition's union, make_sweep_step, and torch.compile graph counts.

The oracle: every member of a swept run equals the same schedule run alone with the
static API (`fc.make_step`, Python-bool masks, the fast engines).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.func import vmap

import funcurriculum as fc

SHAPES = {
    "backbone.0.weight": (6, 4),
    "backbone.0.bias": (6,),
    "backbone.1.weight": (6, 6),
    "head.weight": (3, 6),
    "head.bias": (3,),
}
NAMES = list(SHAPES)
BACKBONE = [k for k in NAMES if k.startswith("backbone")]
DT = torch.float64
TOL = dict(rtol=1e-9, atol=1e-11)

OPTS = {
    "sgd-momentum": lambda: fc.sgd(0.1, momentum=0.9),
    "adam": lambda: fc.adam(0.05),
    "adamw": lambda: fc.adamw(0.05, weight_decay=0.1),
}


def one_member(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g, dtype=DT) * 0.5 for k, s in SHAPES.items()}


def stacked_members(e: int) -> dict[str, torch.Tensor]:
    ms = [one_member(i) for i in range(e)]
    return {k: torch.stack([m[k] for m in ms]) for k in NAMES}


def loss_fn(p, batch):
    x, y = batch
    h = torch.tanh(x @ p["backbone.0.weight"].T + p["backbone.0.bias"])
    h = torch.tanh(h @ p["backbone.1.weight"].T)
    return F.cross_entropy(h @ p["head.weight"].T + p["head.bias"], y)


def batches(n: int, seed: int = 1, members: int | None = None):
    g = torch.Generator().manual_seed(seed)
    lead = () if members is None else (members,)
    return [
        (
            torch.randn(*lead, 16, 4, generator=g, dtype=DT),
            torch.randint(0, 3, (*lead, 16), generator=g),
        )
        for _ in range(n)
    ]


def unfreeze_schedule(until: int, coeff: float = 1.0) -> fc.Schedule:
    rules = [fc.Freezer(name_starts_with="backbone", until_step=until)]
    if coeff != 1.0:
        rules.append(fc.SetCoefficient(coeff, "backbone"))
    return fc.Schedule(fc.Curriculum(one_member()), *rules)


def run_alone(make_opt, schedule, params, data):
    """The static API: Python-bool masks, init with masks, transitions, fast engines."""
    opt = make_opt()
    step_fn = fc.make_step(loss_fn, opt, schedule)
    state, cur = opt.init(params, schedule.at(step=0).masks), None
    for t, b in enumerate(data):
        params, state, _, cur = step_fn(params, state, b, step=t, prev=cur)
    return params, state


def run_swept(make_opt, schedules, stacked, data, **kw):
    opt = make_opt()
    step_fn = fc.make_sweep_step(loss_fn, opt, schedules, **kw)
    state, cur = step_fn.init(stacked), None
    for t, b in enumerate(data):
        stacked, state, losses, cur = step_fn(stacked, state, b, step=t, prev=cur)
    return stacked, state, losses


def member(tree, i):
    return {k: v[i] for k, v in tree.items()}


def assert_trees_close(a, b, **tol):
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol, msg=lambda m, k=k: f"{k}: {m}")


# -- stack_curricula / Sweep ---------------------------------------------------------------


def test_stack_curricula_shapes_values_and_order():
    cur = fc.Curriculum(one_member())
    curs = [cur, cur.freeze("backbone"), cur.set_lr_coefficient(0.5, "head").freeze("head.bias")]
    masks, coeffs = fc.stack_curricula(curs)
    assert list(masks) == list(coeffs) == NAMES
    for k in NAMES:
        assert masks[k].dtype == torch.bool and masks[k].shape == (3,)
        assert coeffs[k].dtype == torch.float32 and coeffs[k].shape == (3,)
        assert masks[k].tolist() == [c.masks[k] for c in curs]
        assert coeffs[k].tolist() == [c.coeffs[k] for c in curs]
    _, c64 = fc.stack_curricula(curs, dtype=torch.float64)
    assert c64["head.weight"].dtype == torch.float64


def test_stack_curricula_nested_params_keep_structure():
    p = {"b": {"w": torch.zeros(2), "v": [torch.zeros(1)]}, "a": torch.zeros(3)}
    cur = fc.Curriculum(p)
    masks, coeffs = fc.stack_curricula([cur, cur.freeze("b")])
    assert list(masks) == ["b", "a"] and list(masks["b"]) == ["w", "v"]
    assert masks["b"]["v"][0].tolist() == [True, False]
    assert coeffs["a"].tolist() == [1.0, 1.0]


def test_stack_curricula_bad_inputs():
    cur = fc.Curriculum(one_member())
    with pytest.raises(ValueError, match="empty"):
        fc.stack_curricula([])
    with pytest.raises(TypeError, match=r"curricula\[1\] is a dict"):
        fc.stack_curricula([cur, cur.masks])
    other = {("heads.weight" if k == "head.weight" else k): v for k, v in one_member().items()}
    with pytest.raises(
        ValueError, match=r"curricula\[1\].*'heads.weight'.*did you mean 'head.weight'"
    ):
        fc.stack_curricula([cur, fc.Curriculum(other)])
    reordered = dict(reversed(list(one_member().items())))
    with pytest.raises(ValueError, match="another order"):
        fc.stack_curricula([cur, fc.Curriculum(reordered)])
    with pytest.raises(ValueError, match="at least one member"):
        fc.Sweep([])
    with pytest.raises(TypeError, match=r"schedules\[0\]"):
        fc.Sweep([one_member()])


def test_sweep_at_is_stacked_schedule_at_and_cached():
    scheds = [unfreeze_schedule(n, c) for n, c in ((0, 1.0), (3, 0.5), (6, 0.25))]
    sweep = fc.Sweep(scheds)
    assert sweep.members == 3 and sweep.paths == NAMES
    for t in range(8):
        masks, coeffs = sweep.at(step=t)
        for k in NAMES:
            assert masks[k].tolist() == [s.at(step=t).masks[k] for s in scheds]
            assert coeffs[k].tolist() == [s.at(step=t).coeffs[k] for s in scheds]
    assert sweep.at(step=4)[0] is sweep.at(step=5)[0]  # same phases: the cached tensors
    with pytest.raises(ValueError, match="clock|step"):
        fc.Sweep([fc.Schedule(one_member(), fc.Freezer(names="head", until_epoch=2))]).at(step=0)


# -- dynamic masks in the engine ---------------------------------------------------------


@pytest.mark.parametrize("name", OPTS)
def test_zero_d_tensor_masks_equal_python_bool_masks(name):
    opt = OPTS[name]()
    p, g = one_member(0), one_member(1)
    bools = {k: i % 2 == 0 for i, k in enumerate(NAMES)}
    tens = {k: torch.tensor(v) for k, v in bools.items()}
    sb, stn = opt.init(p, bools), opt.init(p, tens)
    pb, pt = p, p
    for _ in range(3):
        pb, sb = opt.update(pb, g, sb, bools, None)
        pt, stn = opt.update(pt, g, stn, tens, None)
    for k in NAMES:
        assert torch.equal(pb[k], pt[k]), k
        assert torch.equal(sb["count"][k], stn["count"][k]), k
    allon = dict.fromkeys(NAMES, True)
    sb = opt.transition(sb, pb, bools, allon)
    stn = opt.transition(stn, pt, tens, {k: torch.tensor(True) for k in NAMES})
    pb, sb = opt.update(pb, g, sb, allon, None)
    pt, stn = opt.update(pt, g, stn, {k: torch.tensor(True) for k in NAMES}, None)
    for k in NAMES:
        assert torch.equal(pb[k], pt[k]), k


def test_batched_masks_outside_vmap_are_refused():
    opt, p = fc.adam(0.1), one_member()
    masks = {k: torch.tensor([True, False]) for k in NAMES}
    with pytest.raises(ValueError, match="backbone.0.weight.*batched masks need vmap"):
        opt.update(p, one_member(1), opt.init(p), masks, None)


@pytest.mark.parametrize("name", OPTS)
def test_vmapped_update_with_batched_masks_freezes_per_member(name):
    """Where a member's mask is False: param, buffers and count bit-identical; others move.
    A leaf no member trains may be absent from the grads (the partition part)."""
    opt, E = OPTS[name](), 4
    p = stacked_members(E)
    g = {k: torch.ones_like(v) for k, v in p.items()}
    state = vmap(opt.init)(p)
    state = vmap(opt.update, in_dims=(0, 0, 0, None, None))(p, g, state, None, None)[
        1
    ]  # non-trivial buffers
    masks = {
        k: torch.rand(E, generator=torch.Generator().manual_seed(i)) < 0.5
        for i, k in enumerate(NAMES)
    }
    masks["head.bias"] = torch.zeros(E, dtype=torch.bool)  # frozen in every member
    trainable, _ = fc.partition(p, masks)
    assert "head.bias" not in trainable
    grads = {k: g[k] for k in trainable}
    coeffs = {k: torch.full((E,), 0.5) for k in NAMES}
    new, new_state = vmap(opt.update)(p, grads, state, masks, coeffs)
    fields = [f for f in new_state if f not in ("step",)]
    for k in NAMES:
        for i in range(E):
            same = torch.equal(new[k][i], p[k][i])
            assert same == (not masks[k][i]), (k, i)
            for f in fields:
                if not masks[k][i]:
                    assert torch.equal(new_state[f][k][i], state[f][k][i]), (f, k, i)
        assert new_state["count"][k].tolist() == [1.0 + bool(m) for m in masks[k]]
    assert p["head.weight"].data_ptr() != new["head.weight"].data_ptr()  # pure


@pytest.mark.parametrize("name", OPTS)
def test_vmapped_transition_refreshes_exactly_the_unfrozen_members(name):
    opt, E = OPTS[name](), 3
    p = stacked_members(E)
    g = {k: torch.ones_like(v) for k, v in p.items()}
    state = vmap(opt.init)(p)
    for _ in range(2):
        p, state = vmap(opt.update, in_dims=(0, 0, 0, None, None))(p, g, state, None, None)
    old = {k: torch.tensor([False, False, True]) for k in NAMES}
    new = {k: torch.tensor([True, False, True]) for k in NAMES}
    out = vmap(opt.transition)(state, p, old, new)
    fresh = vmap(opt.init)(p)
    for k in NAMES:
        assert out["count"][k].tolist() == [0.0, 2.0, 2.0]
        for f in out:
            if f in ("step", "count"):
                continue
            assert torch.equal(out[f][k][0], fresh[f][k][0]), (f, k)
            assert torch.equal(out[f][k][1:], state[f][k][1:]), (f, k)
    assert torch.equal(out["step"], state["step"])


def test_init_with_batched_masks_allocates_full_buffers():
    opt, E = fc.adam(0.1), 2
    p = stacked_members(E)
    masks, _ = fc.stack_curricula([fc.Curriculum(one_member()).freeze("backbone")] * E)
    state = vmap(opt.init)(p, masks)
    assert state["exp_avg"]["backbone.0.weight"].shape == p["backbone.0.weight"].shape


# -- partition --------------------------------------------------------------------------


def test_partition_dynamic_masks_take_the_union():
    p = one_member()
    masks = {k: torch.tensor([i == 0, i == 1, False]) for i, k in enumerate(NAMES)}
    masks["head.bias"] = True
    tr, fr = fc.partition(p, masks)
    assert list(tr) == ["backbone.0.weight", "backbone.0.bias", "head.bias"]
    assert list(fr) == ["backbone.1.weight", "head.weight"]
    assert all(tr[k] is p[k] for k in tr)
    assert list(fc.combine(tr, fr, like=p)) == NAMES
    zero_d = {k: torch.tensor(i % 2 == 0) for i, k in enumerate(NAMES)}
    assert list(fc.partition(p, zero_d)[0]) == [k for i, k in enumerate(NAMES) if i % 2 == 0]
    with pytest.raises(TypeError, match="head.bias"):
        fc.partition(p, {**masks, "head.bias": torch.tensor([1.0])})


def test_partition_tensor_masks_are_trainable_inside_vmap():
    """Per member the values cannot decide structure: every tensor-masked leaf is trainable."""
    p = stacked_members(2)
    masks = {k: torch.tensor([False, i == 0]) for i, k in enumerate(NAMES)}
    masks["head.bias"] = False
    n = vmap(lambda q, m: torch.tensor(float(len(fc.partition(q, m)[0]))))(
        p, {k: masks[k] for k in NAMES[:-1]} | {"head.bias": torch.tensor([False, False])}
    )
    assert n.tolist() == [5.0, 5.0]
    assert list(fc.partition(p, masks)[0]) == ["backbone.0.weight"]  # outside: the union


@pytest.mark.slow
def test_partition_tensor_masks_are_trainable_while_tracing():
    p = one_member()
    masks = {k: torch.zeros(3, dtype=torch.bool) for k in NAMES}
    masks["head.bias"] = False

    def names(m):
        return torch.zeros(len(fc.partition(p, m)[0]))

    assert names(masks).shape == (0,)  # eager: the values decide
    assert torch.compile(names, backend="eager", fullgraph=True)(masks).shape == (4,)


# -- make_sweep_step: the oracle ---------------------------------------------------------


@pytest.mark.parametrize("name", OPTS)
def test_each_member_equals_its_schedule_run_alone(name):
    plan = [(0, 1.0), (2, 1.0), (4, 0.5), (4, 0.0), (9, 0.25), (100, 1.0)]
    scheds = [unfreeze_schedule(n, c) for n, c in plan]
    stacked = stacked_members(len(plan))
    data = batches(10)
    swept, state, losses = run_swept(OPTS[name], scheds, stacked, data)
    assert losses.shape == (len(plan),)
    for i, s in enumerate(scheds):
        alone, alone_state = run_alone(OPTS[name], s, member(stacked, i), data)
        assert_trees_close(member(swept, i), alone, **TOL)
        assert_trees_close(member(state["count"], i), alone_state["count"])
        for f in alone_state:
            if f not in ("step", "count"):
                for k in NAMES:
                    if alone_state[f][k].numel():
                        torch.testing.assert_close(state[f][k][i], alone_state[f][k], **TOL)
    # never unfrozen: bit-identical backbone; unfrozen at 9: moved once
    for k in BACKBONE:
        assert torch.equal(swept[k][5], stacked[k][5])
        assert state["count"][k].tolist() == [10, 8, 6, 6, 1, 0]


@dataclass(frozen=True)
class SignSGD:
    """A rule with only fields / init / step (no kernels, not declared elementwise)."""

    fields = ()

    def init(self, p):
        return ()

    def step(self, p, g, bufs, count, lr):
        return p - lr * torch.sign(g), ()


def _by_ndim(params):
    return {k: "matrices" if v.ndim == 2 else "rest" for k, v in params.items()}


# every kind of optimizer through the sweep: the elementwise ones update the stacked leaves
# outside vmap (Optimizer.update_members), the others run their update under vmap
KINDS = {
    "chain-clip-adamw": lambda: fc.chain(fc.clip_grad_norm(0.5), fc.adamw(0.05)),
    "skip-nonfinite-sgd": lambda: fc.skip_nonfinite(fc.sgd(0.1, momentum=0.9)),
    "multi-sgd-adam": lambda: fc.multi_optimizer(
        {"matrices": fc.sgd(0.1, momentum=0.9), "rest": fc.adam(0.05)}, _by_ndim
    ),
    "muon-recipe": lambda: fc.multi_optimizer(
        {"matrices": fc.muon(0.02), "rest": fc.adamw(0.01)}, _by_ndim
    ),
    "custom-rule": lambda: fc.Optimizer(SignSGD(), 0.01, name="sign_sgd"),
    "custom-rule-elementwise": lambda: fc.Optimizer(
        SignSGD(), 0.01, name="sign_sgd", elementwise=True
    ),
    "adam-schedule-amsgrad": lambda: fc.adam(fc.cosine(0.05, 10), amsgrad=True),
    **{
        n: (lambda n=n: getattr(fc, n)(0.01))
        for n in ("rmsprop", "adagrad", "adamax", "nadam", "radam", "adadelta", "adafactor", "lion")
    },
}


@pytest.mark.parametrize("name", sorted(KINDS))
def test_each_member_equals_its_schedule_run_alone_for_every_kind_of_optimizer(name, monkeypatch):
    if name == "muon-recipe":
        # Muon orthogonalises in bfloat16, as torch.optim.Muon; a batched (vmapped)
        # bfloat16 matmul rounds differently from one matrix at a time and Newton-Schulz
        # amplifies it. Run the iteration in float64 here to compare the mechanism exactly
        import funcurriculum.catalogue._muon as M

        ns = M.newton_schulz
        monkeypatch.setattr(M, "newton_schulz", lambda g, *a: ns(g.double(), *a).double())
        monkeypatch.setattr(torch.Tensor, "bfloat16", lambda t: t)
    plan = [(0, 1.0), (3, 0.5), (5, 1.0), (100, 1.0)]
    scheds = [unfreeze_schedule(n, c) for n, c in plan]
    stacked = stacked_members(len(plan))
    data = batches(7)
    swept, _, _ = run_swept(KINDS[name], scheds, stacked, data)
    for i, s in enumerate(scheds):
        alone, _ = run_alone(KINDS[name], s, member(stacked, i), data)
        assert_trees_close(member(swept, i), alone, rtol=1e-8, atol=1e-10)
    for k in BACKBONE:  # never unfrozen: bit-identical
        assert torch.equal(swept[k][3], stacked[k][3])


def test_per_member_batches():
    scheds = [unfreeze_schedule(n) for n in (0, 3, 5)]
    stacked = stacked_members(3)
    data = batches(6, members=3)
    swept, _, _ = run_swept(OPTS["adam"], scheds, stacked, data, batch_axis=0)
    for i, s in enumerate(scheds):
        own = [(x[i], y[i]) for x, y in data]
        alone, _ = run_alone(OPTS["adam"], s, member(stacked, i), own)
        assert_trees_close(member(swept, i), alone, **TOL)
    with pytest.raises(ValueError, match="batch_axis"):
        fc.make_sweep_step(loss_fn, fc.adam(0.1), scheds, batch_axis=1)


def test_frozen_leaves_bit_identical_and_transitions_per_member_every_step():
    opt = fc.adam(0.05)
    untils = (0, 2, 4, 50)
    scheds = [unfreeze_schedule(n) for n in untils]
    step_fn = fc.make_sweep_step(loss_fn, opt, scheds)
    p = stacked_members(len(untils))
    state, cur = vmap(opt.init)(p), None
    for t, b in enumerate(batches(6)):
        new_p, new_state, _, new_cur = step_fn(p, state, b, step=t, prev=cur)
        for i, n in enumerate(untils):
            for k in BACKBONE:
                if t < n:  # frozen: param and state untouched
                    assert torch.equal(new_p[k][i], p[k][i])
                    for f in ("exp_avg", "exp_avg_sq", "count"):
                        assert torch.equal(new_state[f][k][i], state[f][k][i])
                elif t == n and n > 0:  # just unfrozen: a fresh first step
                    assert new_state["count"][k][i] == 1.0
                else:
                    assert new_state["count"][k][i] == t + 1 - n
            assert new_state["count"]["head.weight"][i] == t + 1
        p, state, cur = new_p, new_state, new_cur
    assert [c.masks["backbone.0.weight"] for c in cur] == [True, True, True, False]


def test_make_step_accepts_a_list_of_schedules():
    scheds = [unfreeze_schedule(n) for n in (0, 2)]
    step_fn = fc.make_step(loss_fn, fc.sgd(0.1), scheds)
    assert isinstance(step_fn.sweep, fc.Sweep) and step_fn.sweep.members == 2
    p = stacked_members(2)
    state = vmap(fc.sgd(0.1).init)(p)
    out = step_fn(p, state, batches(1)[0], step=0)
    assert out[2].shape == (2,) and len(out[3]) == 2
    # a fixed Curriculum per member works too
    cur = fc.Curriculum(one_member())
    step_fn = fc.make_step(loss_fn, fc.sgd(0.1), fc.Sweep([cur, cur.freeze("head")]))
    new = step_fn(p, state, batches(1)[0])[0]
    assert torch.equal(new["head.weight"][1], p["head.weight"][1])
    assert not torch.equal(new["head.weight"][0], p["head.weight"][0])


def test_all_members_frozen_everywhere_costs_no_grads_and_logs_per_member(caplog):
    cur = fc.Curriculum(one_member())
    calls = []

    def counting_loss(q, batch):
        calls.append(sorted(k for k, v in q.items() if v.requires_grad or True))
        return loss_fn(q, batch)

    # head.bias frozen in every member: absent from the trainable part
    scheds = [
        fc.Schedule(cur.freeze("head.bias"), fc.Freezer(names="backbone", until_step=n))
        for n in (1, 2)
    ]
    step_fn = fc.make_sweep_step(counting_loss, fc.sgd(0.1), scheds)
    p = stacked_members(2)
    state, prev = vmap(fc.sgd(0.1).init)(p), None
    with caplog.at_level(logging.INFO, logger="funcurriculum"):
        for t, b in enumerate(batches(3)):
            p2, state, _, prev = step_fn(p, state, b, step=t, prev=prev)
            assert torch.equal(p2["head.bias"], p["head.bias"])
            p = p2
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "phase change of member 0 at step 1: unfroze ['backbone']",
        "phase change of member 1 at step 2: unfroze ['backbone']",
    ]


@pytest.mark.slow
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    plan=st.lists(
        st.tuples(
            st.integers(0, 6),  # backbone unfreeze step
            st.sampled_from([1.0, 0.5, 0.25, 0.0]),  # backbone coefficient
            st.integers(0, 6),  # head frozen from this step ...
            st.integers(1, 3),  # ... for this many steps
        ),
        min_size=1,
        max_size=4,
    ),
    name=st.sampled_from(sorted(OPTS)),
)
def test_property_random_per_member_schedules_equal_static_runs(plan, name):
    scheds = []
    for until, coeff, h0, hn in plan:
        rules = [
            fc.Freezer(name_starts_with="backbone", until_step=until),
            fc.Freezer(names="head.weight", start_step=h0, until_step=h0 + hn),
            fc.SetCoefficient(coeff, "backbone.1"),
        ]
        scheds.append(fc.Schedule(fc.Curriculum(one_member()), *rules))
    stacked = stacked_members(len(plan))
    data = batches(7, seed=len(plan))
    swept, state, _ = run_swept(OPTS[name], scheds, stacked, data)
    for i, s in enumerate(scheds):
        alone, alone_state = run_alone(OPTS[name], s, member(stacked, i), data)
        assert_trees_close(member(swept, i), alone, **TOL)
        assert_trees_close(member(state["count"], i), alone_state["count"])
        frozen_all_along = [k for k in NAMES if all(not s.at(step=t).masks[k] for t in range(7))]
        for k in frozen_all_along:
            assert torch.equal(swept[k][i], stacked[k][i])


# -- torch.compile ------------------------------------------------------------------------


@pytest.mark.slow
def test_compiled_sweep_is_one_graph_across_phase_changes():
    torch._dynamo.reset()
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    untils = (0, 2, 3, 5)  # member 0 trains everything from the start: the union is fixed
    scheds = [unfreeze_schedule(n, c) for n, c in zip(untils, (1.0, 0.5, 1.0, 0.25))]
    opt = fc.adam(0.05)
    step_c = fc.make_sweep_step(
        loss_fn, opt, scheds, compile={"backend": counting, "fullgraph": True}
    )
    step_e = fc.make_sweep_step(loss_fn, opt, scheds)
    p_c = p_e = stacked_members(len(untils))
    s_c = s_e = step_c.init(p_c)  # contiguous (vmap(opt.init)'s step is an expanded view)
    prev_c = prev_e = None
    for t, b in enumerate(batches(7)):
        p_c, s_c, l_c, prev_c = step_c(p_c, s_c, b, step=t, prev=prev_c)
    assert len(graphs) == 1  # four phase changes, one graph
    # (the eager run comes after: an eager update registers the DTensor tree engine that
    # dynamo's import of torch.distributed.tensor announced, a one-off recompile)
    for t, b in enumerate(batches(7)):
        p_e, s_e, l_e, prev_e = step_e(p_e, s_e, b, step=t, prev=prev_e)
    assert_trees_close(p_c, p_e, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(l_c, l_e, rtol=1e-7, atol=1e-9)
    for k in BACKBONE:  # compiled frozen members stay bit-identical too
        assert torch.equal(p_c[k][3], p_e[k][3])


@pytest.mark.slow
def test_compiled_sweep_recompiles_only_when_the_union_changes():
    torch._dynamo.reset()
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    untils = (2, 3, 5)  # the backbone joins the union at step 2, once
    scheds = [unfreeze_schedule(n) for n in untils]
    opt = fc.sgd(0.1, momentum=0.9)
    step_c = fc.make_sweep_step(
        loss_fn, opt, scheds, compile={"backend": counting, "fullgraph": True}
    )
    p = stacked_members(3)
    state, prev, seen = step_c.init(p), None, []
    for t, b in enumerate(batches(7)):
        p, state, _, prev = step_c(p, state, b, step=t, prev=prev)
        seen.append(len(graphs))
    assert seen == [1, 1, 2, 2, 2, 2, 2]


# -- docs/sweeps.md: its python blocks run top to bottom -----------------------------------


def test_sweeps_page_snippets_run():
    import re
    import textwrap
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "sweeps.md").read_text()
    blocks = [
        textwrap.dedent(m.group(2))
        for m in re.finditer(r"^( *)```python\n(.*?)^\1```", text, re.S | re.M)
    ]
    assert len(blocks) >= 2
    namespace: dict = {"__name__": "snippets_sweeps"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            for i, code in enumerate(blocks):
                exec(compile(code, f"docs/sweeps.md[block {i}]", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
