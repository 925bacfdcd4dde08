"""fc.reduce_on_plateau against torch.optim.lr_scheduler.ReduceLROnPlateau."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import funcurriculum as fc


def torch_scales(metrics, **kw):
    """The lr of an SGD with base lr 1.0 after each ``step(metric)``: the scale itself."""
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=1.0)
    min_lr = kw.pop("min_scale", 0.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, min_lr=min_lr, **kw)
    out = []
    for m in metrics:
        sched.step(m)
        out.append(opt.param_groups[0]["lr"])
    return out


def our_scales(metrics, **kw):
    plateau = fc.reduce_on_plateau(**kw)
    state = plateau.init({})
    out = []
    for m in metrics:
        state = plateau.step(state, m)
        out.append(float(state["lr_scale"]))
    return out


SETTINGS = [
    {},
    {"patience": 0},
    {"patience": 2, "factor": 0.5, "cooldown": 2},
    {"mode": "max", "patience": 1, "threshold": 0.05},
    {"threshold_mode": "abs", "threshold": 0.1, "patience": 1},
    {"mode": "max", "threshold_mode": "abs", "threshold": 0.0, "patience": 3, "cooldown": 1},
    {"patience": 0, "factor": 0.3, "min_scale": 0.01},
    {"patience": 0, "factor": 0.9, "eps": 0.05},
]


@pytest.mark.parametrize("kw", SETTINGS, ids=[str(k) for k in SETTINGS])
def test_matches_torch_on_a_noisy_plateau(kw):
    g = torch.Generator().manual_seed(0)
    metrics = (1.0 / (1 + torch.arange(200.0) / 20) + 0.05 * torch.rand(200, generator=g)).tolist()
    metrics += [0.3] * 50 + [0.5, 0.2, 0.2, 0.2] * 10
    assert our_scales(metrics, **dict(kw)) == torch_scales(metrics, **dict(kw))


@settings(max_examples=60, deadline=None)
@given(
    metrics=st.lists(st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0, 1.01, 2.0]), max_size=60),
    kw=st.fixed_dictionaries(
        {
            "mode": st.sampled_from(["min", "max"]),
            "threshold_mode": st.sampled_from(["rel", "abs"]),
            "patience": st.integers(0, 4),
            "cooldown": st.integers(0, 3),
            "factor": st.sampled_from([0.1, 0.5]),
            "threshold": st.sampled_from([0.0, 1e-4, 0.05]),
        }
    ),
)
def test_matches_torch_on_random_sequences(metrics, kw):
    assert our_scales(metrics, **dict(kw)) == torch_scales(metrics, **dict(kw))


def test_tensor_metric_and_inputs_unchanged():
    plateau = fc.reduce_on_plateau(patience=0)
    s0 = plateau.init({"step": torch.zeros((), dtype=torch.int64)})
    s1 = plateau.step(s0, torch.tensor(1.0))
    s2 = plateau.step(s1, torch.tensor([3.0]))
    assert float(s0["lr_scale"]) == 1.0 and float(s1["lr_scale"]) == 1.0
    assert float(s2["lr_scale"]) == pytest.approx(0.1)
    assert "step" in s2 and s2["step"] is s0["step"]


def test_vmap_over_members():
    """Each member of an ensemble reduces on its own metric."""
    plateau = fc.reduce_on_plateau(patience=0)
    state = plateau.init({})
    batched = {
        "lr_scale": state["lr_scale"].expand(3).clone(),
        "plateau": {k: v.expand(3).clone() for k, v in state["plateau"].items()},
    }
    step = torch.func.vmap(plateau.step)
    for metrics in ([1.0, 1.0, 1.0], [0.5, 2.0, 1.0], [0.4, 3.0, 1.0]):
        batched = step(batched, torch.tensor(metrics, dtype=torch.float64))
    expected = [
        our_scales([m[i] for m in ([1.0] * 3, [0.5, 2, 1], [0.4, 3, 1])], patience=0)[-1]
        for i in range(3)
    ]
    torch.testing.assert_close(batched["lr_scale"], torch.tensor(expected, dtype=torch.float64))


def test_survives_save_and_load(tmp_path):
    opt = fc.adam(0.1)
    plateau = fc.reduce_on_plateau(patience=1, cooldown=2)
    state = plateau.init(opt.init({"w": torch.ones(2)}))
    metrics = [1.0, 1.0, 1.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    for m in metrics[:5]:
        state = plateau.step(state, m)
    fc.save(tmp_path / "ckpt.pt", state)
    loaded = fc.load(tmp_path / "ckpt.pt")
    for m in metrics[5:]:
        state = plateau.step(state, m)
        loaded = plateau.step(loaded, m)
    assert float(loaded["lr_scale"]) == float(state["lr_scale"])
    assert float(state["lr_scale"]) == torch_scales(metrics, patience=1, cooldown=2)[-1]


def test_step_without_init_is_refused():
    with pytest.raises(ValueError, match="plateau.init"):
        fc.reduce_on_plateau().step({"step": torch.zeros(())}, 1.0)


@pytest.mark.parametrize(
    "kw",
    [{"mode": "mid"}, {"factor": 1.0}, {"patience": -1}, {"threshold_mode": "pct"}],
    ids=lambda k: next(iter(k)),
)
def test_bad_arguments(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        fc.reduce_on_plateau(**kw)


def test_optimizer_lr_is_scaled_like_torch():
    """SGD with lr 0.1 and a plateau equals torch's SGD + ReduceLROnPlateau step by step."""
    opt = fc.sgd(0.1)
    plateau = fc.reduce_on_plateau(patience=1, factor=0.5)
    p = {"w": torch.ones(3, dtype=torch.float64)}
    state = plateau.init(opt.init(p))
    ref = torch.ones(3, dtype=torch.float64, requires_grad=True)
    topt = torch.optim.SGD([ref], lr=0.1)
    tsched = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, patience=1, factor=0.5)
    for t, metric in enumerate([1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5]):
        g = torch.full((3,), float(t + 1), dtype=torch.float64)
        p, state = opt.update(p, {"w": g}, state)
        ref.grad = g.clone()
        topt.step()
        state = plateau.step(state, metric)
        tsched.step(metric)
        torch.testing.assert_close(p["w"], ref.detach(), rtol=1e-14, atol=0)
