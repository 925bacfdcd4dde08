"""chain / gradient transforms / multi_optimizer: torch.optim oracles, dtypes, vmap, save/load."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import vmap

import funcurriculum as fc

SHAPES = {
    "l0.weight": (4, 3),
    "l0.bias": (4,),
    "l1.weight": (2, 4),
    "l1.bias": (2,),
    "head.weight": (3, 2),
}
DT = torch.float64


def make_params(seed=0, dtype=DT):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g, dtype=dtype) for k, s in SHAPES.items()}


def make_grads(seed, frozen=(), huge=1e6, dtype=DT):
    g = torch.Generator().manual_seed(1000 + seed)
    return {
        k: torch.randn(s, generator=g, dtype=dtype) * (huge if k in frozen else 1.0)
        for k, s in SHAPES.items()
    }


def close(a, b, **kw):
    kw.setdefault("rtol", 1e-12)
    kw.setdefault("atol", 1e-14)
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=lambda m, k=k: f"{k}: {m}", **kw)


# -- chain vs torch: clip_grad_norm_ / clip_grad_value_ then Adam --------------------------
@pytest.mark.parametrize("kind", ["norm", "norm_inf", "value"])
def test_chain_clip_then_adam_matches_torch(kind):
    """A frozen layer whose grad is huge never enters the norm (or the update); a phase
    change unfreezes it (torch: add_param_group); per-leaf coefficients are param groups."""
    params = make_params()
    coeffs = {k: (0.5 if k.startswith("l0") else 1.0) for k in SHAPES}
    masks1 = {k: not k.startswith("l1") for k in SHAPES}
    masks2 = dict.fromkeys(SHAPES, True)
    if kind == "value":
        transform = fc.clip_grad_value(0.3)
    else:
        norm_type = math.inf if kind == "norm_inf" else 2.0
        transform = fc.clip_grad_norm(0.5, norm_type=norm_type)
    opt = fc.chain(transform, fc.adam(0.01, weight_decay=0.1))
    state = opt.init(params, masks1)

    tp = {k: v.clone().requires_grad_(True) for k, v in params.items()}

    def groups(keys):
        return [{"params": [tp[k]], "lr": 0.01 * coeffs[k]} for k in keys]

    torch_opt = torch.optim.Adam(
        groups([k for k in SHAPES if masks1[k]]), weight_decay=0.1, foreach=False
    )
    masks = masks1
    for step in range(6):
        if step == 3:
            state = opt.transition(state, params, masks1, masks2)
            for g in groups([k for k in SHAPES if not masks1[k]]):
                torch_opt.add_param_group(g)
            masks = masks2
        frozen = [k for k in SHAPES if not masks[k]]
        grads = make_grads(step, frozen)
        params, state = opt.update(params, grads, state, masks, coeffs)
        live = [tp[k] for k in SHAPES if masks[k]]
        for k in SHAPES:
            tp[k].grad = grads[k].clone() if masks[k] else None
        if kind == "value":
            torch.nn.utils.clip_grad_value_(live, 0.3)
        else:
            norm = torch.nn.utils.clip_grad_norm_(live, 0.5, norm_type=norm_type)
            assert torch.equal(state["grad_norm"], norm.float())
        torch_opt.step()
        close(params, {k: v.detach() for k, v in tp.items()})
    if kind == "value":
        assert "grad_norm" not in state and set(state) == {"step", "count", "exp_avg", "exp_avg_sq"}


def test_with_clipping_is_chain_clip_grad_norm():
    params = make_params()
    masks = {k: k != "l1.bias" for k in SHAPES}
    a = fc.with_clipping(fc.sgd(0.1, momentum=0.9), 1.0)
    b = fc.chain(fc.clip_grad_norm(1.0), fc.sgd(0.1, momentum=0.9))
    assert isinstance(a, fc.Chain) and repr(a) == repr(b)
    sa, sb = a.init(params, masks), b.init(params, masks)
    pa = pb = params
    for step in range(3):
        g = make_grads(step, ["l1.bias"])
        pa, sa = a.update(pa, g, sa, masks)
        pb, sb = b.update(pb, g, sb, masks)
    assert list(sa) == list(sb)
    for k in SHAPES:
        assert torch.equal(pa[k], pb[k])
    assert torch.equal(sa["grad_norm"], sb["grad_norm"])
    # skip_nonfinite is chain(nonfinite_guard(), opt), and nested chains flatten
    c = fc.skip_nonfinite(a)
    assert [type(t).__name__ for t in c.transforms] == ["NonFiniteGuard", "ClipGradNorm"]
    assert c.keys == ("skipped", "grad_norm") and c.opt is a.opt


# -- dtypes (issue #19 row 3) --------------------------------------------------------------
def test_clip_keeps_a_0d_bfloat16_grad_beside_float32_leaves():
    """Regression: the clip promoted a 0-d bfloat16 grad to float32 and the update raised."""
    params = {"w": torch.randn(3, 4), "s": torch.tensor(0.5, dtype=torch.bfloat16)}
    grads = {"w": torch.randn(3, 4) * 10, "s": torch.tensor(3.0, dtype=torch.bfloat16)}
    clipped, norm = fc.clip_by_global_norm(grads, 1.0)
    assert {k: v.dtype for k, v in clipped.items()} == {k: v.dtype for k, v in grads.items()}
    ref = {k: v.clone() for k, v in grads.items()}
    ref_norm = torch.nn.utils.clip_grad_norm_(_with_grads(ref), 1.0)
    assert torch.equal(norm, ref_norm)
    for k in grads:
        assert torch.equal(clipped[k], ref[k]), k
    for opt in (
        fc.with_clipping(fc.adam(0.1), 1.0),
        fc.chain(fc.clip_grad_value(0.1), fc.adam(0.1)),
    ):
        new, _ = opt.update(params, grads, opt.init(params))
        assert new["s"].dtype == torch.bfloat16 and new["w"].dtype == torch.float32
    out, _ = fc.clip_grad_value(0.1).update(grads, None, params)
    assert out["s"].dtype == torch.bfloat16 and float(out["s"]) == pytest.approx(0.1, rel=1e-2)


def _with_grads(grads):
    """Leaf tensors whose .grad are ``grads``' tensors (clip_grad_norm_ writes them in place)."""
    ps = []
    for g in grads.values():
        p = torch.zeros_like(g, requires_grad=True)
        p.grad = g
        ps.append(p)
    return ps


def test_clip_grad_value_matches_torch_bit_for_bit():
    grads = make_grads(0, dtype=torch.float32)
    masks = {k: k != "l0.weight" for k in SHAPES}
    out, _ = fc.clip_grad_value(0.7).update(grads, None, None, masks)
    ref = {k: v.clone() for k, v in grads.items() if masks[k]}
    torch.nn.utils.clip_grad_value_(_with_grads(ref), 0.7)
    for k in ref:
        assert torch.equal(out[k], ref[k]), k
    assert out["l0.weight"] is grads["l0.weight"]


# -- dynamic (tensor) masks under vmap ---------------------------------------------------------
def test_transforms_honour_batched_tensor_masks_per_member():
    E = 3
    member_masks = [
        {k: True for k in SHAPES},
        {k: not k.startswith("l0") for k in SHAPES},
        {k: k.startswith("head") for k in SHAPES},
    ]
    batched = {k: torch.tensor([m[k] for m in member_masks]) for k in SHAPES}
    grads = [
        make_grads(i, [k for k in SHAPES if not member_masks[i][k]], dtype=torch.float32)
        for i in range(E)
    ]
    sg = {k: torch.stack([g[k] for g in grads]) for k in SHAPES}
    for transform in (fc.clip_grad_norm(0.5), fc.clip_grad_value(0.2)):
        out = vmap(lambda g, m, t=transform: t.update(g, t.init(None), None, m)[0])(sg, batched)
        for i in range(E):
            ref, _ = transform.update(grads[i], transform.init(None), None, member_masks[i])
            for k in SHAPES:
                torch.testing.assert_close(out[k][i], ref[k], rtol=1e-6, atol=1e-7)
    norms = vmap(lambda g, m: fc.global_norm(g, m))(sg, batched)
    for i in range(E):
        torch.testing.assert_close(norms[i], fc.global_norm(grads[i], member_masks[i]))
    finite = vmap(lambda g, m: fc.all_finite(g, m))(
        {
            k: torch.where(~batched[k].reshape(-1, *[1] * (v.dim() - 1)), float("nan"), v)
            for k, v in sg.items()
        },
        batched,
    )
    assert finite.tolist() == [True, True, True]


def test_chain_vmapped_update_per_member_coeffs():
    E = 4
    params = make_params()
    stacked = {k: torch.stack([v + i for i in range(E)]) for k, v in params.items()}
    masks = {k: k != "l1.weight" for k in SHAPES}
    opt = fc.chain(fc.nonfinite_guard(), fc.clip_grad_norm(1.0), fc.adam(0.05))
    grads = {
        k: torch.randn(E, *s, generator=torch.Generator().manual_seed(len(k)), dtype=DT) * 3
        for k, s in SHAPES.items()
    }
    grads["l0.bias"][2, 0] = float("nan")  # member 2 skips
    cs = torch.tensor([1.0, 0.5, 2.0, 0.0], dtype=DT)
    state = vmap(lambda p: opt.init(p, masks))(stacked)
    new, s2 = vmap(lambda p, g, s, c: opt.update(p, g, s, masks, dict.fromkeys(SHAPES, c)))(
        stacked, grads, state, cs
    )
    assert s2["skipped"].tolist() == [0, 0, 1, 0] and s2["step"].tolist() == [1, 1, 0, 1]
    for i in range(E):
        p_i = {k: v[i] for k, v in stacked.items()}
        g_i = {k: v[i] for k, v in grads.items()}
        ref, rs = opt.update(
            p_i, g_i, opt.init(p_i, masks), masks, dict.fromkeys(SHAPES, float(cs[i]))
        )
        for k in SHAPES:
            torch.testing.assert_close(new[k][i], ref[k], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(s2["grad_norm"][i], rs["grad_norm"])


# -- chain: bad inputs ---------------------------------------------------------------------
def test_chain_bad_inputs():
    with pytest.raises(TypeError, match="at least an optimizer"):
        fc.chain()
    with pytest.raises(TypeError, match="optimizer"):
        fc.chain(fc.clip_grad_norm(1.0))
    with pytest.raises(TypeError, match="only the last argument"):
        fc.chain(fc.sgd(0.1), fc.adam(0.1))
    with pytest.raises(ValueError, match="grad_norm"):
        fc.chain(fc.clip_grad_norm(1.0), fc.clip_grad_norm(2.0), fc.sgd(0.1))
    with pytest.raises(TypeError, match="transform 0"):
        fc.chain(object(), fc.sgd(0.1))
    opt = fc.chain(fc.clip_grad_norm(1.0), fc.sgd(0.1))
    p = make_params()
    s = opt.init(p)
    with pytest.raises(ValueError, match="grad_norm"):
        opt.update(p, make_grads(0), {k: v for k, v in s.items() if k != "grad_norm"})
    with pytest.raises(ValueError, match="tail"):
        opt.update(p, dict(make_grads(0), tail=torch.ones(1)), s)
    with pytest.raises(TypeError, match="l0.bias"):
        opt.update(p, make_grads(0), s, dict.fromkeys(SHAPES, True) | {"l0.bias": 1})
    with pytest.raises(ValueError, match="already has a 'grad_norm'"):
        fc.chain(fc.clip_grad_norm(1.0), _StateWith("grad_norm")).init(p)


class _StateWith:
    """An optimizer whose state already holds ``key``."""

    def __init__(self, key):
        self.key = key

    def init(self, params, masks=None):
        return {self.key: torch.zeros(())}

    def update(self, params, grads, state, masks=None, coeffs=None, *, donate=False):
        return params, state

    def transition(self, state, params, old_masks, new_masks):
        return state


class Scale:
    """A user transform with no state_key (its entry is "transform{i}") and a transition."""

    def __init__(self, factor):
        self.factor = factor
        self.transitions = 0

    def init(self, params, masks=None):
        return {"calls": torch.zeros((), dtype=torch.int64)}

    def update(self, grads, state, params, masks=None):
        seen = {k: g is not None for k, g in grads.items()}
        self.seen = seen
        out = {k: None if g is None else g * self.factor for k, g in grads.items()}
        return out, {"calls": state["calls"] + 1}

    def transition(self, state, params, old_masks, new_masks):
        self.transitions += 1
        return state


def test_user_transform_sees_trainable_leaves_only():
    params = make_params()
    masks = {k: k != "l0.weight" for k in SHAPES}
    t = Scale(2.0)
    opt = fc.chain(t, fc.sgd(0.5))
    state = opt.init(params, masks)
    assert set(state) == {"step", "count", "transform0"}
    grads = make_grads(0)
    for g in (grads, fc.partition(grads, masks)[0]):
        new, s = opt.update(params, g, state, masks)
        assert t.seen == masks  # frozen leaf: None, whatever the caller passed
        ref, _ = fc.sgd(1.0).update(params, grads, fc.sgd(1.0).init(params, masks), masks)
        close(new, ref)
        assert int(s["transform0"]["calls"]) == 1
    s2 = opt.transition(s, params, masks, dict.fromkeys(SHAPES, True))
    assert t.transitions == 1 and s2["transform0"] is s["transform0"]


def test_chain_save_load_round_trip(tmp_path):
    params = make_params()
    opt = fc.skip_nonfinite(fc.chain(fc.clip_grad_norm(1.0), Scale(0.5), fc.adam(0.1)))
    state = opt.init(params)
    params, state = opt.update(params, make_grads(0), state)
    fc.save(tmp_path / "c.pt", {"params": params, "state": state})
    back = fc.load(tmp_path / "c.pt")
    p1, s1 = opt.update(params, make_grads(1), state)
    p2, s2 = opt.update(back["params"], make_grads(1), back["state"])
    for k in SHAPES:
        assert torch.equal(p1[k], p2[k])
    assert torch.equal(s1["grad_norm"], s2["grad_norm"]) and int(s2["step"]) == 2


# -- multi_optimizer ------------------------------------------------------------------------
MATRICES = [k for k, s in SHAPES.items() if len(s) == 2]


def muon_like_labels(params):
    return {k: "sgd" if v.ndim == 2 else "adam" for k, v in params.items()}


@pytest.mark.parametrize("labels_kind", ["tree", "callable", "pattern"])
def test_multi_optimizer_matches_two_torch_optimizers(labels_kind):
    """SGD momentum on the 2-D weights + Adam on the rest vs two torch.optim optimizers on
    disjoint param sets: coefficients as param groups (lr * coef), each optimizer its own
    lr schedule, a frozen leaf unfrozen at a phase change (add_param_group)."""
    params = make_params()
    if labels_kind == "tree":
        labels = muon_like_labels(params)
    elif labels_kind == "callable":
        labels = muon_like_labels
    else:
        labels = fc.labels_by_pattern(params, {"sgd": r".*weight"}, default="adam")
    opt = fc.multi_optimizer(
        {
            "sgd": fc.sgd(fc.step_lr(0.1, 2, 0.5), momentum=0.9),
            "adam": fc.adam(0.01, weight_decay=0.1),
        },
        labels,
    )
    coeffs = {
        "l0.weight": 0.5,
        "l0.bias": 2.0,
        "l1.weight": 1.0,
        "l1.bias": 0.25,
        "head.weight": 1.5,
    }
    masks1 = {k: k not in ("l1.weight", "l1.bias") for k in SHAPES}
    masks2 = dict.fromkeys(SHAPES, True)
    state = opt.init(params, masks1)
    assert list(state) == ["sgd", "adam"]

    tp = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    base = {"sgd": 0.1, "adam": 0.01}

    def group(k):
        label = "sgd" if k in MATRICES else "adam"
        return {"params": [tp[k]], "lr": base[label] * coeffs[k], "coef": coeffs[k]}

    t_sgd = torch.optim.SGD([group(k) for k in MATRICES if masks1[k]], momentum=0.9, foreach=False)
    rest = [k for k in SHAPES if k not in MATRICES]
    t_adam = torch.optim.Adam(
        [group(k) for k in rest if masks1[k]], weight_decay=0.1, foreach=False
    )
    masks = masks1
    for step in range(6):
        if step == 3:
            state = opt.transition(state, params, masks1, masks2)
            for k in SHAPES:
                if not masks1[k]:
                    (t_sgd if k in MATRICES else t_adam).add_param_group(group(k))
            masks = masks2
        for g in t_sgd.param_groups:  # StepLR(2, 0.5) of the sgd optimizer's own step
            g["lr"] = 0.1 * 0.5 ** (step // 2) * g["coef"]
        grads = make_grads(step, [k for k in SHAPES if not masks[k]])
        params, state = opt.update(params, grads, state, masks, coeffs)
        for k in SHAPES:
            tp[k].grad = grads[k].clone() if masks[k] else None
        t_sgd.step()
        t_adam.step()
        close(params, {k: v.detach() for k, v in tp.items()})
    assert int(state["sgd"]["step"]) == int(state["adam"]["step"]) == 6
    assert float(state["adam"]["count"]["l1.bias"]) == 3.0
    assert state["adam"]["exp_avg"]["l0.weight"].numel() == 0  # not adam's leaf


def test_multi_optimizer_with_chains_and_partition_grads():
    params = make_params()
    masks = {k: k != "l0.bias" for k in SHAPES}
    opt = fc.multi_optimizer(
        {"a": fc.with_clipping(fc.sgd(0.1), 0.5), "b": fc.skip_nonfinite(fc.adam(0.1))},
        {k: "a" if k in MATRICES else "b" for k in SHAPES},
    )
    state = opt.init(params, masks)
    assert set(state["a"]) == {"step", "count", "grad_norm"} and "skipped" in state["b"]
    grads = make_grads(0)
    tr, _ = fc.partition(grads, masks)
    new, s = opt.update(params, tr, state, masks)
    # clipping is per label: its norm counts only the matrices
    assert torch.equal(s["a"]["grad_norm"], fc.global_norm({k: grads[k] for k in MATRICES}).float())
    assert new["l0.bias"] is params["l0.bias"]
    bad = dict(grads, **{"l1.bias": torch.tensor([float("nan"), 0.0], dtype=DT)})
    new2, s2 = opt.update(params, bad, state, masks)
    assert int(s2["b"]["skipped"]) == 1 and new2["l1.bias"] is params["l1.bias"]
    assert not torch.equal(new2["l0.weight"], params["l0.weight"])  # the other label stepped


def test_multi_optimizer_save_load_and_vmap(tmp_path):
    params = make_params()
    opt = fc.multi_optimizer(
        {"sgd": fc.sgd(0.1, momentum=0.9), "adam": fc.adam(0.1)}, muon_like_labels
    )
    state = opt.init(params)
    params, state = opt.update(params, make_grads(0), state)
    fc.save(tmp_path / "m.pt", state)
    back = fc.load(tmp_path / "m.pt")
    g = make_grads(1)
    p1, _ = opt.update(params, g, state)
    p2, _ = opt.update(params, g, back)
    for k in SHAPES:
        assert torch.equal(p1[k], p2[k])
    # vmapped update with per-member coefficients equals a loop
    E = 3
    stacked = {k: torch.stack([v * (i + 1) for i in range(E)]) for k, v in params.items()}
    sg = {
        k: torch.randn(E, *s, generator=torch.Generator().manual_seed(len(k)), dtype=DT)
        for k, s in SHAPES.items()
    }
    cs = torch.tensor([0.0, 1.0, 3.0], dtype=DT)
    vs = vmap(opt.init)(stacked)
    vp, vs2 = vmap(lambda p, g, s, c: opt.update(p, g, s, None, dict.fromkeys(SHAPES, c)))(
        stacked, sg, vs, cs
    )
    for i in range(E):
        p_i = {k: v[i] for k, v in stacked.items()}
        ref, _ = opt.update(
            p_i,
            {k: v[i] for k, v in sg.items()},
            opt.init(p_i),
            None,
            dict.fromkeys(SHAPES, float(cs[i])),
        )
        for k in SHAPES:
            torch.testing.assert_close(vp[k][i], ref[k], rtol=1e-10, atol=1e-12)
    assert vs2["sgd"]["step"].tolist() == [1, 1, 1]


def test_multi_optimizer_bad_labels_name_paths_and_close_matches():
    params = make_params()
    opts = {"muon": fc.sgd(0.1), "adamw": fc.adamw(0.1)}
    labels = {k: "adamw" for k in SHAPES}
    with pytest.raises(ValueError, match=r"'adamv' at 'l0.bias'.*did you mean \['adamw'\]"):
        fc.multi_optimizer(opts, labels | {"l0.bias": "adamv"}).init(params)
    with pytest.raises(ValueError, match=r"'l0.biass' is not a params path.*'l0.bias'"):
        bad = {("l0.biass" if k == "l0.bias" else k): v for k, v in labels.items()}
        fc.multi_optimizer(opts, bad).init(params)
    with pytest.raises(ValueError, match="no label for"):
        fc.multi_optimizer(opts, {k: "adamw" for k in list(SHAPES)[:-1]}).init(params)
    with pytest.raises(TypeError, match="l1.bias"):
        fc.multi_optimizer(opts, labels | {"l1.bias": 3}).init(params)
    with pytest.raises(TypeError, match="non-empty dict"):
        fc.multi_optimizer({}, labels)
    with pytest.raises(TypeError, match="muon"):
        fc.multi_optimizer({"muon": object()}, labels)
    opt = fc.multi_optimizer(opts, labels)
    state = opt.init(params)
    with pytest.raises(ValueError, match="missing \\['muon'\\]"):
        opt.update(params, make_grads(0), {"adamw": state["adamw"]})
    # checked before any sub-optimizer runs: nothing donated, nothing changed
    snap = {k: v.clone() for k, v in params.items()}
    grads = dict(make_grads(0), **{"head.weight": None})
    with pytest.raises(ValueError, match="head.weight"):
        opt.update(params, grads, state, donate=True)
    for k in SHAPES:
        assert torch.equal(params[k], snap[k])


def test_labels_by_pattern():
    params = make_params()
    labels = fc.labels_by_pattern(params, {"muon": r"l\d\.weight", "head": "head"}, default="adamw")
    assert labels == {
        "l0.weight": "muon",
        "l0.bias": "adamw",
        "l1.weight": "muon",
        "l1.bias": "adamw",
        "head.weight": "head",
    }
    nested = {"a": [torch.zeros(2, 2), torch.zeros(2)], "b": {"c": torch.zeros(1)}}
    assert fc.labels_by_pattern(nested, {"x": "a", "y": ["b.c"]}) == {
        "a": ["x", "x"],
        "b": {"c": "y"},
    }
    with pytest.raises(ValueError, match=r"'hed' matches no.*head"):
        fc.labels_by_pattern(params, {"x": "hed"}, default="y")
    with pytest.raises(ValueError, match="selected by both"):
        fc.labels_by_pattern(params, {"x": "l0", "y": r".*weight"})
    with pytest.raises(ValueError, match="no pattern selects"):
        fc.labels_by_pattern(params, {"x": "l0"})


@pytest.mark.parametrize("kind", ["chain", "multi"])
def test_dcp_checkpoint_of_chain_and_multi_states(tmp_path, kind):
    import funcurriculum.distributed as fcd

    def make():
        if kind == "chain":
            return fc.skip_nonfinite(fc.with_clipping(fc.adam(0.1), 1.0))
        return fc.multi_optimizer(
            {"sgd": fc.with_clipping(fc.sgd(0.1, momentum=0.9), 0.5), "adam": fc.adam(0.1)},
            muon_like_labels,
        )

    opt = make()
    params = make_params()
    masks = {k: k != "l1.bias" for k in SHAPES}
    state = opt.init(params, masks)
    for step in range(2):
        params, state = opt.update(params, make_grads(step), state, masks)
    fcd.save(tmp_path / "c", params, state, masks=masks)
    back = fcd.load(tmp_path / "c", make_params(seed=5), make())
    p1, s1 = opt.update(params, make_grads(2), state, masks)
    p2, s2 = opt.update(back["params"], make_grads(2), back["state"], back["masks"])
    for k in SHAPES:
        assert torch.equal(p1[k], p2[k]), k
    a, _ = fc._tree.flatten(s1)
    b, _ = fc._tree.flatten(s2)
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_multi_optimizer_with_batched_masks_per_member_and_engine_choice():
    """Dynamic masks: each vmapped member has its own frozen set, across labels."""
    params = make_params()
    opt = fc.multi_optimizer(
        {"sgd": fc.sgd(0.1, momentum=0.9), "adam": fc.adam(0.1)}, muon_like_labels
    )
    member_masks = [dict.fromkeys(SHAPES, True), {k: k.startswith("l1") for k in SHAPES}]
    batched = {k: torch.tensor([m[k] for m in member_masks]) for k in SHAPES}
    stacked = {k: torch.stack([v, v * 2]) for k, v in params.items()}
    g = make_grads(0)
    sg = {k: torch.stack([v, -v]) for k, v in g.items()}
    vs = vmap(opt.init)(stacked)
    vp, _ = vmap(lambda p, g, s, m: opt.update(p, g, s, m))(stacked, sg, vs, batched)
    for i in range(2):
        p_i = {k: v[i] for k, v in stacked.items()}
        ref, _ = opt.update(p_i, {k: v[i] for k, v in sg.items()}, opt.init(p_i), member_masks[i])
        for k in SHAPES:
            torch.testing.assert_close(vp[k][i], ref[k], rtol=1e-10, atol=1e-12)
            if not member_masks[i][k]:
                assert torch.equal(vp[k][i], p_i[k])
    # an engine choice goes through to every part
    chained = fc.chain(fc.clip_grad_norm(1.0), opt)
    a, _ = chained.update(params, g, chained.init(params), engine="reference")
    b, _ = chained.update(params, g, chained.init(params))
    close(a, b)


@pytest.mark.slow
def test_chain_and_multi_compile_without_graph_breaks():
    """fullgraph=True: the gate selects with torch.where while tracing, labels are not cached."""
    p = {"a": torch.randn(3, 3), "b": torch.randn(3)}
    bad = {"a": torch.randn(3, 3), "b": torch.tensor([1.0, float("nan"), 0.0])}
    good = {"a": torch.randn(3, 3), "b": torch.randn(3)}
    opts = [
        fc.chain(fc.nonfinite_guard(), fc.clip_grad_norm(1.0), fc.adam(0.1)),
        fc.multi_optimizer(
            {
                "x": fc.with_clipping(fc.sgd(0.1, momentum=0.9), 1.0),
                "y": fc.skip_nonfinite(fc.adam(0.1)),
            },
            {"a": "x", "b": "y"},
        ),
    ]
    for opt in opts:
        s = opt.init(p)
        step = torch.compile(
            lambda p, g, s, opt=opt: opt.update(p, g, s), backend="aot_eager", fullgraph=True
        )
        for g in (bad, good):
            a, sa = step(p, g, s)
            b, sb = opt.update(p, g, s)
            for k in p:  # compiled: the reference math, eager: torch's kernels
                torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
            la, _ = fc._tree.flatten(sa)
            lb, _ = fc._tree.flatten(sb)
            assert len(la) == len(lb)
            for x, y in zip(la, lb):
                torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_training_state_round_trip_of_chain_and_multi_states(tmp_path):
    params = make_params()
    opt = fc.chain(
        fc.clip_grad_norm(1.0),
        fc.multi_optimizer(
            {"sgd": fc.sgd(0.1, momentum=0.9), "adam": fc.adam(0.1)}, muon_like_labels
        ),
    )
    state = opt.init(params)
    params, state = opt.update(params, make_grads(0), state)
    path = fc.save_training_state(tmp_path / "t.pt", params=params, opt_state=state, step=1)
    ts = fc.load_training_state(path, like_params=params)
    a, _ = fc._tree.flatten(ts.opt_state)
    b, _ = fc._tree.flatten(state)
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
    # a tampered sub-state is still refused, naming where
    counts = dict(state["adam"]["count"], **{"l0.bias": torch.tensor(-1.0)})
    bad = {**state, "adam": {**state["adam"], "count": counts}}
    with pytest.raises(ValueError, match="adam"):
        fc.save_training_state(tmp_path / "u.pt", params=params, opt_state=bad)


def test_all_finite_edge_cases():
    big = torch.full((3,), 3e38)  # finite, though its 2-norm overflows
    assert bool(fc.all_finite({"a": big, "e": torch.zeros(0)}))
    assert not bool(fc.all_finite({"a": torch.tensor([1.0, float("inf")], dtype=torch.bfloat16)}))
    assert not bool(fc.all_finite({"c": torch.tensor([1 + 1j, complex(float("nan"), 0.0)])}))
    assert not bool(fc.all_finite({"e": torch.zeros(0), "n": torch.tensor(float("nan"))}))
