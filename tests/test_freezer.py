"""``fc.Freezer`` against Lighter's documented behaviour, and its validation.

The oracle below is Lighter's Freezer as its documentation describes it:

* selection (as its code does it, per parameter name): excluded if the name is in
  ``except_names`` or starts with an ``except_name_starts_with`` prefix; otherwise
  selected if it is in ``names`` or starts with a ``name_starts_with`` prefix;
* timing (as its documentation promises): frozen until ``until_step`` or
  ``until_epoch``, whichever is reached first (``global_step >= until_step`` /
  ``current_epoch >= until_epoch``, Lightning's counters); frozen for the whole run
  when neither is given;
* several freezers combine (the docs' "initial backbone freeze, gradual unfreezing").
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import funcurriculum as fc

NAMES = [
    "model.embedding.weight",
    "model.backbone.conv1.weight",
    "model.backbone.conv1.bias",
    "model.backbone.conv2.weight",
    "model.encoder.layer1.weight",
    "model.encoder.layer1.bias",
    "model.encoder.layer2.weight",
    "model.encoder.layer5.weight",
    "model.encoder.layer5.bias",
    "model.encoder.layer10.weight",
    "model.classifier.weight",
    "model.classifier.bias",
]
PARAMS = {n: torch.zeros(2) for n in NAMES}


def _list(x):
    return [] if x is None else ([x] if isinstance(x, str) else list(x))


def lighter_selected(name, names=None, name_starts_with=None, except_names=None,
                     except_name_starts_with=None, **_):  # fmt: skip
    if name in _list(except_names) or any(
        name.startswith(p) for p in _list(except_name_starts_with)
    ):
        return False
    return name in _list(names) or any(name.startswith(p) for p in _list(name_starts_with))


def lighter_frozen(kwargs, name, step, epoch):
    if not lighter_selected(name, **kwargs):
        return False
    us, ue = kwargs.get("until_step"), kwargs.get("until_epoch")
    released = (us is not None and step >= us) or (ue is not None and epoch >= ue)
    return not released


def frozen_at(schedule, step, epoch):
    return {n: not m for n, m in schedule.at(step=step, epoch=epoch).masks.items()}


def assert_matches_lighter(kwargs, steps_per_epoch, total_steps):
    sched = fc.Schedule(fc.Curriculum(PARAMS), fc.Freezer(**kwargs))
    for step in range(0, total_steps, max(1, steps_per_epoch // 4)):
        epoch = step // steps_per_epoch
        got = frozen_at(sched, step, epoch)
        want = {n: lighter_frozen(kwargs, n, step, epoch) for n in NAMES}
        assert got == want, (kwargs, step, epoch)


# -- the cases of Lighter's documentation --------------------------------------------


def test_prefix_freeze_until_epoch_10():
    kwargs = {"name_starts_with": ["model.encoder"], "until_epoch": 10}
    assert_matches_lighter(kwargs, steps_per_epoch=100, total_steps=1500)
    sched = fc.Schedule(fc.Curriculum(PARAMS), fc.Freezer(**kwargs))
    assert sched.at(epoch=9).frozen == {"model.encoder"}
    assert sched.at(epoch=10).frozen == frozenset()


def test_prefixes_encoder_and_embedding_until_epoch_5():
    kwargs = {"name_starts_with": ["model.encoder", "model.embedding"], "until_epoch": 5}
    assert_matches_lighter(kwargs, steps_per_epoch=40, total_steps=400)


def test_exact_names_until_step_1000():
    kwargs = {"names": ["model.classifier.weight", "model.classifier.bias"], "until_step": 1000}
    assert_matches_lighter(kwargs, steps_per_epoch=300, total_steps=1600)
    sched = fc.Schedule(fc.Curriculum(PARAMS), fc.Freezer(**kwargs))
    assert sched.at(step=999).frozen == {"model.classifier"}
    assert sched.at(step=1000).frozen == frozenset()


def test_encoder_except_layer5_until_epoch_7():
    kwargs = {
        "name_starts_with": ["model.encoder"],
        "except_name_starts_with": ["model.encoder.layer5"],
        "until_epoch": 7,
    }
    assert_matches_lighter(kwargs, steps_per_epoch=10, total_steps=100)
    masks = fc.Schedule(fc.Curriculum(PARAMS), fc.Freezer(**kwargs)).at(epoch=6).masks
    assert masks["model.encoder.layer5.weight"] and masks["model.encoder.layer5.bias"]
    assert not masks["model.encoder.layer1.weight"] and not masks["model.encoder.layer10.weight"]


@pytest.mark.parametrize("steps_per_epoch", [500, 2000])
def test_until_epoch_5_or_until_step_5000_whichever_first(steps_per_epoch):
    # Lighter's code refuses both; its documentation promises "whichever first".
    kwargs = {"name_starts_with": ["model.backbone"], "until_epoch": 5, "until_step": 5000}
    assert_matches_lighter(kwargs, steps_per_epoch, total_steps=12000)
    sched = fc.Schedule(fc.Curriculum(PARAMS), fc.Freezer(**kwargs))
    release = min(5000, 5 * steps_per_epoch)
    before, after = release - 1, release
    assert not sched.at(step=before, epoch=before // steps_per_epoch).masks[
        "model.backbone.conv1.weight"
    ]
    assert sched.at(step=after, epoch=after // steps_per_epoch).masks["model.backbone.conv1.weight"]


def test_no_until_freezes_for_the_whole_run():
    kwargs = {"names": "model.embedding.weight"}
    assert_matches_lighter(kwargs, steps_per_epoch=7, total_steps=70)
    sched = fc.Schedule(fc.Curriculum(PARAMS), fc.Freezer(**kwargs))
    assert sched.clocks == frozenset()
    assert sched.at().frozen == {"model.embedding"}  # no clock needed
    assert sched.at(step=10**9, epoch=10**6).frozen == {"model.embedding"}


def test_prefix_is_a_string_prefix_like_lighter():
    # "model.encoder.layer1" also selects "model.encoder.layer10.*", as in Lighter.
    f = fc.Freezer(name_starts_with="model.encoder.layer1")
    assert f.select(PARAMS) == [
        "model.encoder.layer1.weight",
        "model.encoder.layer1.bias",
        "model.encoder.layer10.weight",
    ]
    # Exact layer names and regex patterns select whole subtrees only.
    assert fc.Freezer(names="model.encoder.layer1").select(PARAMS) == [
        "model.encoder.layer1.weight",
        "model.encoder.layer1.bias",
    ]
    assert fc.Freezer(patterns=r"model\.encoder\.layer[12]").select(PARAMS) == [
        "model.encoder.layer1.weight",
        "model.encoder.layer1.bias",
        "model.encoder.layer2.weight",
    ]


def test_two_freezers_for_gradual_unfreezing():
    # Lighter's docs: backbone frozen until epoch 5; encoder.layer1/layer2 unfrozen
    # gradually from epoch 5, one every 5 epochs (its Freezer has no such arguments:
    # fc.GradualUnfreeze does it, output side first).
    sched = fc.Schedule(
        fc.Curriculum(PARAMS),
        fc.Freezer(name_starts_with=["model.backbone"], until_epoch=5),
        fc.GradualUnfreeze(
            ["model.encoder.layer1", "model.encoder.layer2"], start_epoch=5, every_n_epochs=5
        ),
    )
    expect = {
        0: {"model.backbone", "model.encoder.layer1", "model.encoder.layer2"},
        4: {"model.backbone", "model.encoder.layer1", "model.encoder.layer2"},
        5: {"model.encoder.layer1"},
        9: {"model.encoder.layer1"},
        10: set(),
        30: set(),
    }
    for epoch, frozen in expect.items():
        assert sched.at(epoch=epoch).frozen == frozen, epoch


# -- several freezers: a union, never Lighter's reset-to-trainable ----------------------


def test_a_released_freezer_never_unfreezes_what_another_holds():
    sched = fc.Schedule(
        fc.Curriculum(PARAMS),
        fc.Freezer(name_starts_with="model.backbone", until_epoch=2),
        fc.Freezer(names="model.backbone.conv1", until_epoch=6),
        fc.Freezer(names="model.classifier"),  # whole run
    )
    assert sched.at(epoch=0).frozen == {"model.backbone", "model.classifier"}
    assert sched.at(epoch=3).frozen == {"model.backbone.conv1", "model.classifier"}
    assert sched.at(epoch=6).frozen == {"model.classifier"}
    # Order of the rules does not matter for freezing.
    rev = fc.Schedule(fc.Curriculum(PARAMS), *reversed(sched.rules))
    for e in range(8):
        assert rev.at(epoch=e) == sched.at(epoch=e)


def test_the_base_curriculum_frozen_set_is_kept():
    base = fc.Curriculum(PARAMS).freeze("model.classifier")
    sched = fc.Schedule(base, fc.Freezer(names="model.classifier", until_step=10))
    assert sched.at(step=20).frozen == {"model.classifier"}


def test_start_step_and_start_epoch():
    f = fc.Freezer(names="model.classifier", start_step=100, until_step=200)
    sched = fc.Schedule(fc.Curriculum(PARAMS), f)
    assert [f.holds(step=s) for s in (0, 99, 100, 199, 200)] == [False, False, True, True, False]
    assert sched.at(step=150).frozen == {"model.classifier"}
    assert sched.at(step=50).frozen == frozenset()
    # Both starts: begins at the first one reached; both untils: ends at the first.
    g = fc.Freezer(names="model.classifier", start_epoch=2, start_step=1000, until_epoch=5)
    assert not g.holds(step=500, epoch=1)
    assert g.holds(step=500, epoch=2)
    assert g.holds(step=1000, epoch=0)
    assert not g.holds(step=1000, epoch=5)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "model.backbone",
                    "model.encoder",
                    "model.encoder.layer1",
                    "model.classifier.weight",
                    "model.embedding",
                ]
            ),  # fmt: skip
            st.one_of(st.none(), st.integers(1, 6)),
            st.one_of(st.none(), st.integers(1, 60)),
            st.one_of(st.none(), st.integers(0, 3)),
        ),
        min_size=1,
        max_size=4,
    ),
    st.integers(0, 80),
    st.integers(0, 8),
)
def test_frozen_set_is_the_union_of_what_each_freezer_holds(specs, step, epoch):
    freezers = []
    for name, until_epoch, until_step, start_epoch in specs:
        if start_epoch is not None and until_epoch is not None and start_epoch >= until_epoch:
            start_epoch = None
        freezers.append(
            fc.Freezer(
                names=name, until_epoch=until_epoch, until_step=until_step, start_epoch=start_epoch
            )  # fmt: skip
        )
    got = fc.Schedule(fc.Curriculum(PARAMS), *freezers).at(step=step, epoch=epoch)
    want = {n: False for n in NAMES}
    for f in freezers:
        if f.holds(step=step, epoch=epoch):
            for n in f.select(PARAMS):
                want[n] = True
    assert {n: not m for n, m in got.masks.items()} == want


# -- clocks ---------------------------------------------------------------------------------


def test_a_missing_clock_a_rule_reads_raises():
    sched = fc.Schedule(fc.Curriculum(PARAMS), fc.Freezer(names="model.embedding", until_epoch=5))
    with pytest.raises(ValueError, match="epoch"):
        sched.at(step=1200)
    both = fc.Schedule(
        fc.Curriculum(PARAMS), fc.Freezer(names="model.embedding", until_epoch=5, until_step=5000)
    )
    with pytest.raises(ValueError, match="epoch"):
        both.at(step=6000)
    with pytest.raises(ValueError, match="step"):
        both.at(epoch=1)
    assert both.at(step=6000, epoch=0).frozen == frozenset()
    # A clock no rule reads may be left out, or given.
    assert sched.at(epoch=1) == sched.at(epoch=1, step=123)


def test_clock_values_are_checked():
    sched = fc.Schedule(fc.Curriculum(PARAMS), fc.Freezer(names="model.embedding", until_step=5))
    with pytest.raises(ValueError, match=">= 0"):
        sched.at(step=-1)
    with pytest.raises(TypeError):
        sched.at(step=1.5)
    with pytest.raises(TypeError):
        sched.at(step=True)
    assert sched.at(step=torch.tensor(7)) == sched.at(step=7)


# -- validation -----------------------------------------------------------------------------


def test_nothing_selected_is_a_value_error():
    with pytest.raises(ValueError, match="at least one"):
        fc.Freezer()
    with pytest.raises(ValueError, match="at least one"):
        fc.Freezer(names=[], until_epoch=3)
    with pytest.raises(ValueError, match="at least one"):
        fc.Freezer(except_names="model.embedding")


def test_selection_mistakes_are_reported_at_construction():
    cur = fc.Curriculum(PARAMS)
    with pytest.raises(ValueError, match=r"model\.clasifier.*did you mean"):
        fc.Schedule(cur, fc.Freezer(names="model.clasifier"))
    with pytest.raises(ValueError, match="no parameter path starts with 'model.decoder'"):
        fc.Schedule(cur, fc.Freezer(name_starts_with="model.decoder"))
    with pytest.raises(ValueError, match="except_names"):
        fc.Schedule(cur, fc.Freezer(name_starts_with="model", except_names="model.enc"))
    with pytest.raises(ValueError, match="except_name_starts_with"):
        fc.Schedule(cur, fc.Freezer(name_starts_with="model", except_name_starts_with="x"))
    with pytest.raises(ValueError, match="patterns"):
        fc.Schedule(cur, fc.Freezer(patterns=r"model\.head"))
    with pytest.raises(ValueError, match="not a valid regular expression"):
        fc.Schedule(cur, fc.Freezer(patterns="model.(("))
    with pytest.raises(ValueError, match="selects no parameter"):
        fc.Schedule(cur, fc.Freezer(names="model.classifier", except_name_starts_with="model"))
    # The same errors eagerly, against params, before any schedule exists.
    with pytest.raises(ValueError, match="did you mean"):
        fc.Freezer(names="model.clasifier").select(PARAMS)


def test_bounds_are_checked():
    with pytest.raises(ValueError, match="never hold"):
        fc.Freezer(names="a", start_epoch=5, until_epoch=5)
    with pytest.raises(ValueError, match=">= 0"):
        fc.Freezer(names="a", until_step=-1)
    with pytest.raises(TypeError):
        fc.Freezer(names="a", until_epoch=2.5)
    with pytest.raises(TypeError):
        fc.Freezer(names="a", until_epoch=True)
    with pytest.raises(TypeError):
        fc.Freezer(names=3)
    with pytest.raises(TypeError):
        fc.Freezer(names=["a", None])


def test_freezer_is_immutable_hashable_data():
    f = fc.Freezer(names=["model.embedding"], until_epoch=3)
    assert f == fc.Freezer(names="model.embedding", until_epoch=3)
    assert hash(f) == hash(fc.Freezer(names="model.embedding", until_epoch=3))
    assert f.names == ("model.embedding",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.until_epoch = 4
    cur = fc.Curriculum(PARAMS)
    out = f.apply(cur, epoch=0)
    assert out.frozen == {"model.embedding"} and cur.frozen == frozenset()
    assert f.apply(cur, epoch=3) == cur
    assert re.search("until_epoch=3", repr(f))


def test_freezer_keep_leaves_norm_layers_trainable():
    import torch.nn as nn

    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    cur = fc.Curriculum.from_module(model)
    plain = fc.Schedule(cur, fc.Freezer(names=["0", "1"], until_epoch=2)).at(epoch=0)
    kept = fc.Schedule(cur, fc.Freezer(names=["0", "1"], until_epoch=2, keep=fc.NORM_LAYERS))
    m = kept.at(epoch=0).masks
    assert m == {
        "0.weight": False,
        "0.bias": False,
        "1.weight": True,
        "1.bias": True,
        "2.weight": True,
        "2.bias": True,
    }
    assert not plain.masks["1.weight"]  # Lighter parity: nothing kept unless asked
    assert all(kept.at(epoch=2).masks.values())
    with pytest.raises(ValueError, match="from_module"):
        fc.Schedule(
            fc.Curriculum(dict(model.named_parameters())),
            fc.Freezer(names="0", keep=fc.NORM_LAYERS),
        ).at(epoch=0)
