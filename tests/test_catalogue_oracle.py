"""The catalogue's optimizers against torch.optim as an oracle.

float64 params so tolerances are tight. The oracle is torch.optim (``foreach=False``)
on leaf copies of the params, one param group per leaf with ``lr * coefficient``; a
frozen leaf is absent from torch's optimizer and joins it with ``add_param_group``
when it is unfrozen (ours: ``transition`` gives it fresh state). Lion, which torch
lacks, is checked against a direct transcription of ``optax.lion``.
"""

from __future__ import annotations

import pytest
import torch

import funcurriculum as fc

RTOL, ATOL = 1e-10, 1e-12

SHAPES = {
    "enc.weight": (5, 4),
    "enc.bias": (5,),
    "mid.weight": (3, 5),
    "head.weight": (2, 3),
    "head.bias": (2,),
    "scale": (),
}
MATRICES = {"enc.weight": (5, 4), "mid.weight": (3, 6), "head.weight": (2, 3)}


class TorchLion(torch.optim.Optimizer):
    """optax.lion, transcribed (no torch.optim counterpart)."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, maximize=False):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))
        self.maximize = maximize

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = -p.grad if self.maximize else p.grad
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                m = state["exp_avg"]
                u = torch.sign((1 - b1) * g + b1 * m)
                state["exp_avg"] = (1 - b2) * g + b2 * m
                p.sub_(group["lr"] * (u + group["weight_decay"] * p))


TORCH = {
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
    "adamax": torch.optim.Adamax,
    "nadam": torch.optim.NAdam,
    "radam": torch.optim.RAdam,
    "adadelta": torch.optim.Adadelta,
    "adafactor": torch.optim.Adafactor,
    "muon": torch.optim.Muon,
    "lion": TorchLion,
}
NO_FOREACH = ("muon", "lion")  # no foreach keyword
LR = {
    "rmsprop": 0.01,
    "adagrad": 0.1,
    "adamax": 0.02,
    "nadam": 0.02,
    "radam": 0.01,
    "adadelta": 0.5,
    "adafactor": 0.05,
    "muon": 0.02,
    "lion": 0.01,
}

# hyperparameters inspired by torch/testing/_internal/common_optimizers.py
CASES = [
    ("rmsprop", {}),
    ("rmsprop", {"weight_decay": 0.1, "alpha": 0.9}),
    ("rmsprop", {"momentum": 0.9, "eps": 1e-6}),
    ("rmsprop", {"centered": True, "weight_decay": 0.1}),
    ("rmsprop", {"centered": True, "momentum": 0.5, "weight_decay": 0.1}),
    ("adagrad", {}),
    ("adagrad", {"weight_decay": 0.1}),
    ("adagrad", {"lr_decay": 0.5, "initial_accumulator_value": 0.1}),
    ("adagrad", {"lr_decay": 0.3, "weight_decay": 0.2, "eps": 1e-6}),
    ("adamax", {}),
    ("adamax", {"weight_decay": 0.1, "betas": (0.8, 0.95)}),
    ("adamax", {"eps": 1e-5}),
    ("nadam", {}),
    ("nadam", {"weight_decay": 0.1, "momentum_decay": 6e-3}),
    ("nadam", {"weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("nadam", {"betas": (0.8, 0.99), "eps": 1e-6}),
    ("radam", {}),
    ("radam", {"weight_decay": 0.1}),
    ("radam", {"weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("radam", {"betas": (0.7, 0.9)}),  # rho_inf = 19: the rectified branch from step 6
    ("adadelta", {}),
    ("adadelta", {"rho": 0.95, "weight_decay": 0.1}),
    ("adadelta", {"eps": 1e-4}),
    ("adafactor", {}),
    ("adafactor", {"weight_decay": 0.1, "beta2_decay": -0.5}),
    ("adafactor", {"eps": (1e-30, 1e-2), "d": 1.5}),
    ("muon", {}),
    ("muon", {"nesterov": False, "weight_decay": 0.0, "momentum": 0.9}),
    ("muon", {"adjust_lr_fn": "match_rms_adamw", "ns_steps": 3}),
    ("lion", {}),
    ("lion", {"betas": (0.95, 0.98), "weight_decay": 0.1}),
]
IDS = [f"{n}-" + ("-".join(f"{k}={v}" for k, v in kw.items()) or "default") for n, kw in CASES]
cases = pytest.mark.parametrize("case", CASES, ids=IDS)
NAMES = sorted(TORCH)


def shapes_for(name):
    return MATRICES if name == "muon" else SHAPES


def make_params(name, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g, dtype=dtype) for k, s in shapes_for(name).items()}


def make_grads(name, n, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [
        {k: torch.randn(s, generator=g, dtype=dtype) for k, s in shapes_for(name).items()}
        for _ in range(n)
    ]


def torch_kwargs(name, kw, maximize=False):
    out = dict(kw)
    if name not in NO_FOREACH:
        out["foreach"] = False
    if maximize:
        out["maximize"] = True
    return out


class Oracle:
    """torch.optim over leaf copies; one group per leaf, lr = sched(t) * coefficient."""

    def __init__(self, name, kw, params, coeffs, active, sched, maximize=False, no_decay=()):
        self.name, self.kw, self.coeffs, self.sched = name, kw, coeffs, sched
        self.no_decay = set(no_decay)
        self.maximize = maximize and name != "muon"  # torch's Muon: negate the grads
        self.negate = maximize and name == "muon"
        self.p = {k: v.detach().clone() for k, v in params.items()}
        self.active = set()
        self.opt = None
        for k in params:
            if k in active:
                self.unfreeze(k)
        self.t = 0

    def unfreeze(self, k):
        group = {"params": [self.p[k]], "lr": 0.0, "coeff": self.coeffs[k]}
        if k in self.no_decay:
            group["weight_decay"] = 0.0  # torch: a no-decay param group
        if self.opt is None:
            cls = TORCH[self.name]
            self.opt = cls([group], **torch_kwargs(self.name, self.kw, self.maximize))
        else:
            self.opt.add_param_group(group)
        self.active.add(k)

    def step(self, grads):
        for k, p in self.p.items():
            g = grads[k].clone() if k in self.active else None
            p.grad = -g if (g is not None and self.negate) else g
        if self.opt is not None:
            for g in self.opt.param_groups:
                g["lr"] = self.sched(self.t) * g["coeff"]
            self.opt.step()
        self.t += 1


def check_state(name, ours, oracle, k, rtol, atol):
    theirs = oracle.opt.state.get(oracle.p[k], {}) if oracle.opt is not None else {}
    for key, value in theirs.items():
        if key == "step":
            assert float(ours["count"][k]) == float(value), (k, "count")
            continue
        torch.testing.assert_close(
            ours[key][k].to(value.dtype).reshape(value.shape),
            value,
            rtol=rtol,
            atol=atol,
            msg=f"{key}[{k}]",
        )


def run(
    name,
    kw,
    phases,
    *,
    coeffs=None,
    lr=None,
    maximize=False,
    dtype=torch.float64,
    tol=(RTOL, ATOL),
    engine=None,
    donate=False,
    no_decay=(),
):
    """``phases``: list of (masks, number of updates); every update is checked."""
    params = make_params(name, dtype=dtype)
    coeffs = coeffs or {k: 1.0 for k in params}
    lr = LR[name] if lr is None else lr
    sched = lr if callable(lr) else (lambda t: lr)
    extra = {"maximize": True} if maximize else {}
    if no_decay:
        extra["weight_decay_mask"] = {k: k not in no_decay for k in params}
    opt = getattr(fc, name)(lr, **kw, **extra)
    if engine is not None:
        opt = opt.with_engine(engine)
    first = phases[0][0]
    active = [k for k in params if first[k]]
    oracle = Oracle(name, kw, params, coeffs, active, sched, maximize, no_decay)
    grads = make_grads(name, sum(n for _, n in phases), dtype=dtype)
    state = opt.init(params, first)
    prev, t = None, 0
    for masks, n in phases:
        if prev is not None:
            state = opt.transition(state, params, prev, masks)
            for k in params:
                if masks[k] and not prev[k]:
                    oracle.unfreeze(k)
        for _ in range(n):
            before = {k: v.clone() for k, v in params.items()}
            grad = {k: v for k, v in grads[t].items() if masks[k]}
            if donate:
                params = {k: v.clone() for k, v in params.items()}
            params, state = opt.update(params, grad, state, masks, coeffs, donate=donate)
            oracle.step(grads[t])
            t += 1
            for k in params:
                if masks[k]:
                    torch.testing.assert_close(
                        params[k], oracle.p[k], rtol=tol[0], atol=tol[1], msg=f"{k} at {t}"
                    )
                    check_state(name, state, oracle, k, *tol)
                else:
                    assert torch.equal(params[k], before[k]), k
        prev = masks
    return params, state


def all_on(name):
    return {k: True for k in shapes_for(name)}


@cases
def test_all_trainable_matches_torch(case):
    name, kw = case
    run(name, kw, [(all_on(name), 25)])


@cases
def test_coefficients_frozen_leaf_and_unfreeze_match_add_param_group(case):
    name, kw = case
    keys = list(shapes_for(name))
    first = {k: k != "head.weight" for k in keys}
    coeffs = {k: [1.0, 0.5, 2.0, 0.25][i % 4] for i, k in enumerate(keys)}
    run(name, kw, [(first, 8), (all_on(name), 12)], coeffs=coeffs)


@pytest.mark.parametrize("engine", ["reference", "generic"])
@pytest.mark.parametrize("case", CASES[::2], ids=IDS[::2])
def test_engines_match_torch(case, engine):
    """The rule's own math (reference and generic engines; auto takes the kernels)."""
    name, kw = case
    keys = list(shapes_for(name))
    first = {k: k != keys[0] for k in keys}
    run(name, kw, [(first, 5), (all_on(name), 6)], engine=engine)


@pytest.mark.parametrize("name", NAMES)
def test_donated_updates_match_torch(name):
    keys = list(shapes_for(name))
    first = {k: k != keys[-1] for k in keys}
    coeffs = {k: [0.5, 1.0, 2.0][i % 3] for i, k in enumerate(keys)}
    run(name, {}, [(first, 6), (all_on(name), 6)], coeffs=coeffs, donate=True)


# the optimizers with step-dependent terms: a leaf unfrozen late must start as in a fresh
# torch optimizer (its own count), not at the global step
LATE = [
    ("radam", {}),
    ("radam", {"betas": (0.7, 0.9), "decoupled_weight_decay": True, "weight_decay": 0.1}),
    ("nadam", {}),
    ("nadam", {"decoupled_weight_decay": True, "weight_decay": 0.1, "momentum_decay": 0.01}),
    ("adafactor", {}),
    ("adagrad", {"lr_decay": 0.1}),
    ("adamax", {}),
]


@pytest.mark.parametrize("case", LATE, ids=[f"{n}-{kw}" for n, kw in LATE])
def test_leaf_unfrozen_late_gets_fresh_torch_behaviour(case):
    name, kw = case
    keys = list(shapes_for(name))
    late = "mid.weight"
    first = {k: k != late for k in keys}
    _, state = run(name, kw, [(first, 60), (all_on(name), 8)])
    assert float(state["count"][late]) == 8.0
    assert float(state["count"][keys[0]]) == 68.0


def test_late_unfreeze_would_differ_at_the_global_count():
    """The late-unfreeze oracle is sensitive: RAdam's first update of a leaf at count 61
    (rectified) differs from a fresh leaf's (count 1, plain momentum SGD)."""
    rule = fc.radam(0.01).rule
    p, g = torch.ones(3, dtype=torch.float64), torch.full((3,), 0.5, dtype=torch.float64)
    fresh, _ = rule.step(p, g, rule.init(p), torch.tensor(1.0), 0.01)
    stale, _ = rule.step(p, g, rule.init(p), torch.tensor(61.0), 0.01)
    assert not torch.allclose(fresh, stale)


@pytest.mark.parametrize("name", NAMES)
def test_scheduled_lr_matches_torch(name):
    base = LR[name]
    run(name, {}, [(all_on(name), 12)], lr=fc.cosine(base, 10))


WD = {
    "rmsprop": {"weight_decay": 0.1},
    "adagrad": {"weight_decay": 0.1},
    "adamax": {"weight_decay": 0.1},
    "nadam": {"weight_decay": 0.1, "decoupled_weight_decay": True},
    "radam": {"weight_decay": 0.1},
    "adadelta": {"weight_decay": 0.1},
    "adafactor": {"weight_decay": 0.1},
    "muon": {"weight_decay": 0.1},
    "lion": {"weight_decay": 0.5},
}


@pytest.mark.parametrize("name", NAMES)
def test_weight_decay_mask_matches_a_no_decay_group(name):
    """``weight_decay_mask`` False on a leaf = torch with ``weight_decay=0`` in its group."""
    keys = list(shapes_for(name))
    no_decay = [k for k in keys if not k.endswith("weight")] or [keys[-1]]
    first = {k: k != keys[0] for k in keys}
    run(name, WD[name], [(first, 5), (all_on(name), 6)], no_decay=no_decay)


@pytest.mark.parametrize("name", NAMES)
def test_maximize_matches_torch(name):
    run(name, {}, [(all_on(name), 10)], maximize=True)


@pytest.mark.parametrize("name", NAMES)
def test_float32_matches_torch(name):
    run(name, {}, [(all_on(name), 10)], dtype=torch.float32, tol=(1e-5, 1e-6))


# -- complex ------------------------------------------------------------------------------

COMPLEX = ["rmsprop", "adagrad", "adamax", "nadam", "radam", "adadelta"]
COMPLEX_CASES = [(n, kw) for n, kw in CASES if n in COMPLEX]


@pytest.mark.parametrize(
    "case", COMPLEX_CASES, ids=[i for i, (n, _) in zip(IDS, CASES) if n in COMPLEX]
)
def test_complex_leaves_with_phases_match_torch(case):
    """Every hyperparameter setting on complex leaves, with coefficients, a frozen leaf and
    its unfreeze (torch: ``add_param_group``), moments compared too."""
    name, kw = case
    keys = list(shapes_for(name))
    first = {k: k != "head.weight" for k in keys}
    coeffs = {k: [1.0, 0.5, 2.0, 0.25][i % 4] for i, k in enumerate(keys)}
    run(name, kw, [(first, 5), (all_on(name), 7)], coeffs=coeffs, dtype=torch.complex128)


@pytest.mark.parametrize("kw", [{}, {"weight_decay": 0.1}], ids=["default", "wd"])
@pytest.mark.parametrize("name", COMPLEX)
def test_complex_leaves_match_torch(name, kw):
    gen = torch.Generator().manual_seed(3)
    p0 = torch.randn(4, 3, dtype=torch.complex128, generator=gen)
    grads = [torch.randn(4, 3, dtype=torch.complex128, generator=gen) for _ in range(8)]
    opt = getattr(fc, name)(LR[name], **kw)
    ref = p0.clone()
    topt = TORCH[name]([ref], lr=LR[name], **torch_kwargs(name, kw))
    params = {"z": p0}
    state = opt.init(params)
    for g in grads:
        params, state = opt.update(params, {"z": g}, state)
        ref.grad = g.clone()
        topt.step()
        torch.testing.assert_close(params["z"], ref, rtol=RTOL, atol=ATOL)


def test_complex_first_steps_move_the_imaginary_part():
    """p = 0, g = 1j: torch moves the imaginary part only (real pairs)."""
    for name in COMPLEX:
        opt = getattr(fc, name)(0.1)
        params = {"z": torch.zeros(2, dtype=torch.complex64)}
        state = opt.init(params)
        for _ in range(3):
            params, state = opt.update(params, {"z": torch.full((2,), 1j)}, state)
        assert torch.all(params["z"].real == 0), name
        assert torch.all(params["z"].imag < 0), name


def test_lion_complex_is_the_real_pair_update():
    gen = torch.Generator().manual_seed(4)
    z = torch.randn(3, 2, dtype=torch.complex128, generator=gen)
    gs = [torch.randn(3, 2, dtype=torch.complex128, generator=gen) for _ in range(5)]
    opt = fc.lion(0.01, weight_decay=0.1)
    pz, sz = {"z": z}, opt.init({"z": z})
    pr = {"z": torch.view_as_real(z).clone()}
    sr = opt.init(pr)
    for g in gs:
        pz, sz = opt.update(pz, {"z": g}, sz)
        pr, sr = opt.update(pr, {"z": torch.view_as_real(g)}, sr)
    torch.testing.assert_close(torch.view_as_real(pz["z"]), pr["z"], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["adafactor", "muon"])
def test_complex_refused_where_torch_refuses(name):
    opt = getattr(fc, name)(0.01)
    with pytest.raises(TypeError, match="complex") as info:
        opt.init({"w": torch.zeros(3, 3), "enc.z": torch.zeros(3, 3, dtype=torch.complex64)})
    assert "'enc.z'" in str(info.value)
    theirs = TORCH[name]([torch.zeros(3, 3, dtype=torch.complex64, requires_grad=True)], lr=0.01)
    with pytest.raises(Exception, match="(?i)complex"):  # torch refuses it too
        for p in theirs.param_groups[0]["params"]:
            p.grad = torch.ones_like(p)
        theirs.step()


# -- Muon's shape contract -----------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3,), (), (2, 3, 4)])
def test_muon_refuses_leaves_that_are_not_2d(shape):
    opt = fc.muon(0.02)
    with pytest.raises(ValueError, match="multi_optimizer") as info:
        opt.init({"w": torch.zeros(2, 2), "bad.leaf": torch.zeros(shape)})
    assert "2-D" in str(info.value) and "'bad.leaf'" in str(info.value)


def test_muon_refuses_a_vector_unfrozen_by_a_transition():
    opt = fc.muon(0.02)
    p = {"w": torch.zeros(2, 2), "b": torch.zeros(3)}
    state = opt.init(p, {"w": True, "b": False})
    with pytest.raises(ValueError, match="multi_optimizer") as info:
        opt.transition(state, p, {"w": True, "b": False}, {"w": True, "b": True})
    assert "'b'" in str(info.value)


def test_muon_frozen_non_matrix_is_accepted_while_frozen():
    """Only trainable leaves get buffers: a frozen bias is not refused at init."""
    opt = fc.muon(0.02)
    state = opt.init({"w": torch.zeros(2, 2), "b": torch.zeros(2)}, {"w": True, "b": False})
    assert state["momentum_buffer"]["w"].shape == (2, 2)


# -- validation ---------------------------------------------------------------------------

BAD = [
    ("rmsprop", {"alpha": -0.1}, ValueError),
    ("rmsprop", {"centered": 1}, TypeError),
    ("adagrad", {"lr_decay": -1.0}, ValueError),
    ("adamax", {"betas": (0.9, 1.0)}, ValueError),
    ("nadam", {"momentum_decay": "x"}, TypeError),
    ("radam", {"betas": (0.9,)}, ValueError),
    ("adadelta", {"rho": 1.5}, ValueError),
    ("adafactor", {"beta2_decay": 0.5}, ValueError),
    ("adafactor", {"d": 0.5}, ValueError),
    ("adafactor", {"eps": 1e-3}, ValueError),
    ("muon", {"ns_steps": 100}, ValueError),
    ("muon", {"adjust_lr_fn": "rms"}, ValueError),
    ("lion", {"weight_decay": float("nan")}, ValueError),
]


@pytest.mark.parametrize("name,kw,exc", BAD, ids=[f"{n}-{list(kw)[0]}" for n, kw, _ in BAD])
def test_bad_hyperparameters_name_the_keyword(name, kw, exc):
    with pytest.raises(exc, match=f"fc.{name}: {list(kw)[0]}"):
        getattr(fc, name)(0.1, **kw)


def test_every_factory_keyword_has_a_checker():
    """The catalogue's one validator (``_factory.check_keywords``) knows every
    hyperparameter of every factory: a new keyword cannot skip validation."""
    import inspect

    from funcurriculum.catalogue import _factory

    for name in NAMES:
        module = __import__(f"funcurriculum.catalogue._{name}", fromlist=["_SPEC"])
        spec = module._SPEC
        assert spec.name == name
        for key in inspect.signature(getattr(fc, name)).parameters:
            if key == "lr" or key in _factory.OPTIONS:
                continue
            assert key in spec.checks or key in _factory.CHECKS, (name, key)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("option", ["maximize", "differentiable"])
def test_bad_option_refused(name, option):
    with pytest.raises(TypeError, match=f"fc.{name}: {option}"):
        getattr(fc, name)(0.1, **{option: 1})


@pytest.mark.parametrize("name", NAMES)
def test_negative_lr_refused(name):
    with pytest.raises(ValueError, match="lr"):
        getattr(fc, name)(-1.0)


@pytest.mark.parametrize("name", NAMES)
def test_defaults_are_torch_defaults(name):
    """Each keyword's default equals torch.optim's (Lion: the paper's betas)."""
    import inspect

    ours = inspect.signature(getattr(fc, name)).parameters
    if name == "lion":
        assert ours["betas"].default == (0.9, 0.99) and ours["weight_decay"].default == 0.0
        return
    theirs = inspect.signature(TORCH[name].__init__).parameters
    for key, p in ours.items():
        if key in ("weight_decay_mask", "maximize", "differentiable") and key not in theirs:
            continue
        if key == "differentiable" and name in ("adafactor",):
            continue
        assert key in theirs, (name, key)
        assert p.default == theirs[key].default, (name, key, p.default, theirs[key].default)
