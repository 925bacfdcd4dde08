"""Curricula on real architectures: backbone freezing with norms kept trainable, LLRD by
block matching timm's ``layer_decay`` grouping, gradual unfreezing from the top."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad

import funcurriculum as fc
from funcurriculum.models import BertStyle, ResNetSmall, TinyTransformer

# Per model: constructor, an input batch, the backbone patterns, and the blocks from the
# input side (the stem first) to the output side, each a list of patterns.
MODELS = {
    "resnet": dict(
        make=lambda: ResNetSmall(),
        batch=lambda g: (
            torch.randn(4, 3, 8, 8, generator=g),
            torch.randint(0, 10, (4,), generator=g),
        ),
        backbone=["conv1", "bn1", r"layer\d"],
        blocks=[["conv1", "bn1"], [r"layer1\.0"], [r"layer2\.0"], [r"layer3\.0"], [r"layer4\.0"]],
        head=["fc"],
        # timm's ResNet.group_matcher(coarse=False)
        timm=[(r"^conv1|bn1|maxpool", (0,), None), (r"^layer(\d+)\.(\d+)", (1,), None)],
    ),
    "transformer": dict(
        make=lambda: TinyTransformer(),
        batch=lambda g: (
            torch.randint(0, 50, (4, 6), generator=g),
            torch.randint(0, 3, (4,), generator=g),
        ),
        backbone=["embed", "pos", "encoder"],
        blocks=[
            ["embed", "pos"],
            [r"encoder\.layers\.0"],
            [r"encoder\.layers\.1", r"encoder\.norm"],
        ],
        head=["head"],
        # timm's VisionTransformer.group_matcher with our names: final norm with the last block
        timm=[
            (r"^embed|pos", (0,), None),
            (r"^encoder\.layers\.(\d+)", (1,), None),
            (r"^encoder\.norm", (1,), (99999,)),
        ],
    ),
    "bert": dict(
        make=lambda: BertStyle(),
        batch=lambda g: (
            torch.randint(0, 50, (4, 6), generator=g),
            torch.randint(0, 3, (4,), generator=g),
        ),
        backbone=["embeddings", "encoder"],
        blocks=[["embeddings"], [r"encoder\.layer\.0"], [r"encoder\.layer\.1"]],
        head=["pooler", "classifier"],
        timm=[(r"^embeddings", (0,), None), (r"^encoder\.layer\.(\d+)", (1,), None)],
    ),
}

MATCH_PREV_GROUP = 99999


def timm_layer_ids(names: list[str], matchers) -> dict[str, int]:
    """timm's ``group_with_matcher(..., reverse=True)`` rule, written out: each name gets an
    ordinal tuple (group ordinal, regex groups, suffix) from the first matcher that matches
    (unmatched: +inf), ordinals are sorted and numbered, and a ``(99999,)`` suffix joins the
    previous id."""

    def ordinal(name):
        for rx, prefix, suffix in matchers:
            m = re.match(rx, name)
            if m:
                return tuple(float(v) for v in (*prefix, *m.groups(), *(suffix or ())))
        return (float("inf"),)

    keys = {n: ordinal(n) for n in names}
    ids, lid = {}, -1
    for k in sorted(set(keys.values())):
        if lid < 0 or k[-1] != MATCH_PREV_GROUP:
            lid += 1
        ids[k] = lid
    return {n: ids[keys[n]] for n in names}


def timm_scales(model: nn.Module, matchers, decay: float) -> dict[str, float]:
    """timm's ``param_groups_layer_decay`` scale per parameter name."""
    ids = timm_layer_ids([n for n, _ in model.named_parameters()], matchers)
    layer_max = max(ids.values())
    return {n: decay ** (layer_max - i) for n, i in ids.items()}


def owned_by(model: nn.Module, classes) -> set[str]:
    out = set()
    for name, mod in model.named_modules():
        if isinstance(mod, classes):
            out |= {f"{name}.{p}" for p, _ in mod.named_parameters(recurse=False)}
    return out


def under(names, patterns) -> set[str]:
    rx = [re.compile(p) for p in patterns]
    return {n for n in names if any(r.fullmatch(q) for r in rx for q in _prefixes(n))}


def _prefixes(path):
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


@pytest.fixture(params=list(MODELS))
def case(request):
    torch.manual_seed(0)
    spec = MODELS[request.param]
    return request.param, spec, spec["make"]()


def test_freeze_backbone_keep_norms(case):
    name, spec, model = case
    cur = fc.Curriculum.from_module(model).freeze(spec["backbone"], keep=fc.NORM_LAYERS)
    names = [n for n, _ in model.named_parameters()]
    backbone = under(names, spec["backbone"])
    norms = owned_by(model, fc.NORM_LAYERS)
    assert norms & backbone  # every model has norm layers in its backbone
    expect = (set(names) - backbone) | (norms & backbone)
    assert {p for p, m in cur.masks.items() if m} == expect

    # functional training: frozen leaves bit-identical, kept norms and the head move
    g = torch.Generator().manual_seed(1)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    opt = fc.adam(1e-2)
    state = opt.init(params, cur.masks)

    def loss_fn(tr, fr, bufs, x, y):
        out = functional_call(model, (fc.combine(tr, fr), bufs), (x,))
        return nn.functional.cross_entropy(out, y)

    new = params
    for _ in range(2):
        x, y = spec["batch"](g)
        tr, fr = fc.partition(new, cur.masks)
        grads = grad(loss_fn)(tr, fr, fc.shield_buffers(buffers, cur), x, y)
        new, state = opt.update(new, grads, state, cur.masks, cur.coeffs)
    for k in names:
        if k in expect:
            assert not torch.equal(new[k], params[k]), k
        else:
            assert torch.equal(new[k], params[k]), k
    # kept BatchNorms are trainable, so their statistics move; no BatchNorm is frozen here
    for k in buffers:
        if k.endswith("num_batches_tracked"):
            assert buffers[k].item() == 2, k

    # the same curriculum drives torch.optim
    fc.apply_requires_grad(model, cur)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expect
    groups = cur.param_groups(model, 1e-3)
    assert sum(len(g["params"]) for g in groups) == len(expect)


@pytest.mark.parametrize("decay", [0.5, 0.75])
def test_llrd_by_block_matches_timm_grouping(case, decay):
    name, spec, model = case
    blocks = spec["blocks"] + [spec["head"]]
    cur = fc.layer_decay(fc.Curriculum.from_module(model), decay, blocks)
    expect = timm_scales(model, spec["timm"], decay)
    for k, c in cur.coeffs.items():
        assert c == pytest.approx(expect[k], rel=1e-12), k

    # param_groups: one group per distinct scale, the same membership as timm's groups
    # (timm also splits each layer by weight decay; merged here)
    groups = cur.param_groups(model, 1.0)
    ids = {id(p): n for n, p in model.named_parameters()}
    ours = {round(g["lr"], 12): {ids[id(p)] for p in g["params"]} for g in groups}
    theirs: dict[float, set[str]] = {}
    for k, s in expect.items():
        theirs.setdefault(round(s, 12), set()).add(k)
    assert ours == theirs
    assert len(groups) == len(blocks)


def test_bert_llrd_recipe_by_hand():
    """The BERT recipe: classifier and pooler at the base lr, encoder.layer.N at
    decay ** (L - N), embeddings deepest at decay ** (L + 1)."""
    L, d = 3, 0.8
    model = BertStyle(num_layers=L)
    cur = fc.Curriculum.from_module(model).set_lr_coefficient(d ** (L + 1), "embeddings")
    for n in range(L):
        cur = cur.set_lr_coefficient(d ** (L - n), rf"encoder\.layer\.{n}")
    expect = timm_scales(model, MODELS["bert"]["timm"], d)
    assert cur.coeffs == pytest.approx(expect)
    assert cur.coeffs["classifier.weight"] == cur.coeffs["pooler.dense.bias"] == 1.0
    assert cur == fc.layer_decay(
        fc.Curriculum.from_module(model),
        d,
        [["embeddings"]]
        + [[rf"encoder\.layer\.{n}"] for n in range(L)]
        + [["pooler", "classifier"]],
    )


def test_gradual_unfreezing_from_the_top(case):
    name, spec, model = case
    base = fc.Curriculum.from_module(model)
    groups = [g for g in spec["blocks"]]
    sched = fc.Schedule(base, fc.GradualUnfreeze(groups, every_n_epochs=1))
    names = [n for n, _ in model.named_parameters()]
    head = under(names, spec["head"])
    opt = fc.sgd(0.1, momentum=0.9)
    params = {k: v.detach() for k, v in model.named_parameters()}
    prev = sched.at(epoch=0)
    state = opt.init(params, prev.masks)
    for epoch in range(len(groups) + 1):
        cur = sched.at(epoch=epoch)
        released = groups[len(groups) - epoch :] if epoch else []
        expect = head | under(names, [p for g in released for p in g])
        assert {p for p, m in cur.masks.items() if m} == expect, epoch
        state = opt.transition(state, params, prev.masks, cur.masks)
        for k in names:
            # just-unfrozen leaves hold fresh (materialised) state, frozen ones none
            assert (state["momentum_buffer"][k].numel() > 0) == (k in expect), k
        prev = cur
    assert all(sched.at(epoch=len(groups)).masks.values())


def test_transformer_runs_under_functional_call_with_llrd_and_keep():
    model = TinyTransformer()
    cur = fc.Curriculum.from_module(model).freeze("encoder", keep=fc.NORM_LAYERS)
    cur = fc.layer_decay(cur, 0.5, MODELS["transformer"]["blocks"] + [["head"]])
    # norm layers inside the frozen encoder are trainable and carry their block's coefficient
    assert cur.masks["encoder.layers.0.norm1.weight"] is True
    assert cur.masks["encoder.layers.0.linear1.weight"] is False
    assert cur.coeffs["encoder.layers.0.norm1.weight"] == 0.25
    assert cur.coeffs["encoder.norm.weight"] == 0.5
    assert cur.coeffs["pos"] == 0.125
