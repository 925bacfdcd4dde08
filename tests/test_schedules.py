"""Schedules: gradual unfreezing, layer-wise LR decay, coefficient phases, transitions,
inspection (summary table, schedule plot)."""

from __future__ import annotations

import logging
import math
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import funcurriculum as fc

LAYERS = ["embed", "blocks.0", "blocks.1", "blocks.2", "norm", "head"]
PARAMS = {
    "embed.weight": torch.zeros(4, 3),
    "blocks.0.w": torch.zeros(4, 4),
    "blocks.0.b": torch.zeros(4),
    "blocks.1.w": torch.zeros(4, 4),
    "blocks.1.b": torch.zeros(4),
    "blocks.2.w": torch.zeros(4, 4),
    "blocks.2.b": torch.zeros(4),
    "norm.weight": torch.zeros(4),
    "head.weight": torch.zeros(2, 4),
}
CUR = fc.Curriculum(PARAMS)
GROUPS = ["blocks.0", "blocks.1", "blocks.2"]


# -- gradual unfreezing -------------------------------------------------------------------


def frozen_groups(sched, **clock):
    masks = sched.at(**clock).masks
    return [g for g in GROUPS if not any(m for k, m in masks.items() if k.startswith(g + "."))]


def test_gradual_unfreeze_output_first_every_n_epochs():
    rule = fc.GradualUnfreeze(GROUPS, every_n_epochs=2, start_epoch=1)
    sched = fc.Schedule(CUR, rule)
    assert rule.release_times() == [5, 3, 1]
    expect = {0: GROUPS, 1: GROUPS[:2], 2: GROUPS[:2], 3: GROUPS[:1], 4: GROUPS[:1], 5: [], 9: []}
    for epoch, groups in expect.items():
        assert frozen_groups(sched, epoch=epoch) == groups, epoch
    # Nothing outside the groups is touched.
    assert all(sched.at(epoch=0).masks[k] for k in ("embed.weight", "norm.weight", "head.weight"))


def test_gradual_unfreeze_input_first_every_n_steps_default_start():
    rule = fc.GradualUnfreeze(GROUPS, every_n_steps=10, order="input_first")
    sched = fc.Schedule(CUR, rule)
    # start defaults to n: the first n steps train only what is outside the groups.
    assert rule.release_times() == [10, 20, 30]
    assert frozen_groups(sched, step=0) == GROUPS
    assert frozen_groups(sched, step=9) == GROUPS
    assert frozen_groups(sched, step=10) == GROUPS[1:]
    assert frozen_groups(sched, step=29) == GROUPS[2:]
    assert frozen_groups(sched, step=30) == []
    with pytest.raises(ValueError, match="step"):
        sched.at(epoch=3)


def test_gradual_unfreeze_group_of_several_patterns():
    sched = fc.Schedule(
        CUR, fc.GradualUnfreeze([["embed", "blocks.0"], r"blocks\.[12]"], every_n_epochs=1)
    )
    assert sched.at(epoch=0).frozen == {"embed", "blocks"}
    assert sched.at(epoch=1).frozen == {"embed", "blocks.0"}
    assert sched.at(epoch=2).frozen == frozenset()


@settings(max_examples=50, deadline=None)
@given(
    st.integers(1, 5),
    st.one_of(st.none(), st.integers(0, 10)),
    st.sampled_from(["output_first", "input_first"]),
    st.integers(0, 40),
)
def test_gradual_unfreeze_timing_invariants(every, start, order, t):
    rule = fc.GradualUnfreeze(GROUPS, every_n_epochs=every, start_epoch=start, order=order)
    sched = fc.Schedule(CUR, rule)
    s = every if start is None else start
    released = 0 if t < s else min(3, (t - s) // every + 1)
    frozen = frozen_groups(sched, epoch=t)
    assert len(frozen) == 3 - released
    # Releases are monotone and follow the order.
    assert len(frozen_groups(sched, epoch=t + 1)) <= len(frozen)
    assert frozen == (GROUPS[: 3 - released] if order == "output_first" else GROUPS[released:])
    # release_times agrees with the schedule.
    for g, when in zip(GROUPS, rule.release_times()):
        assert (g in frozen) == (t < when)


def test_gradual_unfreeze_validation():
    with pytest.raises(ValueError, match="exactly one"):
        fc.GradualUnfreeze(GROUPS)
    with pytest.raises(ValueError, match="exactly one"):
        fc.GradualUnfreeze(GROUPS, every_n_epochs=1, every_n_steps=1)
    with pytest.raises(ValueError, match="start_step"):
        fc.GradualUnfreeze(GROUPS, every_n_epochs=1, start_step=3)
    with pytest.raises(ValueError, match="> 0"):
        fc.GradualUnfreeze(GROUPS, every_n_epochs=0)
    with pytest.raises(ValueError, match="order"):
        fc.GradualUnfreeze(GROUPS, every_n_epochs=1, order="backwards")
    with pytest.raises(ValueError, match="empty"):
        fc.GradualUnfreeze([], every_n_epochs=1)
    with pytest.raises(TypeError):
        fc.GradualUnfreeze("blocks.0", every_n_epochs=1)
    with pytest.raises(ValueError, match="overlap"):
        fc.Schedule(CUR, fc.GradualUnfreeze(["blocks", "blocks.1"], every_n_epochs=1))
    with pytest.raises(ValueError, match="did you mean"):
        fc.Schedule(CUR, fc.GradualUnfreeze(["blocks.0", "block.1"], every_n_epochs=1))


# -- layer-wise LR decay -------------------------------------------------------------------


def test_layer_decay_default_groups_are_parameter_owning_modules():
    d = 0.8
    cur = fc.layer_decay(CUR, d)
    # owners in order: embed, blocks.0, blocks.1, blocks.2, norm, head -> ids 0..5
    want = {"embed": 5, "blocks.0": 4, "blocks.1": 3, "blocks.2": 2, "norm": 1, "head": 0}
    for path, c in cur.coeffs.items():
        owner = path.rsplit(".", 1)[0]
        assert c == pytest.approx(d ** want[owner]), path
    assert cur.frozen == frozenset()


def test_layer_decay_timm_vit_convention():
    # timm: stem id 0 -> decay ** (depth + 1); blocks.N -> id N + 1; final norm with the
    # last block; head id depth + 1 -> 1.0.
    d, depth = 0.65, 3
    groups = {"embed": 0, r"blocks\.0": 1, r"blocks\.1": 2, ("blocks.2", "norm"): 3, "head": 4}
    cur = fc.layer_decay(CUR, d, groups)
    c = cur.coeffs
    assert c["embed.weight"] == pytest.approx(d ** (depth + 1))
    for i in range(depth):
        assert c[f"blocks.{i}.w"] == pytest.approx(d ** (depth - i))
        assert c[f"blocks.{i}.b"] == pytest.approx(d ** (depth - i))
    assert c["norm.weight"] == pytest.approx(d)
    assert c["head.weight"] == 1.0


def test_layer_decay_list_groups_bert_convention():
    # BERT recipe: encoder layer i at d ** (L - i), embeddings at d ** (L + 1), head 1.0.
    d, L = 0.9, 3
    cur = fc.layer_decay(CUR, d, ["embed", "blocks.0", "blocks.1", "blocks.2", ["norm", "head"]])
    c = cur.coeffs
    assert c["embed.weight"] == pytest.approx(d ** (L + 1))
    assert [c[f"blocks.{i}.w"] for i in range(L)] == pytest.approx([d ** (L - i) for i in range(L)])
    assert c["norm.weight"] == c["head.weight"] == 1.0


def test_layer_decay_matches_torch_mentor_recipe_on_owning_layers():
    # torch_mentor: coeff = decay ** (n - 1 - i) over layers ordered input -> output.
    d = 0.9
    owners = ["embed", "blocks.0", "blocks.1", "blocks.2", "norm", "head"]
    manual = CUR
    for i, layer in enumerate(owners):
        manual = manual.set_lr_coefficient(d ** (len(owners) - 1 - i), layer)
    assert fc.layer_decay(CUR, d) == manual


def test_layer_decay_keeps_the_rest_of_the_curriculum_and_validates():
    base = CUR.freeze("embed").set_lr_coefficient(0.3, "norm")
    cur = fc.layer_decay(base, 0.5, ["blocks.0", "blocks.1", "blocks.2", "head"])
    assert cur.frozen == {"embed"}
    assert cur.coeffs["norm.weight"] == 0.3
    assert cur.coeffs["blocks.0.w"] == 0.125
    assert fc.layer_decay(PARAMS, 0.5) == fc.layer_decay(CUR, 0.5)
    for bad in (0.0, -0.5, math.nan, math.inf):
        with pytest.raises(ValueError, match="decay"):
            fc.layer_decay(CUR, bad)
    with pytest.raises(ValueError, match="did you mean"):
        fc.layer_decay(CUR, 0.5, ["blocks.0", "blcks.1"])
    with pytest.raises(ValueError, match="id"):
        fc.layer_decay(CUR, 0.5, {"head": -1})
    with pytest.raises(TypeError):
        fc.layer_decay(CUR, 0.5, "head")


# -- coefficient phases -------------------------------------------------------------------


def test_set_coefficient_at_phase_boundaries_over_layer_decay():
    base = fc.layer_decay(CUR, 0.5, GROUPS + ["head"])
    sched = fc.Schedule(
        base,
        # "blocks.*" selects blocks and every name below it, so it overrides the
        # blocks' own layer-decay entries (paused while the head warms up).
        fc.SetCoefficient(0.0, "blocks.*", until_epoch=2),
        fc.SetCoefficient(2.0, "head", start_step=100, until_step=200),
    )
    assert sched.at(epoch=0, step=0).coeffs["blocks.1.w"] == 0.0
    assert sched.at(epoch=2, step=0).coeffs["blocks.1.w"] == 0.25
    assert sched.at(epoch=2, step=150).coeffs["head.weight"] == 2.0
    assert sched.at(epoch=2, step=200).coeffs["head.weight"] == 1.0
    # Curriculum semantics: an entry on "blocks" alone does not overwrite the more
    # specific entries of its children.
    only_parent = fc.Schedule(base, fc.SetCoefficient(0.0, "blocks"))
    assert only_parent.at() == base.set_lr_coefficient(0.0, "blocks")
    assert only_parent.at().coeffs["blocks.1.w"] == 0.25


def test_later_coefficient_rules_win():
    sched = fc.Schedule(
        CUR, fc.SetCoefficient(0.5, "head"), fc.SetCoefficient(0.1, "head", start_epoch=3)
    )
    assert sched.at(epoch=2).coeffs["head.weight"] == 0.5
    assert sched.at(epoch=3).coeffs["head.weight"] == 0.1


def test_set_coefficient_validation():
    with pytest.raises(ValueError):
        fc.SetCoefficient(-1.0, "head")
    with pytest.raises(ValueError):
        fc.SetCoefficient(math.nan, "head")
    with pytest.raises(ValueError, match="not before"):
        fc.SetCoefficient(0.5, "head", start_step=3, until_step=2)
    with pytest.raises(ValueError, match="did you mean"):
        fc.Schedule(CUR, fc.SetCoefficient(0.5, "heads"))


# -- Schedule -----------------------------------------------------------------------------


def test_schedule_is_pure_and_cached():
    rules = (fc.Freezer(names="embed", until_epoch=1), fc.SetCoefficient(0.5, "head", start_step=5))
    sched = fc.Schedule(CUR, *rules)
    a = sched.at(step=3, epoch=0)
    assert sched.at(step=4, epoch=0) is a  # same phase, same object
    assert sched.at(step=5, epoch=0) != a
    assert sched.at(step=3, epoch=0) == fc.Schedule(CUR, *rules).at(step=3, epoch=0)
    assert sched.curriculum is CUR and CUR.frozen == frozenset()
    assert sched.clocks == {"step", "epoch"}
    assert sched.phase(step=3, epoch=0) == (True, False)
    with pytest.raises(TypeError, match="Schedule rules"):
        fc.Schedule(CUR, "embed")
    assert fc.Schedule(PARAMS).at() == CUR


def test_rule_apply_equals_schedule_of_one_rule():
    rule = fc.GradualUnfreeze(GROUPS, every_n_steps=3)
    for s in range(12):
        assert rule.apply(CUR, step=s) == fc.Schedule(CUR, rule).at(step=s)
    with pytest.raises(ValueError, match="step"):
        rule.apply(CUR)


# -- transitions ---------------------------------------------------------------------------


class SpyOpt:
    def __init__(self, opt):
        self.opt, self.calls = opt, []

    def transition(self, state, params, old, new):
        self.calls.append((old, new))
        return self.opt.transition(state, params, old, new)


def test_apply_transition_only_when_masks_change_and_logs_one_line(caplog):
    params = {k: torch.randn(v.shape) for k, v in PARAMS.items()}
    sched = fc.Schedule(
        CUR,
        fc.Freezer(name_starts_with="blocks", until_epoch=1),
        fc.SetCoefficient(0.1, "head", start_step=3),
    )
    opt = SpyOpt(fc.adam(1e-3))
    state = opt.opt.init(params, sched.at(step=0, epoch=0).masks)
    prev = None
    caplog.set_level(logging.INFO, logger="funcurriculum")
    for step, epoch in [(0, 0), (1, 0), (2, 0), (3, 0), (4, 0), (5, 1), (6, 1)]:
        cur = sched.at(step=step, epoch=epoch)
        state = fc.apply_transition(opt, state, params, prev, cur, step=step, epoch=epoch)
        prev = cur
    # masks changed once (epoch 1); coefficients once (step 3)
    assert len(opt.calls) == 1
    old, new = opt.calls[0]
    assert not old["blocks.0.w"] and new["blocks.0.w"]
    assert state["exp_avg"]["blocks.0.w"].shape == (4, 4)
    lines = [r.getMessage() for r in caplog.records if r.name == "funcurriculum"]
    assert lines == [
        "phase change at step 3, epoch 0: coefficients head: 1 -> 0.1",
        "phase change at step 5, epoch 1: unfroze ['blocks']",
    ]
    assert all(r.levelno == logging.INFO for r in caplog.records)


def test_apply_transition_gives_fresh_state_to_unfrozen_leaves_only():
    params = {k: torch.randn(v.shape) for k, v in PARAMS.items()}
    opt = fc.adam(0.1)
    a, b = CUR.freeze("head"), CUR
    state = opt.init(params, a.masks)
    grads = {k: torch.ones_like(v) for k, v in params.items()}
    params, state = opt.update(params, grads, state, a.masks)
    new = fc.apply_transition(opt, state, params, a, b)
    assert new["exp_avg"]["embed.weight"] is state["exp_avg"]["embed.weight"]
    assert torch.equal(new["exp_avg"]["head.weight"], torch.zeros(2, 4))
    assert float(new["count"]["head.weight"]) == 0.0
    assert fc.apply_transition(opt, state, params, b, b) is state
    assert fc.apply_transition(opt, state, params, None, b) is state


def test_describe_change():
    assert fc.describe_change(CUR, CUR) is None
    line = fc.describe_change(CUR.freeze("embed"), CUR.freeze(["blocks.0", "blocks.1"]))
    assert line == "froze ['blocks.0', 'blocks.1']; unfroze ['embed']"


# -- inspection ------------------------------------------------------------------------------


def test_summary_effective_lr_column():
    cur = fc.layer_decay(CUR, 0.5, GROUPS + ["head"]).freeze("embed")
    table = fc.summary(cur, lr=fc.step_lr(0.1, step_size=10, gamma=0.5), step=10)
    rows = {line.split()[0]: line.split() for line in table.splitlines()[2:]}
    assert table.splitlines()[0].split() == ["name", "frozen", "coeff", "params", "lr"]
    assert rows["embed"][-1] == "-"
    assert float(rows["head"][-1]) == pytest.approx(0.05)
    assert float(rows["blocks.0"][-1]) == pytest.approx(0.05 * 0.125)
    assert rows["blocks"][-1] == "mixed"
    assert rows["blocks.0"][3] == "20"
    assert fc.summary(cur) == cur.summary()
    with pytest.raises(TypeError):
        fc.summary(PARAMS)


def _schedule_for_plot():
    return fc.Schedule(
        fc.layer_decay(CUR, 0.7),
        fc.Freezer(name_starts_with="embed", until_epoch=2),
        fc.GradualUnfreeze(GROUPS, every_n_steps=5, start_step=3),
    )


def test_plot_schedule_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = fc.plot_schedule(
        _schedule_for_plot(), 30, lr=fc.cosine(1e-3, 30), path=tmp_path / "s.png", steps_per_epoch=6
    )
    data = out.read_bytes()
    assert out == tmp_path / "s.png"
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    with pytest.raises(ValueError, match="epoch"):
        fc.plot_schedule(_schedule_for_plot(), 10, path=tmp_path / "t.png")
    with pytest.raises(ValueError, match="unknown"):
        fc.plot_schedule(_schedule_for_plot(), 10, path=tmp_path / "t.png", layers=["bogus"],
                         steps_per_epoch=5)  # fmt: skip


def test_plot_schedule_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    for mod in list(sys.modules):
        if mod == "matplotlib" or mod.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"funcurriculum\[plot\]"):
        fc.plot_schedule(_schedule_for_plot(), 5, path=tmp_path / "x.png", steps_per_epoch=2)
    assert not (tmp_path / "x.png").exists()
