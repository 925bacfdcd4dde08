"""A phase-scheduled training run with ``fc.make_step`` against hand-written loops.

Oracles:
* the same run written by hand with funcurriculum primitives: curricula built with
  freeze / set_lr_coefficient per phase, full gradients, manual ``opt.transition``;
* torch.optim.Adam on a real module: one param group per parameter whose lr is set to
  ``schedule(t) * coefficient`` before each step, frozen parameters with
  ``requires_grad=False`` (so ``grad is None`` and Adam skips them; a parameter that is
  first unfrozen starts with fresh state, as ``opt.transition`` gives).
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

import funcurriculum as fc

EPOCHS, BATCHES = 3, 4
LR = fc.cosine(0.05, EPOCHS * BATCHES, final=0.005)


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)
    ).double()


def make_data(seed=1):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(EPOCHS * BATCHES, 5, 4, generator=g, dtype=torch.float64)
    ys = torch.randint(0, 3, (EPOCHS * BATCHES, 5), generator=g)
    return [(xs[i], ys[i]) for i in range(EPOCHS * BATCHES)]


def make_schedule(params):
    base = fc.layer_decay(fc.Curriculum(params), 0.5)  # coefficients 0.25, 0.5, 1
    return fc.Schedule(
        base,
        fc.Freezer(names="0", until_epoch=2),
        fc.GradualUnfreeze(["0", "2"], every_n_epochs=1, start_epoch=1),  # "2" at 1, "0" at 2
        fc.SetCoefficient(0.1, "4", start_step=7),
    )


def run_make_step(model, data):
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    sched = make_schedule(params)

    def loss_fn(p, batch):
        x, y = batch
        return nn.functional.cross_entropy(functional_call(model, p, (x,)), y)

    opt = fc.adam(LR)
    step_fn = fc.make_step(loss_fn, opt, sched)
    state = opt.init(params, sched.at(step=0, epoch=0).masks)
    cur, losses = None, []
    for t, batch in enumerate(data):
        params, state, loss, cur = step_fn(
            params, state, batch, step=t, epoch=t // BATCHES, prev=cur
        )
        losses.append(float(loss))
    return params, losses


def hand_curriculum(base, t):
    epoch = t // BATCHES
    cur = base
    if epoch < 1:
        cur = cur.freeze(["0", "2"])
    elif epoch < 2:
        cur = cur.freeze("0")
    if t >= 7:
        cur = cur.set_lr_coefficient(0.1, "4")
    return cur


def run_by_hand(model, data):
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    base = fc.Curriculum(params)
    base = (
        base.set_lr_coefficient(0.25, "0").set_lr_coefficient(0.5, "2").set_lr_coefficient(1.0, "4")
    )
    opt = fc.adam(LR)
    cur = hand_curriculum(base, 0)
    state = opt.init(params, cur.masks)
    losses = []
    for t, (x, y) in enumerate(data):
        new = hand_curriculum(base, t)
        if new.masks != cur.masks:
            state = opt.transition(state, params, cur.masks, new.masks)
        cur = new

        def loss_fn(p, x=x, y=y):
            return nn.functional.cross_entropy(functional_call(model, p, (x,)), y)

        grads, loss = torch.func.grad_and_value(loss_fn)(params)
        grads = {k: (g if cur.masks[k] else None) for k, g in grads.items()}
        params, state = opt.update(params, grads, state, cur.masks, cur.coeffs)
        losses.append(float(loss))
    return params, losses


def run_torch_optim(model, data):
    model = copy.deepcopy(model)
    named = dict(model.named_parameters())
    base = fc.layer_decay(fc.Curriculum({k: v.detach() for k, v in named.items()}), 0.5)
    opt = torch.optim.Adam([{"params": [p]} for p in named.values()], lr=1.0, foreach=False)
    losses = []
    for t, (x, y) in enumerate(data):
        cur = hand_curriculum(base, t)
        for (name, p), group in zip(named.items(), opt.param_groups):
            p.requires_grad_(cur.masks[name])
            group["lr"] = LR(t) * cur.coeffs[name]
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        loss = loss.detach()
        opt.step()
        losses.append(loss.item())
    return {k: v.detach() for k, v in named.items()}, losses


def test_scheduled_run_equals_hand_written_loop_and_torch_optim(caplog):
    model, data = make_model(), make_data()
    caplog.set_level(logging.INFO, logger="funcurriculum")
    got, got_losses = run_make_step(model, data)
    lines = [r.getMessage() for r in caplog.records if r.name == "funcurriculum"]
    assert lines == [
        "phase change at step 4, epoch 1: unfroze ['2']",
        "phase change at step 7, epoch 1: coefficients 4: 1 -> 0.1",
        "phase change at step 8, epoch 2: unfroze ['0']",
    ]
    hand, hand_losses = run_by_hand(model, data)
    ref, ref_losses = run_torch_optim(model, data)
    for k in got:
        torch.testing.assert_close(got[k], hand[k], rtol=0, atol=1e-14)
        torch.testing.assert_close(got[k], ref[k], rtol=1e-10, atol=1e-12)
    assert got_losses == pytest.approx(hand_losses, rel=1e-12)
    assert got_losses == pytest.approx(ref_losses, rel=1e-10)
    # Every layer moved, and layer "0" only from epoch 2 on.
    initial = dict(model.named_parameters())
    assert all(not torch.equal(got[k], initial[k]) for k in got)


def test_frozen_leaves_get_no_gradient_compute():
    seen = {}

    def loss_fn(p, x):
        for k, v in p.items():
            seen[k] = torch._C._functorch.is_gradtrackingtensor(v)
        return (p["a"] * x).sum() + (p["b"] * x).sum()

    params = {"a": torch.ones(3), "b": torch.ones(3)}
    sched = fc.Schedule(params, fc.Freezer(names="a", until_step=1))
    opt = fc.sgd(0.1)
    step_fn = fc.make_step(loss_fn, opt, sched)
    state = opt.init(params)
    new, state, loss, cur = step_fn(params, state, torch.ones(3), step=0)
    assert seen == {"a": False, "b": True}
    assert new["a"] is params["a"]
    assert torch.allclose(new["b"], torch.full((3,), 0.9))
    assert float(loss) == 6.0


def test_all_frozen_phase_and_fixed_curriculum():
    params = {"a": torch.ones(2)}
    opt = fc.sgd(0.1)
    step_fn = fc.make_step(lambda p, x: (p["a"] * x).sum(), opt, fc.Curriculum(params).freeze("a"))
    new, state, loss, cur = step_fn(params, opt.init(params), torch.ones(2))
    assert new["a"] is params["a"] and float(loss) == 2.0
    assert int(state["step"]) == 1
    with pytest.raises(TypeError):
        fc.make_step(lambda p, x: p, opt, "not a schedule")


def test_make_step_under_vmap_for_an_ensemble():
    E = 3
    models = [make_model(seed=s) for s in range(E)]
    stacked, _ = stack_module_state(models)
    stacked = {k: v.detach() for k, v in stacked.items()}
    template = copy.deepcopy(models[0]).to("meta")
    data = make_data()
    sched = make_schedule({k: v[0] for k, v in stacked.items()})

    def loss_fn(p, batch):
        x, y = batch
        return nn.functional.cross_entropy(functional_call(template, p, (x,)), y)

    opt = fc.adam(LR)
    step_fn = fc.make_step(loss_fn, opt, sched)
    masks0 = sched.at(step=0, epoch=0).masks
    vstep = vmap(step_fn, in_dims=(0, 0, None), out_dims=(0, 0, 0, None))
    state = vmap(lambda p: opt.init(p, masks0))(stacked)
    params, cur = stacked, None
    for t, batch in enumerate(data):
        params, state, loss, cur = vstep(params, state, batch, step=t, epoch=t // BATCHES, prev=cur)
        assert loss.shape == (E,)
    # Each member equals its own unbatched run.
    for e, model in enumerate(models):
        single, _ = run_make_step(model, data)
        for k in single:
            torch.testing.assert_close(params[k][e], single[k], rtol=1e-10, atol=1e-12)


def test_make_step_logs_phase_changes_on_the_given_logger(caplog):
    """``logger=`` routes the phase-change line; the default logger then stays silent."""
    p = {"body.w": torch.ones(2), "head.w": torch.ones(2)}
    sched = fc.Schedule(p, fc.Freezer(names="body", until_step=1))
    mine = logging.getLogger("test_make_step_logger")
    opt = fc.sgd(0.1)
    step_fn = fc.make_step(lambda q, x: (q["body.w"] * q["head.w"] * x).sum(), opt, sched,
                           logger=mine)  # fmt: skip
    caplog.set_level(logging.INFO)
    state, cur = opt.init(p), None
    for t in range(3):
        p, state, _, cur = step_fn(p, state, torch.ones(2), step=t, prev=cur)
    lines = [(r.name, r.getMessage()) for r in caplog.records]
    assert lines == [("test_make_step_logger", "phase change at step 1: unfroze ['body']")]
