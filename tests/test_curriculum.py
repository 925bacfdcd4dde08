"""Paths, selection and Curriculum semantics (the DESIGN.md contract)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import funcurriculum as fc


def resnetish():
    names = [
        "backbone.conv1.weight",
        "backbone.bn1.weight",
        "backbone.bn1.bias",
        "backbone.layer1.0.conv.weight",
        "backbone.layer2.0.conv.weight",
        "backbone.layer3.0.conv.weight",
        "backbone.layer4.0.conv.weight",
        "backbone.layer4.1.conv.weight",
        "head.weight",
        "head.bias",
    ]
    return {n: torch.full((i + 1,), float(i)) for i, n in enumerate(names)}


def test_paths_keep_insertion_order_and_nesting():
    p = {"z": torch.zeros(1), "a": {"y": [torch.zeros(1), torch.zeros(1)], "b": torch.zeros(1)}}
    assert fc.paths(p) == ["z", "a.y.0", "a.y.1", "a.b"]


def test_layer_names_parent_before_child_first_appearance():
    p = resnetish()
    names = fc.layer_names(p)
    assert names[:3] == ["backbone", "backbone.conv1", "backbone.bn1"]
    assert names[-1] == "head"
    for n in names:
        if "." in n:
            assert names.index(n.rsplit(".", 1)[0]) < names.index(n)
    assert "backbone.layer4.0" in names and "backbone.layer4.0.conv" in names
    assert len(names) == len(set(names))


def test_select_layers_matches_names_and_leaf_paths_in_traversal_order():
    p = resnetish()
    got = fc.select_layers(p, ["head", r"backbone\.layer[34]"])
    assert got == ["backbone.layer3", "backbone.layer4", "head"]
    assert fc.select_layers(p, r"head\.bias") == ["head.bias"]
    # dedup across patterns
    assert fc.select_layers(p, ["head", "head", "h.*"]) == ["head", "head.weight", "head.bias"]


def test_select_errors_name_pattern_and_suggest():
    p = resnetish()
    with pytest.raises(ValueError, match=r"'backbone\.layr4'.*backbone\.layer4"):
        fc.select_layers(p, "backbone.layr4")
    with pytest.raises(ValueError, match=r"'\(unclosed'.*regular expression"):
        fc.select_layers(p, "(unclosed")
    with pytest.raises(ValueError, match="empty"):
        fc.select_layers(p, [])
    with pytest.raises(TypeError):
        fc.select_layers(p, 3)


def test_freeze_subtree_and_partial_unfreeze_both_orders():
    p = resnetish()
    cur = fc.Curriculum(p)
    a = cur.freeze("backbone").unfreeze("backbone.layer4")
    m = a.masks
    assert m["backbone.layer4.0.conv.weight"] and m["backbone.layer4.1.conv.weight"]
    assert not m["backbone.conv1.weight"] and not m["backbone.layer3.0.conv.weight"]
    assert m["head.weight"]
    b = cur.freeze("backbone.layer4").unfreeze("backbone")
    assert all(b.masks.values())
    # frozen is canonical and reproduces the masks
    assert a.frozen == frozenset(
        {"backbone.conv1", "backbone.bn1", "backbone.layer1", "backbone.layer2", "backbone.layer3"}
    )
    rebuilt = cur.freeze(sorted(a.frozen))
    assert rebuilt.masks == a.masks and rebuilt == a
    assert cur.freeze("backbone").frozen == frozenset({"backbone"})


def test_curriculum_is_immutable_and_chainable():
    p = resnetish()
    cur = fc.Curriculum(p)
    f = cur.freeze("head")
    assert all(cur.masks.values()) and not f.masks["head.weight"]
    with pytest.raises(AttributeError):
        cur._entries = {}
    lc = f.lr_coefficients
    lc["x"] = 3.0
    assert "x" not in f.lr_coefficients


def test_coefficients_most_specific_ancestor_wins():
    p = resnetish()
    cur = (
        fc.Curriculum(p)
        .set_lr_coefficient(0.01, "backbone")
        .set_lr_coefficient(0.1, "backbone.layer4")
    )
    c = cur.coeffs
    assert c["backbone.conv1.weight"] == 0.01
    assert c["backbone.layer4.1.conv.weight"] == 0.1
    assert c["head.bias"] == 1.0
    # a parent entry set later does not overwrite the child's own entry
    cur2 = (
        fc.Curriculum(p)
        .set_lr_coefficient(0.1, "backbone.layer4")
        .set_lr_coefficient(0.01, "backbone")
    )
    assert cur2.coeffs == c
    assert cur2 == cur


def test_coefficient_one_removes_entry_unless_ancestor_applies():
    p = resnetish()
    cur = fc.Curriculum(p).set_lr_coefficient(0.5, "head")
    assert cur.set_lr_coefficient(1.0, "head").lr_coefficients == {}
    cur = (
        fc.Curriculum(p)
        .set_lr_coefficient(0.1, "backbone")
        .set_lr_coefficient(1.0, "backbone.layer4")
    )
    assert cur.lr_coefficients == {"backbone": 0.1, "backbone.layer4": 1.0}
    assert cur.coeffs["backbone.layer4.0.conv.weight"] == 1.0
    assert cur.coeffs["backbone.layer3.0.conv.weight"] == 0.1


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf, -math.inf])
def test_bad_coefficients_rejected(bad):
    cur = fc.Curriculum(resnetish())
    with pytest.raises(ValueError, match="coefficient"):
        cur.set_lr_coefficient(bad, "head")
    with pytest.raises(TypeError):
        cur.set_lr_coefficient("0.1", "head")


def test_equality_by_paths_frozen_and_coefficients():
    p = resnetish()
    a = fc.Curriculum(p).freeze("head").set_lr_coefficient(0.5, "backbone")
    b = fc.Curriculum(p).set_lr_coefficient(0.5, "backbone").freeze(["head.weight", "head.bias"])
    assert a == b and hash(a) == hash(b)
    assert a != fc.Curriculum(p)
    q = dict(p)
    q["extra.w"] = torch.zeros(1)
    assert fc.Curriculum(q) != fc.Curriculum(p)


def test_masks_and_coeffs_have_params_structure():
    p = {"enc": {"layers": [{"w": torch.zeros(2)}, {"w": torch.zeros(3)}]}, "head": torch.zeros(1)}
    cur = fc.Curriculum(p).freeze("enc.layers.0").set_lr_coefficient(0.2, "enc")
    assert cur.masks == {"enc": {"layers": [{"w": False}, {"w": True}]}, "head": True}
    assert cur.coeffs == {"enc": {"layers": [{"w": 0.2}, {"w": 0.2}]}, "head": 1.0}
    assert cur.layer_names == ["enc", "enc.layers", "enc.layers.0", "enc.layers.1"]


def test_summary_lists_layers_frozen_coeff_and_sizes():
    p = resnetish()
    cur = (
        fc.Curriculum(p)
        .freeze("backbone")
        .unfreeze("backbone.layer4")
        .set_lr_coefficient(0.1, "head")
    )
    text = cur.summary()
    lines = {ln.split()[0]: ln.split() for ln in text.splitlines()[2:]}
    assert lines["backbone"][1] == "partial"
    assert lines["backbone.layer4"][1] == "no"
    assert lines["head"][1:3] == ["no", "0.1"]
    assert lines["head"][3] == str(9 + 10)
    assert "partial" in repr(cur) or "frozen=" in repr(cur)


def test_curriculum_rejects_non_tensor_leaves():
    with pytest.raises(TypeError, match="'a.b'"):
        fc.Curriculum({"a": {"b": 3.0}})


# --- property: any op sequence == a direct per-leaf model of the semantics --------------

OPS = st.lists(
    st.tuples(
        st.sampled_from(["freeze", "unfreeze", "coeff"]),
        st.sampled_from(
            [
                "backbone",
                "backbone.layer4",
                "backbone.layer4.0",
                "head",
                "backbone.bn1.bias",
                r"backbone\.layer[12]",
            ]
        ),
        st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.0]),
    ),
    max_size=8,
)


@settings(max_examples=60, deadline=None)
@given(OPS)
def test_curriculum_matches_per_leaf_model(ops):
    import re

    p = resnetish()
    cur = fc.Curriculum(p)
    frozen = {k: False for k in p}
    entries = {}
    nodes = []
    for k in p:
        parts = k.split(".")
        for i in range(1, len(parts) + 1):
            n = ".".join(parts[:i])
            if n not in nodes:
                nodes.append(n)
    for op, pat, c in ops:
        sel = [n for n in nodes if re.fullmatch(pat, n)]
        if op == "coeff":
            cur = cur.set_lr_coefficient(c, pat)
            for n in sel:
                anc = [".".join(n.split(".")[:i]) for i in range(1, n.count(".") + 1)]
                if c == 1.0 and not any(a in entries for a in anc):
                    entries.pop(n, None)
                else:
                    entries[n] = c
        else:
            cur = getattr(cur, op)(pat)
            for k in p:
                if any(k == n or k.startswith(n + ".") for n in sel):
                    frozen[k] = op == "freeze"
    assert cur.masks == {k: not v for k, v in frozen.items()}
    assert cur.lr_coefficients == entries
    for k in p:
        parts = k.split(".")
        want = 1.0
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in entries:
                want = entries[".".join(parts[:i])]
                break
        assert cur.coeffs[k] == want
    # frozen (sparse) reproduces the masks
    if cur.frozen:
        assert fc.Curriculum(p).freeze(sorted(cur.frozen)).masks == cur.masks
    else:
        assert all(cur.masks.values())
