"""Module-aware curricula: from_module, keep=, classes=, tied weights, buffers, torch.optim export."""

from __future__ import annotations

import copy
import os
import re
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

import funcurriculum as fc
from funcurriculum.models import BertStyle, ResNetSmall


class MyBN(nn.BatchNorm1d):
    """A user subclass of a norm layer: keep=NORM_LAYERS must match it."""


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(
            nn.Linear(4, 6),
            nn.BatchNorm1d(6),
            nn.ReLU(),
            nn.Sequential(nn.Linear(6, 6), MyBN(6), nn.LayerNorm(6)),
        )
        self.head = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 2))

    def forward(self, x):
        return self.head(self.backbone(x))


class Tied(nn.Module):
    """Embedding tied to an output projection (the decoder has its own bias)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(7, 4)
        self.body = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.decoder = nn.Linear(4, 7)
        self.decoder.weight = self.embed.weight

    def forward(self, ids):
        return self.decoder(self.body(self.embed(ids)))


def trainable(cur: fc.Curriculum) -> list[str]:
    return [p for p, m in cur.masks.items() if m]


# -- from_module / NORM_LAYERS ---------------------------------------------------------
def test_norm_layers_tuple():
    for cls in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.LayerNorm):
        assert cls in fc.NORM_LAYERS
    for cls in (nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d):
        assert cls in fc.NORM_LAYERS
    assert nn.RMSNorm in fc.NORM_LAYERS and nn.LazyBatchNorm1d in fc.NORM_LAYERS
    assert nn.Linear not in fc.NORM_LAYERS and nn.Dropout not in fc.NORM_LAYERS
    assert isinstance(fc.NORM_LAYERS, tuple)


def test_from_module_is_a_curriculum_over_named_parameters():
    m = Net()
    cur = fc.Curriculum.from_module(m)
    plain = fc.Curriculum(dict(m.named_parameters()))
    assert cur.paths == list(dict(m.named_parameters()))
    assert cur == plain and cur.layer_names == plain.layer_names
    assert cur.freeze("backbone") == plain.freeze("backbone")
    assert cur.module_classes["backbone.1"] == "torch.nn.modules.batchnorm.BatchNorm1d"
    with pytest.raises(TypeError, match="nn.Module"):
        fc.Curriculum.from_module({"w": torch.zeros(1)})


def test_from_module_refuses_lazy_modules():
    with pytest.raises(ValueError, match="lazy"):
        fc.Curriculum.from_module(nn.Sequential(nn.LazyLinear(3)))


# -- keep= -----------------------------------------------------------------------------
def test_freeze_keep_norm_layers_trainable():
    cur = fc.Curriculum.from_module(Net()).freeze("backbone", keep=fc.NORM_LAYERS)
    assert trainable(cur) == [
        "backbone.1.weight",
        "backbone.1.bias",
        "backbone.3.1.weight",  # MyBN: a subclass of BatchNorm1d
        "backbone.3.1.bias",
        "backbone.3.2.weight",
        "backbone.3.2.bias",
        "head.0.weight",
        "head.0.bias",
        "head.1.weight",
        "head.1.bias",
        "head.2.weight",
        "head.2.bias",
    ]
    # default (Lighter parity): nothing kept
    assert trainable(fc.Curriculum.from_module(Net()).freeze("backbone"))[0] == "head.0.weight"


def test_keep_variants():
    base = fc.Curriculum.from_module(Net())
    # a single class, a class name, a qualified name
    a = base.freeze("backbone", keep=nn.LayerNorm)
    assert trainable(a)[:2] == ["backbone.3.2.weight", "backbone.3.2.bias"]
    assert base.freeze("backbone", keep="LayerNorm") == a
    assert base.freeze("backbone", keep="torch.nn.modules.normalization.LayerNorm") == a
    assert base.freeze("backbone", keep=(MyBN,)).masks["backbone.1.weight"] is False
    # keep=() keeps nothing
    assert base.freeze("backbone", keep=()) == base.freeze("backbone")
    # kept layers become trainable even if an earlier call froze them (later call wins)
    assert base.freeze("backbone").freeze("backbone", keep=fc.NORM_LAYERS) == base.freeze(
        "backbone", keep=fc.NORM_LAYERS
    )
    # selecting a norm layer or its leaf directly: it is inside the selection, so kept
    assert base.freeze("backbone.1", keep=fc.NORM_LAYERS) == base
    assert base.freeze("backbone.1.weight", keep=fc.NORM_LAYERS) == base
    # a kept class *above* the selected layer does not count
    with pytest.warns(UserWarning, match="keeps nothing"):
        sub = base.freeze("backbone.3.0", keep=nn.Sequential)
    assert sub == base.freeze("backbone.3.0")
    with pytest.raises(TypeError, match="keep"):
        base.freeze("backbone", keep=3)


def test_keep_needs_from_module():
    m = Net()
    plain = fc.Curriculum(dict(m.named_parameters()))
    with pytest.raises(ValueError, match="from_module"):
        plain.freeze("backbone", keep=fc.NORM_LAYERS)
    with pytest.raises(ValueError, match="from_module"):
        plain.freeze("backbone", classes=nn.Linear)


# -- classes= / select_by_class --------------------------------------------------------
def test_select_by_class():
    cur = fc.Curriculum.from_module(Net())
    assert cur.select_by_class(nn.Linear) == ["backbone.0", "backbone.3.0", "head.0", "head.2"]
    assert cur.select_by_class(nn.Linear, under="backbone") == ["backbone.0", "backbone.3.0"]
    assert cur.select_by_class("BatchNorm1d", under=["head"]) == ["head.1"]
    assert cur.select_by_class(nn.BatchNorm1d, under="backbone") == ["backbone.1", "backbone.3.1"]
    # the layer matched by `under` itself counts
    assert cur.select_by_class(nn.Sequential, under="backbone.3") == ["backbone.3"]


def test_select_by_class_errors_name_what_is_there():
    cur = fc.Curriculum.from_module(Net())
    with pytest.raises(ValueError) as e:
        cur.select_by_class(nn.Conv1d, under="backbone")
    msg = str(e.value)
    assert "Conv1d" in msg and "backbone" in msg and "Linear" in msg and "BatchNorm1d" in msg
    with pytest.raises(ValueError, match="did you mean"):
        cur.select_by_class("Linea")
    with pytest.raises(ValueError, match="matches no layer"):
        cur.select_by_class(nn.Linear, under="backbon")
    with pytest.raises(TypeError, match="classes"):
        cur.select_by_class(1.5)
    before = cur
    with pytest.raises(ValueError):
        cur.freeze("head", classes=nn.Conv2d)
    assert cur == before  # immutable anyway; nothing half-applied


def test_classes_argument_on_freeze_unfreeze_coefficients():
    cur = fc.Curriculum.from_module(Net())
    a = cur.freeze("backbone", classes=nn.Linear)
    assert a == cur.freeze([r"backbone\.0", r"backbone\.3\.0"])
    b = a.unfreeze(classes=nn.Linear)
    assert b == cur
    c = cur.set_lr_coefficient(0.5, classes=fc.NORM_LAYERS)
    assert c.coeffs["backbone.1.weight"] == 0.5 and c.coeffs["backbone.3.2.bias"] == 0.5
    assert c.coeffs["backbone.0.weight"] == 1.0
    assert c.lr_coefficients == {
        "backbone.1": 0.5,
        "backbone.3.1": 0.5,
        "backbone.3.2": 0.5,
        "head.1": 0.5,
    }
    with pytest.raises(TypeError, match="patterns"):
        cur.freeze()


def test_transformer_out_proj_subclass_matches_linear():
    m = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 1, enable_nested_tensor=False
    )
    cur = fc.Curriculum.from_module(m)
    assert "layers.0.self_attn.out_proj" in cur.select_by_class(nn.Linear)


# -- tied weights --------------------------------------------------------------------------
def test_tied_weight_is_one_leaf_with_both_names():
    m = Tied()
    cur = fc.Curriculum.from_module(m)
    assert cur.paths == list(dict(m.named_parameters()))
    assert "decoder.weight" not in cur.paths
    assert cur.tied == {"embed.weight": ("decoder.weight",)}
    assert "decoder" in cur.layer_names and "decoder.weight" not in cur.layer_names
    assert cur.select("decoder.weight") == ["decoder.weight"]
    s = cur.summary()
    assert "embed.weight (tied: decoder.weight)" in s
    assert "decoder.weight (= embed.weight)" in s


def test_freezing_through_either_name_acts_on_the_leaf():
    cur = fc.Curriculum.from_module(Tied())
    a = cur.freeze("decoder")
    assert a.masks == {
        "embed.weight": False,
        "body.0.weight": True,
        "body.0.bias": True,
        "body.1.weight": True,
        "body.1.bias": True,
        "decoder.bias": False,
    }
    assert cur.freeze("decoder.weight").masks["embed.weight"] is False
    assert cur.freeze("embed").masks["embed.weight"] is False
    # later calls win, through either name
    assert cur.freeze("embed").unfreeze("decoder").masks["embed.weight"] is True
    assert cur.freeze("decoder").unfreeze("embed").masks == cur.freeze("decoder.bias").masks


def test_coefficient_through_either_name():
    cur = fc.Curriculum.from_module(Tied())
    a = cur.set_lr_coefficient(0.5, "decoder")
    assert a.coeffs["embed.weight"] == 0.5 and a.coeffs["decoder.bias"] == 0.5
    b = a.set_lr_coefficient(0.1, "embed")  # a later call through the other name wins
    assert b.coeffs["embed.weight"] == 0.1 and b.coeffs["decoder.bias"] == 0.5
    c = b.set_lr_coefficient(1.0, "decoder.weight")
    assert c.coeffs["embed.weight"] == 1.0
    # both names in one call with the same outcome: fine
    d = cur.set_lr_coefficient(0.2, ["embed", "decoder"])
    assert d.coeffs["embed.weight"] == 0.2
    # resetting everything to 1.0 leaves no entries behind
    assert cur.set_lr_coefficient(0.3, "decoder").set_lr_coefficient(1.0, ["decoder"]) == cur
    assert (
        cur.set_lr_coefficient(0.3, "decoder").set_lr_coefficient(1.0, "decoder").lr_coefficients
        == {}
    )


def test_conflicting_coefficients_through_two_names_raise():
    m = BertStyle(head="lm")
    cur = fc.Curriculum.from_module(m).set_lr_coefficient(0.3, "embeddings.word_embeddings")
    with pytest.raises(ValueError) as e:
        cur.set_lr_coefficient(0.2, ["embeddings", "lm_head"])
    msg = str(e.value)
    assert "lm_head.decoder.weight" in msg and "embeddings.word_embeddings" in msg
    assert "0.3" in msg and "0.2" in msg
    # through one name only: that name acts
    ok = cur.set_lr_coefficient(0.2, "lm_head")
    assert ok.coeffs["embeddings.word_embeddings.weight"] == 0.2
    # through `embeddings` only: the more specific entry keeps 0.3 (torch_mentor rule)
    assert (
        cur.set_lr_coefficient(0.2, "embeddings").coeffs["embeddings.word_embeddings.weight"] == 0.3
    )


def test_conflicting_keep_through_two_names_raises():
    cur = fc.Curriculum.from_module(Tied())
    with pytest.raises(ValueError) as e:
        cur.freeze(["embed", "decoder"], keep=nn.Embedding)
    msg = str(e.value)
    assert "'embed.weight'" in msg and "'decoder.weight'" in msg and "Embedding" in msg
    # one name per call is unambiguous
    with pytest.warns(UserWarning, match="keeps nothing"):
        assert cur.freeze("decoder", keep=nn.Embedding).masks["embed.weight"] is False
    assert cur.freeze("embed", keep=nn.Embedding).masks["embed.weight"] is True
    # both names agreeing: fine
    assert cur.freeze(["embed", "decoder"], keep=(nn.Embedding, nn.Linear)) == cur


def test_shared_submodule_aliases_every_leaf():
    lin = nn.Linear(3, 3)
    m = nn.Sequential(lin, nn.ReLU(), lin)
    cur = fc.Curriculum.from_module(m)
    assert cur.paths == ["0.weight", "0.bias"]
    assert cur.tied == {"0.weight": ("2.weight",), "0.bias": ("2.bias",)}
    assert cur.freeze("2").masks == {"0.weight": False, "0.bias": False}


def test_tied_grads_and_functional_training_match_autograd():
    m = Tied().double()
    cur = fc.Curriculum.from_module(m).freeze("body.1")
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    y = torch.tensor([[2, 3, 4], [5, 6, 0]])

    def loss(p):
        out = functional_call(m, p, (ids,))
        return nn.functional.cross_entropy(out.reshape(-1, 7), y.reshape(-1))

    params = {k: v.detach().clone() for k, v in m.named_parameters()}
    g = grad(loss)(params)
    loss(dict(m.named_parameters())).backward()
    for k, p in m.named_parameters():
        torch.testing.assert_close(g[k], p.grad)  # both uses of the tied weight summed
    opt = fc.adam(0.01)
    new, _ = opt.update(params, g, opt.init(params), cur.masks, cur.coeffs)
    assert not torch.equal(new["embed.weight"], params["embed.weight"])
    assert torch.equal(new["body.1.weight"], params["body.1.weight"])
    # the updated tied leaf drives both uses (functional_call ties aliases by default)
    out = functional_call(
        m, {**dict(m.named_parameters()), "embed.weight": new["embed.weight"]}, (ids,)
    )
    with torch.no_grad():
        m.embed.weight.copy_(new["embed.weight"])
    torch.testing.assert_close(out, m(ids))


# -- torch.optim export ---------------------------------------------------------------------
def test_param_groups_one_group_per_coefficient():
    m = Net()
    cur = (
        fc.Curriculum.from_module(m)
        .set_lr_coefficient(0.1, "backbone")
        .set_lr_coefficient(0.5, "head.2")
        .freeze("backbone.3")
    )
    groups = cur.param_groups(m, 1e-2)
    named = dict(m.named_parameters())
    ids = {id(v): k for k, v in named.items()}
    got = [([ids[id(p)] for p in g["params"]], g["lr"]) for g in groups]
    assert got == [
        (
            ["backbone.0.weight", "backbone.0.bias", "backbone.1.weight", "backbone.1.bias"],
            1e-2 * 0.1,
        ),
        (["head.0.weight", "head.0.bias", "head.1.weight", "head.1.bias"], 1e-2),
        (["head.2.weight", "head.2.bias"], 1e-2 * 0.5),
    ]
    # the same from a dict of tensors; torch.optim accepts them
    assert [g["lr"] for g in cur.param_groups(named, 1e-2)] == [g["lr"] for g in groups]
    opt = torch.optim.Adam(groups)
    assert len(opt.param_groups) == 3
    # named=True: torch.optim records param_names
    opt = torch.optim.SGD(cur.param_groups(m, 0.1, named=True))
    assert opt.param_groups[2]["param_names"] == ["head.2.weight", "head.2.bias"]
    # coefficient 0 is not frozen: it gets a group with lr 0
    z = fc.Curriculum.from_module(m).set_lr_coefficient(0.0, "head")
    assert [g["lr"] for g in z.param_groups(m, 1.0)] == [1.0, 0.0]


def test_param_groups_tied_weight_once():
    m = BertStyle(head="lm")
    cur = fc.Curriculum.from_module(m).set_lr_coefficient(0.5, "lm_head")
    groups = cur.param_groups(m, 1.0)
    flat = [p for g in groups for p in g["params"]]
    assert len(flat) == len({id(p) for p in flat}) == len(list(m.parameters()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.optim.AdamW(groups)
    lrs = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert lrs[id(m.embeddings.word_embeddings.weight)] == 0.5


def test_param_groups_since_and_errors():
    m = Net()
    c1 = fc.Curriculum.from_module(m).freeze("backbone")
    c2 = c1.unfreeze("backbone.3")
    new = c2.param_groups(m, 1.0, since=c1)
    assert [len(g["params"]) for g in new] == [6]
    assert new[0]["params"][0] is m.backbone[3][0].weight
    with pytest.raises(ValueError, match="missing paths"):
        c1.param_groups({"backbone.0.weight": m.backbone[0].weight}, 1.0)
    with pytest.raises(TypeError, match="lr"):
        c1.param_groups(m, fc.constant(1.0))
    with pytest.raises(ValueError, match="lr"):
        c1.param_groups(m, float("nan"))
    with pytest.raises(ValueError, match="other params"):
        c1.param_groups(m, 1.0, since=fc.Curriculum.from_module(Tied()))


def test_apply_requires_grad():
    m = BertStyle(head="lm")
    cur = fc.Curriculum.from_module(m).freeze("embeddings", keep=fc.NORM_LAYERS)
    assert fc.apply_requires_grad(m, cur) is m
    for name, p in m.named_parameters():
        assert p.requires_grad == cur.masks[name], name
    assert m.lm_head.decoder.weight.requires_grad is False  # the tied leaf, via its alias
    assert m.embeddings.LayerNorm.weight.requires_grad is True
    fc.apply_requires_grad(m, cur.unfreeze("embeddings"))
    assert all(p.requires_grad for p in m.parameters())
    other = fc.Curriculum.from_module(Net()).freeze("head")
    with pytest.raises(ValueError, match="do not match"):
        fc.apply_requires_grad(m, other)
    assert all(p.requires_grad for p in m.parameters())  # nothing changed


def _data(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(6, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(n)]
    ys = [torch.randint(0, 10, (6,), generator=g) for _ in range(n)]
    return xs, ys


def test_torch_optim_on_exported_groups_equals_functional_run():
    """The oracle the other way round: torch.optim driven by the curriculum (requires_grad +
    param_groups, add_param_group at the phase change) equals fc.adam + transition."""
    torch.manual_seed(0)
    model = ResNetSmall().double()
    mod_t, mod_f = copy.deepcopy(model), copy.deepcopy(model)
    base = fc.Curriculum.from_module(model)
    c1 = (
        base.set_lr_coefficient(0.1, r"layer[1-3]")
        .set_lr_coefficient(0.5, "layer4")
        .freeze(["conv1", "bn1", "layer1", "layer2", "layer3"], keep=fc.NORM_LAYERS)
    )
    c2 = c1.unfreeze(["layer2", "layer3"])
    lr, betas = 1e-2, (0.8, 0.95)
    xs, ys = _data(6)

    # torch.optim side
    fc.apply_requires_grad(mod_t, c1)
    opt_t = torch.optim.Adam(c1.param_groups(mod_t, lr), betas=betas)
    # functional side
    opt = fc.adam(lr, betas=betas)
    params = {k: v.detach().clone() for k, v in mod_f.named_parameters()}
    buffers = {k: v.clone() for k, v in mod_f.named_buffers()}
    state = opt.init(params, c1.masks)

    def loss_fn(tr, fr, bufs, x, y):
        out = functional_call(mod_f, (fc.combine(tr, fr), bufs), (x,))
        return nn.functional.cross_entropy(out, y)

    cur = c1
    for step, (x, y) in enumerate(zip(xs, ys)):
        if step == 3:  # phase change: unfreeze layer2/layer3
            fc.apply_requires_grad(mod_t, c2)
            for g in c2.param_groups(mod_t, lr, since=c1):
                opt_t.add_param_group(g)
            state = opt.transition(state, params, c1.masks, c2.masks)
            cur = c2
        opt_t.zero_grad()
        nn.functional.cross_entropy(mod_t(x), y).backward()
        opt_t.step()
        tr, fr = fc.partition(params, cur.masks)
        grads = grad(loss_fn)(tr, fr, buffers, x, y)
        params, state = opt.update(params, grads, state, cur.masks, cur.coeffs)
        for k, p in mod_t.named_parameters():
            torch.testing.assert_close(params[k], p.detach(), rtol=0, atol=1e-10, msg=k)
    for k, b in mod_t.named_buffers():
        torch.testing.assert_close(buffers[k], b, rtol=0, atol=1e-10, msg=k)
    # the phase change mattered: layer2 moved only in phase 2, conv1 never, bn1 (kept) did
    assert not torch.equal(params["layer2.0.conv1.weight"], model.layer2[0].conv1.weight)
    assert torch.equal(params["conv1.weight"], model.conv1.weight)
    assert not torch.equal(params["bn1.weight"], model.bn1.weight)


# -- BatchNorm statistics ----------------------------------------------------------------------
def _bn_stats(bufs, prefix):
    return [
        bufs[f"{prefix}.{k}"].clone()
        for k in ("running_mean", "running_var", "num_batches_tracked")
    ]


def _functional_bn_loop(policy: str, steps: int = 3):
    m = Net()
    cur = fc.Curriculum.from_module(m).freeze("backbone")
    opt = fc.sgd(0.1)
    params = {k: v.detach().clone() for k, v in m.named_parameters()}
    buffers = {k: v.clone() for k, v in m.named_buffers()}
    state = opt.init(params, cur.masks)
    before = {k: v.clone() for k, v in buffers.items()}
    g = torch.Generator().manual_seed(0)

    def loss_fn(tr, fr, bufs, x):
        return functional_call(m, (fc.combine(tr, fr), bufs), (x,)).pow(2).mean()

    for _ in range(steps):
        x = torch.randn(8, 4, generator=g)
        tr, fr = fc.partition(params, cur.masks)
        if policy == "shield":
            grads = grad(loss_fn)(tr, fr, fc.shield_buffers(buffers, cur), x)
        elif policy == "eval":
            with fc.frozen_norm_eval(m, cur):
                grads = grad(loss_fn)(tr, fr, buffers, x)
        else:
            grads = grad(loss_fn)(tr, fr, buffers, x)
        params, state = opt.update(params, grads, state, cur.masks, cur.coeffs)
    return m, before, buffers


@pytest.mark.parametrize("policy", ["shield", "eval"])
def test_frozen_batchnorm_statistics_bit_identical(policy):
    m, before, after = _functional_bn_loop(policy)
    for prefix in ("backbone.1", "backbone.3.1"):  # frozen BatchNorms
        for a, b in zip(_bn_stats(before, prefix), _bn_stats(after, prefix)):
            assert torch.equal(a, b), prefix
    # the trainable BatchNorm in the head moves, as Lightning's freeze(train_bn) gives
    assert after["head.1.num_batches_tracked"].item() == 3
    assert not torch.equal(before["head.1.running_mean"], after["head.1.running_mean"])
    assert all(mod.training for mod in m.modules())  # flags restored


def test_without_a_policy_frozen_batchnorm_statistics_move():
    _, before, after = _functional_bn_loop("none")
    assert after["backbone.1.num_batches_tracked"].item() == 3
    assert not torch.equal(before["backbone.1.running_var"], after["backbone.1.running_var"])


def test_keep_norm_layers_statistics_move():
    m = Net()
    cur = fc.Curriculum.from_module(m).freeze("backbone", keep=fc.NORM_LAYERS)
    buffers = {k: v.clone() for k, v in m.named_buffers()}
    functional_call(
        m, (dict(m.named_parameters()), fc.shield_buffers(buffers, cur)), (torch.randn(8, 4),)
    )
    assert buffers["backbone.1.num_batches_tracked"].item() == 1


def test_frozen_norm_eval_uses_running_statistics():
    m = Net()
    with torch.no_grad():
        m.backbone[1].running_mean.uniform_(-1, 1)
        m.backbone[1].running_var.uniform_(0.5, 2)
    cur = fc.Curriculum.from_module(m).freeze("backbone.1")
    x = torch.randn(8, 4)
    with fc.frozen_norm_eval(m, cur):
        assert not m.backbone[1].training and m.backbone[3][1].training and m.head[1].training
        h = functional_call(m.backbone[:2], dict(m.backbone[:2].named_parameters()), (x,))
    expect = m.backbone[1].eval()(m.backbone[0](x))
    torch.testing.assert_close(h, expect)
    assert m.backbone[1].training is False  # we set it to eval ourselves above
    m.train()
    with pytest.raises(ValueError, match="do not match"):
        with fc.frozen_norm_eval(m, fc.Curriculum.from_module(Tied())):
            pass


def test_parameterless_norm_follows_its_frozen_ancestor():
    m = nn.Sequential(
        nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, affine=False)), nn.Linear(4, 1)
    )
    cur = fc.Curriculum.from_module(m).freeze("0")
    bufs = dict(m.named_buffers())
    before = bufs["0.1.running_mean"].clone()
    functional_call(
        m, (dict(m.named_parameters()), fc.shield_buffers(bufs, cur)), (torch.randn(5, 3),)
    )
    assert torch.equal(bufs["0.1.running_mean"], before)
    assert (
        fc.merge_buffers(bufs, {k: v + 1 for k, v in bufs.items()}, cur)["0.1.running_mean"]
        is (bufs["0.1.running_mean"])
    )


def test_merge_buffers_pure_and_checked():
    m = Net()
    cur = fc.Curriculum.from_module(m).freeze("backbone")
    old = {k: v.clone() for k, v in m.named_buffers()}
    new = {k: v + 1 for k, v in old.items()}
    out = fc.merge_buffers(old, new, cur)
    assert out["backbone.1.running_mean"] is old["backbone.1.running_mean"]
    assert out["head.1.running_mean"] is new["head.1.running_mean"]
    assert set(out) == set(old)
    with pytest.raises(ValueError, match="different keys"):
        fc.merge_buffers(old, {"x": torch.zeros(1)}, cur)
    with pytest.raises(TypeError, match="dict of buffers"):
        fc.shield_buffers([1, 2], cur)


def test_vmap_ensemble_with_batchnorm():
    """torch.func's "Patching Batch Norm" case: stacked buffers (stack_module_state) let
    train-mode BatchNorm run under vmap; frozen members' statistics stay bit-identical."""
    E = 3
    members = [Net() for _ in range(E)]
    for k, mem in enumerate(members):
        torch.manual_seed(k)
        for p in mem.parameters():
            p.data.normal_()
    cur = fc.Curriculum.from_module(members[0]).freeze("backbone")
    params, buffers = stack_module_state(members)
    base = copy.deepcopy(members[0]).to("meta")
    before = {k: v.clone() for k, v in buffers.items()}
    x = torch.randn(E, 8, 4)

    def loss_fn(tr, fr, bufs, x):
        return (
            functional_call(base, (fc.combine(tr, fr), fc.shield_buffers(bufs, cur)), (x,))
            .pow(2)
            .mean()
        )

    tr, fr = fc.partition(params, cur.masks)
    grads = vmap(grad(loss_fn))(tr, fr, buffers, x)
    opt = fc.adam(0.1)
    state = vmap(lambda p: opt.init(p, cur.masks))(params)
    new, state = vmap(opt.update, in_dims=(0, 0, 0, None, None))(
        params, grads, state, cur.masks, cur.coeffs
    )
    for k in ("backbone.1", "backbone.3.1"):
        for a, b in zip(_bn_stats(before, k), _bn_stats(buffers, k)):
            assert torch.equal(a, b), k
    assert torch.equal(buffers["head.1.num_batches_tracked"], torch.ones(E, dtype=torch.long))
    # each member's trainable BatchNorm moved as a lone functional_call would move it
    for e, mem in enumerate(members):
        solo = {k: v.clone() for k, v in mem.named_buffers()}
        functional_call(mem, (dict(mem.named_parameters()), fc.shield_buffers(solo, cur)), (x[e],))
        torch.testing.assert_close(buffers["head.1.running_mean"][e], solo["head.1.running_mean"])
    assert torch.equal(new["backbone.0.weight"], params["backbone.0.weight"])
    # eval-statistics policy under vmap too
    with fc.frozen_norm_eval(base, cur):
        vmap(grad(loss_fn))(tr, fr, buffers, x)
    assert torch.equal(buffers["backbone.1.running_mean"], before["backbone.1.running_mean"])


# -- checkpoints -----------------------------------------------------------------------------
def _plain(obj):
    if isinstance(obj, dict):
        return all(isinstance(k, (str, int)) and _plain(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return all(_plain(v) for v in obj)
    return obj is None or isinstance(obj, (str, int, float, bool))


def test_save_load_keeps_classes_and_ties(tmp_path):
    m = BertStyle(head="lm")
    cur = (
        fc.Curriculum.from_module(m)
        .freeze("embeddings", keep=fc.NORM_LAYERS)
        .set_lr_coefficient(0.5, "lm_head")
    )
    assert _plain(cur.to_dict())
    path = os.path.join(tmp_path, "cur.pt")
    fc.save(path, {"cur": cur})
    back = fc.load(path)["cur"]
    assert back == cur
    assert back.tied == cur.tied and back.layer_names == cur.layer_names
    assert back.summary() == cur.summary()
    assert back.module_classes == cur.module_classes
    # keep= / classes= match by qualified name (and along the bases) after loading
    assert back.freeze("encoder", keep=fc.NORM_LAYERS) == cur.freeze("encoder", keep=fc.NORM_LAYERS)
    assert back.select_by_class(nn.Linear, under="lm_head") == ["lm_head.dense", "lm_head.decoder"]
    # ties still act after loading
    assert back.freeze("lm_head.decoder").masks["embeddings.word_embeddings.weight"] is False
    assert (
        back.set_lr_coefficient(0.25, "lm_head.decoder").coeffs["embeddings.word_embeddings.weight"]
        == 0.25
    )
    # a plain curriculum's record is unchanged (no new keys)
    plain = fc.Curriculum(dict(m.named_parameters()))
    assert set(plain.to_dict()) == {"skeleton", "numels", "frozen_leaves", "lr_coefficients"}


def test_from_dict_rejects_bad_aliases():
    d = fc.Curriculum.from_module(Tied()).to_dict()
    d["aliases"] = {"decoder.weight": "nope.weight"}
    with pytest.raises(ValueError, match="malformed"):
        fc.Curriculum.from_dict(d)


def test_subclass_keep_by_qualified_base_name_after_load(tmp_path):
    cur = fc.Curriculum.from_module(Net())
    back = fc.Curriculum.from_dict(cur.to_dict())
    # MyBN (a test-local class) matches keep=BatchNorm1d through its stored bases
    assert back.freeze("backbone.3", keep=nn.BatchNorm1d).masks["backbone.3.1.weight"] is True
    assert re.search(r"MyBN", back.module_classes["backbone.3.1"])


# -- invariants ---------------------------------------------------------------------------------

_NET_NAMES = fc.Curriculum.from_module(Net()).layer_names
_OPS = st.lists(
    st.tuples(
        st.sampled_from(["freeze", "unfreeze", "coef"]),
        st.sampled_from(_NET_NAMES),
        st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    ),
    max_size=6,
)


@settings(max_examples=40, deadline=None)
@given(_OPS)
def test_from_module_behaves_as_plain_curriculum(ops):
    m = Net()
    a, b = fc.Curriculum.from_module(m), fc.Curriculum(dict(m.named_parameters()))
    for op, name, c in ops:
        pat = re.escape(name)
        if op == "coef":
            a, b = a.set_lr_coefficient(c, pat), b.set_lr_coefficient(c, pat)
        else:
            a, b = getattr(a, op)(pat), getattr(b, op)(pat)
    assert a == b and a.masks == b.masks and a.coeffs == b.coeffs
    assert a.lr_coefficients == b.lr_coefficients and a.frozen == b.frozen


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["freeze", "unfreeze", "coef"]), st.sampled_from([0.0, 0.5, 2.0])
        ),
        max_size=6,
    )
)
def test_alias_and_canonical_names_act_alike(ops):
    """Any sequence of calls through `decoder` acts on the tied leaf as the same calls
    through `embed.weight` (the leaf path) would."""
    base = fc.Curriculum.from_module(Tied())
    a, b = base, base
    for op, c in ops:
        if op == "coef":
            a, b = (
                a.set_lr_coefficient(c, "decoder.weight"),
                b.set_lr_coefficient(c, "embed.weight"),
            )
        else:
            a, b = getattr(a, op)("decoder.weight"), getattr(b, op)("embed.weight")
    assert a == b


def test_leaves_of_class_for_prefix_selections():
    """The rule a prefix-based Freezer uses for keep=: leaves with a kept layer above them."""
    from funcurriculum._selection import leaves_of_class

    cur = fc.Curriculum.from_module(Net())
    idx = leaves_of_class(cur.index, fc.NORM_LAYERS)
    assert [cur.paths[i] for i in sorted(idx)] == [
        "backbone.1.weight",
        "backbone.1.bias",
        "backbone.3.1.weight",
        "backbone.3.1.bias",
        "backbone.3.2.weight",
        "backbone.3.2.bias",
        "head.1.weight",
        "head.1.bias",
    ]
    with pytest.raises(ValueError, match="from_module"):
        leaves_of_class(fc.Curriculum(dict(Net().named_parameters())).index, nn.LayerNorm)
    with pytest.raises(ValueError, match="from_module"):  # the same check, through a Freezer
        fc.Freezer(name_starts_with="backbone", keep=nn.LayerNorm).select(
            fc.Curriculum(dict(Net().named_parameters()))
        )
