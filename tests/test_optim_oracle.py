"""funcurriculum's optimizers against torch.optim as an oracle.

float64 params so the tolerance can be tight. The oracle is torch.optim (foreach=False)
on leaf copies of the params:

* per-layer coefficients  -> one param group per distinct coefficient, lr = lr * coeff
* frozen leaves           -> absent from the optimizer (never added, or ``grad=None``,
                             which torch.optim skips exactly like ``requires_grad=False``)
* first unfreeze          -> ``add_param_group`` at that step
* re-unfreeze             -> that param's torch state cleared (``opt.state.pop(p)``)
* schedules               -> ``LambdaLR`` (or group lrs set to ``schedule(t) * coeff``
                             before update ``t``, ``t`` = completed updates)
"""

from __future__ import annotations

import pytest
import torch

import funcurriculum as fc

RTOL, ATOL = 1e-10, 1e-12

SHAPES = {
    "backbone.conv.weight": (4, 3),
    "backbone.conv.bias": (4,),
    "backbone.fc.weight": (3, 4),
    "backbone.fc.bias": (3,),
    "head.weight": (2, 3),
    "head.bias": (2,),
}
CONV = ["backbone.conv.weight", "backbone.conv.bias"]
BACKBONE = [k for k in SHAPES if k.startswith("backbone.")]
HEAD = ["head.weight", "head.bias"]

TORCH = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
MOMENTS = {
    "sgd": ["momentum_buffer"],
    "adam": ["exp_avg", "exp_avg_sq"],
    "adamw": ["exp_avg", "exp_avg_sq"],
}
BASE_LR = {"sgd": 0.1, "adam": 0.05, "adamw": 0.05}

CASES = [
    ("sgd", {}),
    ("sgd", {"momentum": 0.9}),
    ("sgd", {"momentum": 0.9, "dampening": 0.3}),
    ("sgd", {"momentum": 0.9, "nesterov": True}),
    ("sgd", {"momentum": 0.8, "weight_decay": 0.05}),
    ("sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("adam", {}),
    ("adam", {"betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 0.1}),
    ("adamw", {}),  # both default to weight_decay=1e-2
    ("adamw", {"betas": (0.85, 0.99), "eps": 1e-7, "weight_decay": 0.3}),
]
CASE_IDS = [f"{n}-" + ("-".join(f"{k}={v}" for k, v in kw.items()) or "default") for n, kw in CASES]
cases = pytest.mark.parametrize("case", CASES, ids=CASE_IDS)


def make_params(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g, dtype=dtype) for k, s in SHAPES.items()}


def make_grads(n, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [
        {k: torch.randn(s, generator=g, dtype=dtype) for k, s in SHAPES.items()} for _ in range(n)
    ]


def has_moments(name, kw):
    return name != "sgd" or kw.get("momentum", 0.0) != 0.0


def leaf_state(state, k):
    """Per-leaf slice of our optimizer state: {key: tensor} for every key but "step"."""
    return {key: sub[k] for key, sub in state.items() if key != "step"}


def assert_leaf_state_equal(a, b, where):
    assert a.keys() == b.keys(), where
    for key in a:
        assert a[key].dtype == b[key].dtype, (where, key)
        assert torch.equal(a[key], b[key]), (where, key)


class Oracle:
    """torch.optim on leaf copies of ``params``; one group per distinct coefficient."""

    def __init__(self, name, kw, params, coeffs, active, sched):
        self.name, self.kw, self.coeffs, self.sched = name, kw, coeffs, sched
        self.p = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        self.active = set(active)
        self.added = set()
        self.count = {k: 0 for k in params}  # completed updates since the leaf's last (re)start
        self.t = 0
        self.opt = None
        by_coeff: dict[float, list[str]] = {}
        for k in params:
            if k in self.active:
                by_coeff.setdefault(coeffs[k], []).append(k)
        for c, names in by_coeff.items():
            self._add_group(names, c)

    def _add_group(self, names, c):
        group = {"params": [self.p[k] for k in names], "lr": 0.0, "coeff": c}
        if self.opt is None:
            self.opt = TORCH[self.name]([group], foreach=False, **self.kw)
        else:
            self.opt.add_param_group(group)
        self.added.update(names)

    def freeze(self, k):
        self.active.discard(k)

    def unfreeze(self, k):
        if k not in self.added:
            self._add_group([k], self.coeffs[k])  # first activation: a new param group
        else:
            self.opt.state.pop(self.p[k], None)  # re-activation: fresh torch state
        self.count[k] = 0
        self.active.add(k)

    def step(self, grads):
        for k, p in self.p.items():
            p.grad = grads[k].clone() if k in self.active else None
        if self.opt is not None:
            lr = self.sched(self.t)
            for g in self.opt.param_groups:
                g["lr"] = lr * g["coeff"]
            self.opt.step()
        for k in self.active:
            self.count[k] += 1
        self.t += 1

    def torch_state(self, k):
        if self.opt is None:
            return {}
        return dict(self.opt.state.get(self.p[k], {}))


def assert_matches(params, state, oracle, rtol=RTOL, atol=ATOL):
    assert int(state["step"]) == oracle.t
    for k, p in oracle.p.items():
        torch.testing.assert_close(
            params[k], p.detach(), rtol=rtol, atol=atol, msg=lambda m, k=k: f"{k}: {m}"
        )
        assert float(state["count"][k]) == oracle.count[k], k
        ts = oracle.torch_state(k)
        if "step" in ts:
            assert float(ts["step"]) == oracle.count[k]  # oracle sanity
        for key in MOMENTS[oracle.name]:
            if key not in state:
                assert not has_moments(oracle.name, oracle.kw)
                continue
            ours = state[key][k]
            if key in ts:
                torch.testing.assert_close(
                    ours,
                    ts[key],
                    rtol=rtol,
                    atol=atol,
                    msg=lambda m, k=k, key=key: f"{key}[{k}]: {m}",
                )
            else:  # no torch state: never updated since the leaf's (re)start
                assert oracle.count[k] == 0
                assert ours.numel() == 0 or not ours.any(), (key, k)


def run_scenario(
    name, kw, phases, *, coeffs=None, lr=None, seed=0, dtype=torch.float64, tol=(RTOL, ATOL)
):
    """``phases``: list of (masks dict, number of updates). Checks every update against torch."""
    params = make_params(seed, dtype)
    params0 = {k: v.clone() for k, v in params.items()}
    dense_coeffs = (
        {k: float(c) for k, c in coeffs.items()} if coeffs is not None else {k: 1.0 for k in params}
    )
    if lr is None:
        lr = BASE_LR[name]
    sched = lr if callable(lr) else (lambda t: lr)
    opt = getattr(fc, name)(lr, **kw)
    first = phases[0][0]
    oracle = Oracle(name, kw, params, dense_coeffs, [k for k in params if first[k]], sched)
    grads = make_grads(sum(n for _, n in phases), seed + 1, dtype)
    state = opt.init(params, first)
    prev = None
    for masks, n in phases:
        if prev is not None:
            state = opt.transition(state, params, prev, masks)
            for k in params:
                if masks[k] and not prev[k]:
                    oracle.unfreeze(k)
                elif prev[k] and not masks[k]:
                    oracle.freeze(k)
        for _ in range(n):
            frozen_before = {
                k: (params[k].clone(), {a: b.clone() for a, b in leaf_state(state, k).items()})
                for k in params
                if not masks[k]
            }
            g = grads[oracle.t]
            params, state = opt.update(params, g, state, masks, coeffs)
            oracle.step(g)
            assert_matches(params, state, oracle, *tol)
            for k, (p_old, s_old) in frozen_before.items():
                assert params[k].dtype == p_old.dtype and torch.equal(params[k], p_old), k
                assert_leaf_state_equal(leaf_state(state, k), s_old, k)
        prev = masks
    return params0, params, state, oracle, opt


def all_true():
    return {k: True for k in SHAPES}


@cases
def test_all_trainable_matches_torch(case):
    name, kw = case
    params0, params, state, oracle, _ = run_scenario(name, kw, [(all_true(), 6)])
    assert all(not torch.equal(params[k], params0[k]) for k in SHAPES)  # the test is not vacuous


@cases
@pytest.mark.parametrize("as_tensor", [False, True], ids=["float-coeffs", "tensor-coeffs"])
def test_layer_coefficients_match_per_layer_param_groups(case, as_tensor):
    name, kw = case
    cur = (
        fc.Curriculum(make_params())
        .set_lr_coefficient(0.1, "backbone")
        .set_lr_coefficient(0.5, "backbone.fc")
        .set_lr_coefficient(3.0, "head.bias")
    )
    expected = {
        "backbone.conv.weight": 0.1,
        "backbone.conv.bias": 0.1,
        "backbone.fc.weight": 0.5,
        "backbone.fc.bias": 0.5,
        "head.weight": 1.0,
        "head.bias": 3.0,
    }
    assert cur.coeffs == expected
    coeffs = (
        {k: torch.tensor(c, dtype=torch.float64) for k, c in expected.items()}
        if as_tensor
        else cur.coeffs
    )
    _, _, _, oracle, _ = run_scenario(name, kw, [(all_true(), 5)], coeffs=coeffs)
    assert len(oracle.opt.param_groups) == 4  # one torch group per distinct coefficient


@cases
def test_zero_coefficient_keeps_param_but_advances_state(case):
    name, kw = case
    cur = (
        fc.Curriculum(make_params())
        .set_lr_coefficient(0.0, "head")
        .set_lr_coefficient(0.5, "backbone.fc")
    )
    params0, params, state, oracle, _ = run_scenario(name, kw, [(all_true(), 5)], coeffs=cur.coeffs)
    for k in HEAD:
        assert torch.equal(params[k], params0[k]), k
        assert float(state["count"][k]) == 5.0
        if has_moments(name, kw):
            for key in MOMENTS[name]:
                assert state[key][k].shape == params0[k].shape and state[key][k].abs().sum() > 0
    for k in BACKBONE:
        assert not torch.equal(params[k], params0[k])


@cases
def test_frozen_layers_are_bit_identical(case):
    name, kw = case
    cur = fc.Curriculum(make_params()).freeze("backbone.conv").set_lr_coefficient(0.5, "head")
    masks = cur.masks
    assert masks == {k: k not in CONV for k in SHAPES}
    params0, params, state, oracle, opt = run_scenario(name, kw, [(masks, 5)], coeffs=cur.coeffs)
    init_state = opt.init(params0, masks)
    for k in CONV:
        assert oracle.p[k] not in oracle.opt.state  # oracle sanity: torch never saw them
        assert params[k].dtype == params0[k].dtype and torch.equal(params[k], params0[k])
        assert_leaf_state_equal(leaf_state(state, k), leaf_state(init_state, k), k)
        assert float(state["count"][k]) == 0.0
        for key in MOMENTS[name]:
            if key in state:  # frozen at init: no moment buffers
                assert state[key][k].numel() == 0, (key, k)
    assert int(state["step"]) == 5


@cases
@pytest.mark.parametrize("scheduled", [False, True], ids=["const", "sched"])
def test_unfreeze_phase_matches_add_param_group(case, scheduled):
    name, kw = case
    base = BASE_LR[name]
    lr = (
        fc.join(
            [fc.linear_warmup(base, 3, start=base / 4), fc.cosine(base, 6, final=base / 10)], [3]
        )
        if scheduled
        else None
    )
    cur0 = fc.Curriculum(make_params()).freeze("backbone").set_lr_coefficient(0.5, "backbone.conv")
    cur1 = cur0.unfreeze("backbone")
    assert cur1.masks == all_true() and cur1.coeffs == cur0.coeffs
    _, params, state, oracle, _ = run_scenario(
        name, kw, [(cur0.masks, 3), (cur1.masks, 4)], coeffs=cur0.coeffs, lr=lr
    )
    assert int(state["step"]) == 7
    for k in BACKBONE:
        assert float(state["count"][k]) == 4.0
    for k in HEAD:
        assert float(state["count"][k]) == 7.0


@cases
def test_refreeze_then_unfreeze_matches_cleared_torch_state(case):
    name, kw = case
    base = BASE_LR[name]
    lr = fc.step_lr(base, 2, 0.7)
    cur = (
        fc.Curriculum(make_params())
        .set_lr_coefficient(2.0, "head")
        .set_lr_coefficient(0.3, "backbone.fc")
    )
    phases = [
        (cur.masks, 3),
        (cur.freeze("head").masks, 2),
        (cur.freeze("backbone.fc.weight").masks, 2),  # head back (fresh), fc.weight frozen (kept)
        (cur.masks, 2),  # fc.weight back (fresh)
    ]
    _, params, state, oracle, _ = run_scenario(name, kw, phases, coeffs=cur.coeffs, lr=lr)
    assert int(state["step"]) == 9
    assert float(state["count"]["head.weight"]) == 4.0
    assert float(state["count"]["backbone.fc.weight"]) == 2.0
    assert float(state["count"]["backbone.conv.weight"]) == 9.0


SCHEDULES = {
    "step_lr": lambda b: fc.step_lr(b, 3, 0.5),
    "cosine": lambda b: fc.cosine(b, 6, final=b / 10),
    "warmup": lambda b: fc.linear_warmup(b, 4, start=b / 5),
    "join": lambda b: fc.join([fc.linear_warmup(b, 3, start=b / 4), fc.cosine(b, 5)], [3]),
}


def _run_against_lambda_lr(name, kw, sched, params, coeffs, grads):
    """Our optimizer with lr schedule ``sched`` and torch's with one param group per leaf
    (lr = the leaf's coefficient) under ``LambdaLR(sched)``, stepped on the same grads.
    Returns our params and state, torch's params and optimizer."""
    tp = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    topt = TORCH[name]([{"params": [tp[k]], "lr": coeffs[k]} for k in tp], foreach=False, **kw)
    lambda_lr = torch.optim.lr_scheduler.LambdaLR(topt, sched)
    opt = getattr(fc, name)(sched, **kw)
    state = opt.init(params)
    for g in grads:
        params, state = opt.update(params, g, state, None, coeffs)
        for k, p in tp.items():
            p.grad = g[k].clone()
        topt.step()
        lambda_lr.step()
    return params, state, tp, topt


@pytest.mark.parametrize(
    "case", [CASES[2], CASES[5], CASES[7], CASES[9]], ids=[CASE_IDS[i] for i in (2, 5, 7, 9)]
)
@pytest.mark.parametrize("sched_name", list(SCHEDULES))
def test_schedule_matches_lambda_lr(case, sched_name):
    name, kw = case
    sched = SCHEDULES[sched_name](BASE_LR[name])
    params = make_params()
    cur = (
        fc.Curriculum(params)
        .set_lr_coefficient(0.5, "backbone")
        .set_lr_coefficient(0.0, "head.bias")
    )
    params, state, tp, topt = _run_against_lambda_lr(
        name, kw, sched, params, cur.coeffs, make_grads(8)
    )
    for k, p in tp.items():
        torch.testing.assert_close(params[k], p.detach(), rtol=RTOL, atol=ATOL)
        for key in MOMENTS[name]:
            torch.testing.assert_close(state[key][k], topt.state[p][key], rtol=RTOL, atol=ATOL)
    assert int(state["step"]) == 8


@pytest.mark.parametrize(
    "case", [CASES[1], CASES[7], CASES[8]], ids=[CASE_IDS[i] for i in (1, 7, 8)]
)
def test_callable_lr_matches_lambda_lr(case):
    name, kw = case
    base = BASE_LR[name]

    def my_lr(step):  # written for ints and tensors alike
        s = step.to(torch.float64) if torch.is_tensor(step) else float(step)
        return base / (1.0 + 0.5 * s)

    params = make_params(3)
    coeffs = fc.Curriculum(params).set_lr_coefficient(0.25, "backbone.conv").coeffs
    params, _, tp, _ = _run_against_lambda_lr(
        name, kw, my_lr, params, coeffs, make_grads(6, seed=4)
    )
    for k, p in tp.items():
        torch.testing.assert_close(params[k], p.detach(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    "case", [CASES[2], CASES[3], CASES[7], CASES[9]], ids=[CASE_IDS[i] for i in (2, 3, 7, 9)]
)
def test_transition_fresh_leaf_first_update_equals_fresh_torch(case):
    name, kw = case
    sched = fc.step_lr(BASE_LR[name], 2, 0.5)
    assert sched(3) != sched(0)  # so a restarted global step would show
    params = make_params(5)
    grads = make_grads(4, seed=6)
    cur0 = fc.Curriculum(params).freeze("backbone.conv").set_lr_coefficient(0.5, "backbone.conv")
    cur1 = cur0.unfreeze("backbone.conv")
    opt = getattr(fc, name)(sched, **kw)
    state = opt.init(params, cur0.masks)
    for t in range(3):
        params, state = opt.update(params, grads[t], state, cur0.masks, cur0.coeffs)

    snap = {k: leaf_state(state, k) for k in SHAPES}
    snap = {k: {a: b.clone() for a, b in d.items()} for k, d in snap.items()}
    step_before = state["step"].clone()
    new_state = opt.transition(state, params, cur0.masks, cur1.masks)

    # the input state is untouched, the global step goes on
    for k in SHAPES:
        assert_leaf_state_equal(leaf_state(state, k), snap[k], k)
    assert torch.equal(new_state["step"], step_before) and int(new_state["step"]) == 3
    for k in SHAPES:
        if k in CONV:  # just activated: fresh
            assert float(new_state["count"][k]) == 0.0
            for key in MOMENTS[name]:
                if key in new_state:
                    assert new_state[key][k].shape == params[k].shape
                    assert not new_state[key][k].any()
        else:  # every other leaf: same values
            assert_leaf_state_equal(leaf_state(new_state, k), snap[k], k)

    new_params, state2 = opt.update(params, grads[3], new_state, cur1.masks, cur1.coeffs)
    assert int(state2["step"]) == 4
    for k in CONV:
        p = params[k].clone().requires_grad_(True)
        fresh = TORCH[name]([p], lr=sched(3) * 0.5, foreach=False, **kw)
        p.grad = grads[3][k].clone()
        fresh.step()
        torch.testing.assert_close(new_params[k], p.detach(), rtol=RTOL, atol=ATOL)
        assert float(state2["count"][k]) == 1.0
        for key in MOMENTS[name]:
            if key in state2:
                torch.testing.assert_close(
                    state2[key][k], fresh.state[p][key], rtol=RTOL, atol=ATOL
                )


@cases
def test_float32_phases_match_torch(case):
    """The same machinery on float32 params (looser tolerance)."""
    name, kw = case
    cur = (
        fc.Curriculum(make_params())
        .freeze("backbone.conv")
        .set_lr_coefficient(0.5, "backbone")
        .set_lr_coefficient(0.0, "head.bias")
    )
    phases = [(cur.masks, 2), (all_true(), 2), (cur.freeze("head").masks, 1), (all_true(), 2)]
    _, params, state, _, _ = run_scenario(
        name,
        kw,
        phases,
        coeffs=cur.coeffs,
        lr=fc.cosine(BASE_LR[name], 7),
        dtype=torch.float32,
        tol=(1e-5, 1e-6),
    )
    assert all(v.dtype == torch.float32 for v in params.values())
