"""The torch-parity LR schedules against torch.optim.lr_scheduler, value by value.

torch's lr at update ``t`` is the group's lr after ``t`` calls of ``scheduler.step()``.
ExponentialLR, MultiStepLR, LinearLR, PolynomialLR and CosineAnnealingLR step in their
chainable form (each lr from the previous one), which drifts from the closed form by a
few ulps per step: those compare with ``rtol=1e-11`` (about 1e5 ulps) over 3000 steps.
CosineAnnealingWarmRestarts, OneCycleLR and CyclicLR compute each lr from the base values
and compare with ``rtol=1e-13``. Every schedule is checked for int steps, a tensor of
steps, and under ``torch.func.vmap``.
"""

from __future__ import annotations

import pytest
import torch
from torch.optim import lr_scheduler as L

import funcurriculum as fc

N = 3000
CHAINABLE_RTOL = 1e-11
DIRECT_RTOL = 1e-13


def torch_lrs(make, base, n=N):
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=base, momentum=0.9)
    sched = make(opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return torch.tensor(out, dtype=torch.float64)


CASES = [
    ("exp", lambda: fc.exponential_lr(0.1, 0.999), lambda o: L.ExponentialLR(o, 0.999), 0.1, True),
    (
        "multistep",
        lambda: fc.multistep_lr(0.1, [30, 80, 80, 1500], gamma=0.3),
        lambda o: L.MultiStepLR(o, [30, 80, 80, 1500], gamma=0.3),
        0.1,
        True,
    ),
    ("linear", lambda: fc.linear_lr(0.1), lambda o: L.LinearLR(o), 0.1, True),
    (
        "linear-long",
        lambda: fc.linear_lr(0.1, start_factor=0.01, end_factor=0.5, total_iters=1000),
        lambda o: L.LinearLR(o, start_factor=0.01, end_factor=0.5, total_iters=1000),
        0.1,
        True,
    ),
    (
        "linear-down",
        lambda: fc.linear_lr(0.1, start_factor=1.0, end_factor=0.0, total_iters=700),
        lambda o: L.LinearLR(o, start_factor=1.0, end_factor=0.0, total_iters=700),
        0.1,
        True,
    ),
    ("poly", lambda: fc.polynomial_lr(0.1), lambda o: L.PolynomialLR(o), 0.1, True),
    (
        "poly-long",
        lambda: fc.polynomial_lr(0.1, total_iters=2000, power=2.5),
        lambda o: L.PolynomialLR(o, total_iters=2000, power=2.5),
        0.1,
        True,
    ),
    (
        "cosine-in-range",
        lambda: fc.cosine(0.1, N, final=0.001),
        lambda o: L.CosineAnnealingLR(o, T_max=N, eta_min=0.001),
        0.1,
        True,
    ),
    (
        "warm-restarts",
        lambda: fc.cosine_warm_restarts(0.1, 50),
        lambda o: L.CosineAnnealingWarmRestarts(o, 50),
        0.1,
        False,
    ),
    (
        "warm-restarts-mult",
        lambda: fc.cosine_warm_restarts(0.1, 7, t_mult=2, eta_min=0.01),
        lambda o: L.CosineAnnealingWarmRestarts(o, 7, T_mult=2, eta_min=0.01),
        0.1,
        False,
    ),
    (
        "warm-restarts-mult3",
        lambda: fc.cosine_warm_restarts(0.1, 1, t_mult=3),
        lambda o: L.CosineAnnealingWarmRestarts(o, 1, T_mult=3),
        0.1,
        False,
    ),
    (
        "one-cycle",
        lambda: fc.one_cycle(0.1, N),
        lambda o: L.OneCycleLR(o, 0.1, total_steps=N, cycle_momentum=False),
        0.1,
        False,
    ),
    (
        "one-cycle-linear-3",
        lambda: fc.one_cycle(
            0.5, N, pct_start=0.25, anneal_strategy="linear", div_factor=10, three_phase=True
        ),
        lambda o: L.OneCycleLR(
            o,
            0.5,
            total_steps=N,
            pct_start=0.25,
            anneal_strategy="linear",
            div_factor=10,
            three_phase=True,
            cycle_momentum=False,
        ),
        0.1,
        False,
    ),
    (
        "cyclic",
        lambda: fc.cyclic_lr(0.01, 0.1, step_size_up=37),
        lambda o: L.CyclicLR(o, 0.01, 0.1, step_size_up=37, cycle_momentum=False),
        0.01,
        False,
    ),
    (
        "cyclic-tri2",
        lambda: fc.cyclic_lr(0.01, 0.1, step_size_up=20, step_size_down=45, mode="triangular2"),
        lambda o: L.CyclicLR(
            o,
            0.01,
            0.1,
            step_size_up=20,
            step_size_down=45,
            mode="triangular2",
            cycle_momentum=False,
        ),
        0.01,
        False,
    ),
    (
        "cyclic-exp",
        lambda: fc.cyclic_lr(0.01, 0.1, step_size_up=30, mode="exp_range", gamma=0.999),
        lambda o: L.CyclicLR(
            o, 0.01, 0.1, step_size_up=30, mode="exp_range", gamma=0.999, cycle_momentum=False
        ),
        0.01,
        False,
    ),
]
cases = pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])


def rtol_of(chainable):
    return CHAINABLE_RTOL if chainable else DIRECT_RTOL


@cases
def test_int_steps_match_torch(case):
    _, ours, theirs, base, chainable = case
    s = ours()
    got = torch.tensor([s(t) for t in range(N)], dtype=torch.float64)
    assert all(isinstance(s(t), float) for t in (0, 1, N - 1))
    torch.testing.assert_close(got, torch_lrs(theirs, base), rtol=rtol_of(chainable), atol=1e-15)


@cases
def test_tensor_steps_and_vmap_match_torch(case):
    _, ours, theirs, base, chainable = case
    s = ours()
    steps = torch.arange(N)
    expected = torch_lrs(theirs, base)
    tol = dict(rtol=rtol_of(chainable), atol=1e-15)
    got = s(steps)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, **tol)
    torch.testing.assert_close(torch.func.vmap(s)(steps), expected, **tol)
    ints = torch.tensor([s(t) for t in range(N)], dtype=torch.float64)
    torch.testing.assert_close(got, ints, rtol=1e-14, atol=1e-16)  # int and tensor agree


def test_compiled_schedule_matches_eager():
    s = fc.one_cycle(0.1, 100)
    steps = torch.arange(100)
    compiled = torch.compile(s, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(steps), s(steps), rtol=1e-14, atol=0)


def test_one_cycle_past_total_steps():
    s = fc.one_cycle(0.1, 10)
    with pytest.raises(ValueError, match="total_steps"):
        s(11)
    assert float(s(torch.tensor(50))) == float(s(torch.tensor(10)))


def test_cosine_past_total_steps_holds_final_unlike_torch():
    """fc.cosine holds ``final`` after ``total_steps``; CosineAnnealingLR keeps going round
    the cosine (back up to ``base`` at ``2 * T_max``). Documented in docs/catalogue.md."""
    s = fc.cosine(0.1, 10, final=0.0)
    theirs = torch_lrs(lambda o: L.CosineAnnealingLR(o, T_max=10), 0.1, n=25)
    assert s(15) == 0.0 and s(20) == 0.0
    assert theirs[15] > 0.01 and abs(float(theirs[20]) - 0.1) < 1e-12


@pytest.mark.parametrize(
    "make,exc",
    [
        (lambda: fc.exponential_lr(0.1, -1.0), ValueError),
        (lambda: fc.multistep_lr(0.1, [1.5]), TypeError),
        (lambda: fc.linear_lr(0.1, start_factor=0.0), ValueError),
        (lambda: fc.polynomial_lr(0.1, total_iters=0), ValueError),
        (lambda: fc.cosine_warm_restarts(0.1, 0), ValueError),
        (lambda: fc.one_cycle(0.1, 10, anneal_strategy="cosine"), ValueError),
        (lambda: fc.cyclic_lr(0.1, 0.2, mode="tri"), ValueError),
    ],
)
def test_bad_arguments_are_refused(make, exc):
    with pytest.raises(exc):
        make()


def test_schedule_drives_an_optimizer_like_torch():
    """An optimizer with a torch-parity schedule follows torch's scheduler step for step."""
    base = 0.1
    s = fc.multistep_lr(base, [3, 6], gamma=0.5)
    opt = fc.sgd(s)
    p = {"w": torch.ones(3, dtype=torch.float64)}
    state = opt.init(p)
    ref = torch.ones(3, dtype=torch.float64, requires_grad=True)
    topt = torch.optim.SGD([ref], lr=base)
    tsched = L.MultiStepLR(topt, [3, 6], gamma=0.5)
    for t in range(10):
        g = torch.full((3,), float(t + 1), dtype=torch.float64)
        p, state = opt.update(p, {"w": g}, state)
        ref.grad = g.clone()
        topt.step()
        tsched.step()
        torch.testing.assert_close(p["w"], ref.detach(), rtol=1e-14, atol=0)


@cases
def test_compiled_schedules_match_eager(case):
    """Every schedule compiles to one graph (tensor ops only) with the eager values."""
    s = case[1]()
    steps = torch.arange(400)
    compiled = torch.compile(s, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(steps), s(steps), rtol=1e-14, atol=0)
    torch.testing.assert_close(
        compiled(torch.tensor(123)), s(torch.tensor(123)), rtol=1e-14, atol=0
    )


# the table's other rows: torch schedulers written with the existing schedules
TABLE = [
    ("StepLR", lambda: fc.step_lr(0.1, 30, gamma=0.5), lambda o: L.StepLR(o, 30, gamma=0.5)),
    (
        "ConstantLR",
        lambda: fc.join([fc.constant(0.1 * 0.25), fc.constant(0.1)], [7]),
        lambda o: L.ConstantLR(o, factor=0.25, total_iters=7),
    ),
    (
        "SequentialLR",
        lambda: fc.join([fc.linear_lr(0.1, 0.1, 1.0, 10), fc.exponential_lr(0.1, 0.99)], [10]),
        lambda o: L.SequentialLR(
            o, [L.LinearLR(o, 0.1, 1.0, 10), L.ExponentialLR(o, 0.99)], milestones=[10]
        ),
    ),
    ("LambdaLR", lambda: lambda t: 0.1 / (1 + t), lambda o: L.LambdaLR(o, lambda t: 1 / (1 + t))),
]


@pytest.mark.parametrize("row", TABLE, ids=[r[0] for r in TABLE])
def test_table_rows_built_from_existing_schedules_match_torch(row):
    _, ours, theirs = row
    s = ours()
    got = torch.tensor([float(s(t)) for t in range(300)], dtype=torch.float64)
    torch.testing.assert_close(got, torch_lrs(theirs, 0.1, n=300), rtol=1e-11, atol=1e-15)
