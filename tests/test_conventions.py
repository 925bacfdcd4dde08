"""Real-model conventions without the real libraries: norm layers by class name, tied
weights in layer decay, curricula from ``requires_grad``, the no-decay split, ensembles of
modules with buffers, and timm's / BERT recipes' LLRD pinned by golden tables."""

from __future__ import annotations

import ast
import copy
import re
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call, grad, vmap

import funcurriculum as fc
from funcurriculum.models import BertStyle, TinyTransformer


# -- norm layers by class name ---------------------------------------------------------
class FooRMSNorm(nn.Module):  # like transformers' LlamaRMSNorm: subclasses nn.Module only
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * self.weight


class AdaLayerNorm(nn.Module):  # a composite whose name ends in Norm: not a norm layer
    def __init__(self, d):
        super().__init__()
        self.linear = nn.Linear(d, 2 * d)
        self.norm = nn.LayerNorm(d, elementwise_affine=False)


class OddNorm(nn.Module):  # *Norm but an unusual own parameter: not recognised
    def __init__(self, d):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(d))


def net():
    return nn.Sequential(nn.Linear(4, 4), FooRMSNorm(4), AdaLayerNorm(4), OddNorm(4))


def test_norm_layers_by_class_name():
    cur = fc.Curriculum.from_module(net())
    kept = cur.freeze(".*", keep=fc.NORM_LAYERS)
    assert kept.masks == {
        "0.weight": False,
        "0.bias": False,
        "1.weight": True,  # FooRMSNorm: by name
        "2.linear.weight": False,  # AdaLayerNorm holds a Linear: not a norm layer
        "2.linear.bias": False,
        "3.scale": False,
    }
    assert cur.select_by_class(fc.NORM_LAYERS) == ["1"]
    # the by-name rule comes with NORM_LAYERS as a whole, not with a single torch class
    with pytest.raises(ValueError, match="no layer of class LayerNorm"):
        cur.select_by_class(nn.LayerNorm)
    # a Freezer's keep follows the same rule
    sched = fc.Schedule(cur, fc.Freezer(patterns=".*", keep=fc.NORM_LAYERS))
    assert sched.at(step=0).masks == kept.masks


def test_keep_that_keeps_nothing_warns():
    cur = fc.Curriculum.from_module(net())
    with pytest.warns(UserWarning, match=r"keeps nothing.*Linear"):
        out = cur.freeze("0", keep=fc.NORM_LAYERS)
    assert out == cur.freeze("0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cur.freeze(".*", keep=fc.NORM_LAYERS)  # keeps FooRMSNorm: no warning
        cur.freeze("0", keep=())  # an explicitly empty keep: no warning


# -- select_by_class explains stand-in classes ----------------------------------------
class Conv1D(nn.Module):  # transformers' GPT-2 layer: a Linear with a transposed weight
    def __init__(self, nf, nx):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))


def test_select_by_class_explains_conv1d():
    m = nn.Sequential(Conv1D(4, 4), nn.Sequential(Conv1D(4, 4)), nn.Linear(4, 2))
    cur = fc.Curriculum.from_module(m)
    with pytest.warns(UserWarning, match=r"Conv1D.*classes=\('Linear', 'Conv1D'\)"):
        assert cur.select_by_class(nn.Linear) == ["2"]
    with pytest.raises(ValueError, match="Conv1D"):
        cur.select_by_class(nn.Linear, under="1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cur.select_by_class(("Linear", "Conv1D")) == ["0", "1.0", "2"]


# -- tied weights in layer decay --------------------------------------------------------
def test_layer_decay_tied_weight_takes_its_canonical_group_in_any_order():
    cur = fc.Curriculum.from_module(BertStyle(head="lm"))
    tied = "embeddings.word_embeddings.weight"
    assert cur.tied == {tied: ("lm_head.decoder.weight",)}
    groups = {"embeddings": 0, r"encoder\.layer\.0": 1, r"encoder\.layer\.1": 2, "lm_head": 3}
    fwd = fc.layer_decay(cur, 0.5, groups)
    rev = fc.layer_decay(cur, 0.5, dict(reversed(list(groups.items()))))
    assert fwd == rev
    assert fwd.coeffs[tied] == 0.125 and fwd.coeffs["lm_head.dense.weight"] == 1.0
    # as a list, and with only the alias's group: the weight keeps its coefficient
    as_list = fc.layer_decay(cur, 0.5, ["embeddings", "encoder", "lm_head"])
    assert as_list.coeffs[tied] == 0.25
    only_head = fc.layer_decay(cur.set_lr_coefficient(0.3, tied), 0.5, ["encoder", "lm_head"])
    assert only_head.coeffs[tied] == 0.3


# -- from_requires_grad -----------------------------------------------------------------
def test_from_requires_grad():
    m = BertStyle(head="lm")
    m.embeddings.requires_grad_(False)
    m.encoder.layer[0].attention.requires_grad_(False)
    cur = fc.Curriculum.from_requires_grad(m)
    assert cur.masks == {n: p.requires_grad for n, p in m.named_parameters()}
    assert cur.masks["embeddings.word_embeddings.weight"] is False  # tied: one flag
    assert "embeddings" in cur.frozen
    assert cur.module_classes  # knows classes, like from_module
    assert fc.Curriculum.from_requires_grad(nn.Linear(2, 2)) == fc.Curriculum.from_module(
        nn.Linear(2, 2)
    )


def test_modules_to_save_originals_need_classes_to_be_guarded():
    # a plain-dict curriculum has no classes: no peft guard, ordinary semantics
    p = {"head.original_module.weight": torch.zeros(2), "head.modules_to_save.w": torch.zeros(2)}
    cur = fc.Curriculum(p).freeze("head")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cur.unfreeze("head").masks["head.original_module.weight"]


# -- the no-decay split of param_groups, against torch.optim -----------------------------
def no_decay(params):
    return {k: not (k.endswith("bias") or "norm" in k) for k in params}


def test_param_groups_weight_decay_mask_matches_adamw_weight_decay_mask():
    torch.manual_seed(0)
    model = TinyTransformer()
    cur = fc.layer_decay(fc.Curriculum.from_module(model), 0.7, None).freeze("embed")
    groups = cur.param_groups(model, 1e-2, weight_decay=0.1, weight_decay_mask=no_decay)
    names = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        ns = [names[id(p)] for p in g["params"]]
        assert {no_decay({n: 0})[n] for n in ns} == {g["weight_decay"] > 0}
        assert {cur.coeffs[n] * 1e-2 for n in ns} == {g["lr"]}
    ref = copy.deepcopy(model)
    fc.apply_requires_grad(ref, cur)
    # eps 1e-4: the key part of in_proj_bias has a zero gradient up to float noise, which
    # Adam with eps=1e-8 would blow up differently in the two runs
    groups = cur.param_groups(ref, 1e-2, weight_decay_mask=no_decay)
    topt = torch.optim.AdamW(groups, lr=1e-2, eps=1e-4)
    opt = fc.adamw(1e-2, eps=1e-4, weight_decay_mask=no_decay)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    state = opt.init(params, cur.masks)
    ids = torch.randint(0, 50, (4, 7))
    for _ in range(3):
        topt.zero_grad()
        ref(ids).square().mean().backward()
        topt.step()
        tr, fr = fc.partition(params, cur.masks)
        g = grad(
            lambda t, fr=fr: functional_call(model, fc.combine(t, fr), (ids,)).square().mean()
        )(tr)
        params, state = opt.update(params, g, state, cur.masks, cur.coeffs)
    for k, p in ref.named_parameters():
        torch.testing.assert_close(params[k], p.detach(), rtol=1e-5, atol=1e-6, msg=k)
    with pytest.raises(TypeError, match="weight_decay_mask at"):
        cur.param_groups(model, 1e-2, weight_decay_mask={k: 1 for k in cur.paths})


# -- ParamIndex and the one table renderer -----------------------------------------------
def test_param_index_public_interface():
    m = BertStyle(head="lm")
    cur = fc.Curriculum.from_module(m)
    ix = cur.index
    assert isinstance(ix, fc.ParamIndex) and ix == ix
    assert ix.paths == tuple(cur.paths) and ix.layers == cur.layer_names
    assert ix.class_of("embeddings.LayerNorm") == "torch.nn.modules.normalization.LayerNorm"
    assert ix.tied == cur.tied
    back = fc.ParamIndex.from_dict(ix.to_dict())
    assert back.paths == ix.paths and back.classes == ix.classes and back.aliases == ix.aliases
    assert ix.leaves_of(["lm_head"]) >= {ix.index["embeddings.word_embeddings.weight"]}


def test_one_summary_renderer():
    cur = fc.Curriculum.from_module(BertStyle(head="lm")).freeze("embeddings")
    table = fc.summary(cur, lr=0.1)
    assert table == cur.summary(lr=0.1)
    head = table.splitlines()[0].split()
    assert head == ["name", "frozen", "coeff", "params", "lr", "class"]
    assert "(tied: lm_head.decoder.weight)" in table
    assert fc.summary(cur) == cur.summary()


# -- stack_modules -----------------------------------------------------------------------
def test_stack_modules_batchnorm_ensemble_matches_separate_runs():
    torch.manual_seed(0)
    members = [nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)) for _ in range(3)]
    params, buffers, base = fc.stack_modules(members)
    x = torch.randn(8, 3)
    out = vmap(lambda p, b: functional_call(base, (p, b), (x,)), (0, 0))(params, buffers)
    for e, m in enumerate(members):
        torch.testing.assert_close(out[e], m(x))
        torch.testing.assert_close(buffers["1.running_mean"][e], m[1].running_mean)
    with pytest.raises(ValueError, match="meta device"):
        vmap(lambda p: functional_call(base, p, (x,)))(params)
    assert not params["0.weight"].requires_grad
    assert all(t.is_meta for t in base.parameters())


def test_stack_modules_bad_inputs():
    with pytest.raises(TypeError):
        fc.stack_modules([])
    with pytest.raises(TypeError):
        fc.stack_modules(nn.Linear(2, 2))
    assert fc.stack_modules(nn.ModuleList([nn.Linear(2, 2)] * 2))[0]["weight"].shape == (2, 2, 2)
    with pytest.raises(ValueError, match="member 1 is a Sequential"):
        fc.stack_modules([nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2))])
    with pytest.raises(ValueError, match=r"member 1's parameter weight has shape"):
        fc.stack_modules([nn.Linear(2, 2), nn.Linear(3, 2)])


# -- golden tables: timm's ViT LLRD and the BERT recipe ------------------------------------
class TinyViT(nn.Module):
    """timm's VisionTransformer parameter names (depth 2)."""

    def __init__(self, d=8, depth=2):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, d))
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, d, 2, 2)
        self.blocks = nn.Sequential()
        for _ in range(depth):
            b = nn.Module()
            b.norm1 = nn.LayerNorm(d)
            b.attn = nn.Module()
            b.attn.qkv = nn.Linear(d, 3 * d)
            b.attn.proj = nn.Linear(d, d)
            b.norm2 = nn.LayerNorm(d)
            b.mlp = nn.Module()
            b.mlp.fc1 = nn.Linear(d, 2 * d)
            b.mlp.fc2 = nn.Linear(2 * d, d)
            self.blocks.append(b)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 3)


def vit_layer_decay(cur, decay, depth):
    """The recipe of docs/recipes.md: timm's param_groups_layer_decay grouping for ViT."""
    groups = {("cls_token", "pos_embed", "patch_embed"): 0}
    groups.update({rf"blocks\.{i}": i + 1 for i in range(depth)})
    groups["norm"] = depth  # timm: the final norm joins the last block
    groups["head"] = depth + 1
    return fc.layer_decay(cur, decay, groups)


def vit_decays(params):
    """timm: no weight decay for ndim <= 1 and no_weight_decay() names."""
    return {k: v.ndim > 1 and k not in ("cls_token", "pos_embed") for k, v in params.items()}


# timm param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.75) on TinyViT:
# (lr_scale, weight_decay) per parameter, written out from timm's grouping rule
# (stem id 0, blocks.i id i + 1, norm with the last block, unmatched = head = max id).
S0, S1, S2, S3 = 0.75**3, 0.75**2, 0.75, 1.0
VIT_GOLDEN = {
    "cls_token": (S0, 0.0),
    "pos_embed": (S0, 0.0),
    "patch_embed.proj.weight": (S0, 0.05),
    "patch_embed.proj.bias": (S0, 0.0),
    **{
        f"blocks.{i}.{n}": (s, wd)
        for i, s in ((0, S1), (1, S2))
        for n, wd in (
            ("norm1.weight", 0.0),
            ("norm1.bias", 0.0),
            ("attn.qkv.weight", 0.05),
            ("attn.qkv.bias", 0.0),
            ("attn.proj.weight", 0.05),
            ("attn.proj.bias", 0.0),
            ("norm2.weight", 0.0),
            ("norm2.bias", 0.0),
            ("mlp.fc1.weight", 0.05),
            ("mlp.fc1.bias", 0.0),
            ("mlp.fc2.weight", 0.05),
            ("mlp.fc2.bias", 0.0),
        )
    },
    "norm.weight": (S2, 0.0),
    "norm.bias": (S2, 0.0),
    "head.weight": (S3, 0.05),
    "head.bias": (S3, 0.0),
}


def test_vit_llrd_matches_timm_golden_table():
    model = TinyViT()
    assert [n for n, _ in model.named_parameters()] == list(VIT_GOLDEN)
    cur = vit_layer_decay(fc.Curriculum.from_module(model), 0.75, depth=2)
    for name, (scale, _) in VIT_GOLDEN.items():
        assert cur.coeffs[name] == pytest.approx(scale, rel=1e-12), name
    groups = cur.param_groups(
        model, 1.0, named=True, weight_decay=0.05, weight_decay_mask=vit_decays
    )
    got = {n: (g["lr"], g["weight_decay"]) for g in groups for n, _ in g["params"]}
    assert sorted(got) == sorted(VIT_GOLDEN)
    for name, (scale, wd) in VIT_GOLDEN.items():  # (pytest 9.2's approx refuses nested dicts)
        assert got[name] == (pytest.approx(scale, rel=1e-12), wd), name


# revisit-bert-finetuning's get_optimizer_grouped_parameters for L = 2, lr 1, decay 0.9:
# classifier and pooler at lr, encoder.layer.i at lr * d ** (L - i), embeddings at
# lr * d ** (L + 1); no weight decay for biases and LayerNorm weights.
def test_bert_llrd_matches_recipe_golden_table():
    model = BertStyle()
    cur = fc.layer_decay(
        fc.Curriculum.from_module(model),
        0.9,
        {
            "embeddings": 0,
            r"encoder\.layer\.0": 1,
            r"encoder\.layer\.1": 2,
            ("pooler", "classifier"): 3,
        },
    )
    golden = {"embeddings": 0.9**3, "encoder.layer.0": 0.9**2, "encoder.layer.1": 0.9}
    for n in cur.paths:
        want = next((v for k, v in golden.items() if n.startswith(k + ".")), 1.0)
        assert cur.coeffs[n] == pytest.approx(want), n


@settings(max_examples=30, deadline=None)
@given(st.permutations(range(4)), st.sampled_from([0.3, 0.5, 0.9]))
def test_layer_decay_order_independent_for_tied_weights(order, decay):
    cur = fc.Curriculum.from_module(BertStyle(head="lm"))
    items = [
        ("embeddings", 0),
        (r"encoder\.layer\.0", 1),
        (r"encoder\.layer\.1", 2),
        ("lm_head", 3),
    ]
    ref = fc.layer_decay(cur, decay, dict(items))
    assert fc.layer_decay(cur, decay, dict(items[i] for i in order)) == ref
    assert ref.coeffs["embeddings.word_embeddings.weight"] == pytest.approx(decay**3)


def test_from_requires_grad_round_trips_through_save(tmp_path):
    m = BertStyle(head="lm")
    m.encoder.requires_grad_(False)
    cur = fc.Curriculum.from_requires_grad(m)
    fc.save(tmp_path / "c.pt", {"cur": cur})
    back = fc.load(tmp_path / "c.pt")["cur"]
    assert back == cur and back.tied == cur.tied and back.module_classes == cur.module_classes
    assert back.freeze("encoder", keep=fc.NORM_LAYERS) == cur.freeze("encoder", keep=fc.NORM_LAYERS)


# -- peft's modules_to_save guard, without peft ---------------------------------------------
class ModulesToSaveWrapper(nn.Module):  # peft's class name and layout: the guard keys on them
    def __init__(self, module):
        super().__init__()
        self.original_module = module
        self.modules_to_save = nn.ModuleDict({"default": copy.deepcopy(module)})


def test_modules_to_save_original_stays_frozen_without_peft():
    m = nn.Sequential(nn.Linear(2, 2), ModulesToSaveWrapper(nn.Linear(2, 1)))
    m[0].requires_grad_(False)
    m[1].original_module.requires_grad_(False)
    cur = fc.Curriculum.from_requires_grad(m)
    orig, trained = "1.original_module.weight", "1.modules_to_save.default.weight"
    assert not cur.masks[orig] and cur.masks[trained]
    with pytest.warns(UserWarning, match=r"original_module.*left frozen") as rec:
        broad = cur.unfreeze(".*")
    assert rec[0].filename == __file__  # the warning points at the caller
    assert not broad.masks[orig] and not broad.masks["1.original_module.bias"]
    assert broad.masks["0.weight"] and broad.masks[trained]
    with pytest.warns(UserWarning, match=r"unfreeze\(classes=\.\.\.\)"):
        assert not cur.unfreeze(classes=nn.Linear).masks[orig]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cur.unfreeze("1.original_module").masks[orig]  # named: unfrozen, no warning
        assert cur.unfreeze(r"1\.original_module\.weight").masks[orig]


# -- warnings point at the user's line -------------------------------------------------------
def test_convention_warnings_point_at_the_caller():
    m = nn.Sequential(Conv1D(4, 4), nn.Linear(4, 4), FooRMSNorm(4))
    cur = fc.Curriculum.from_module(m)
    calls = [
        lambda: cur.select_by_class(nn.Linear),
        lambda: cur.freeze(classes=nn.Linear),
        lambda: cur.set_lr_coefficient(0.5, classes=nn.Linear),
        lambda: cur.freeze("0", keep=fc.NORM_LAYERS),
        lambda: fc.Freezer(names="0", keep=fc.NORM_LAYERS).select(cur),
        lambda: fc.Schedule(cur, fc.Freezer(names="0", keep=fc.NORM_LAYERS)),
    ]
    for call in calls:
        with pytest.warns(UserWarning) as rec:
            call()
        assert [w.filename for w in rec] == [__file__], [str(w.message) for w in rec]


def test_freezer_keep_that_keeps_nothing_warns():
    cur = fc.Curriculum.from_module(net())
    with pytest.warns(UserWarning, match="keeps nothing"):
        sched = fc.Schedule(cur, fc.Freezer(names="0", keep=fc.NORM_LAYERS))
    assert sched.at(step=0) == cur.freeze("0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fc.Schedule(cur, fc.Freezer(patterns=".*", keep=fc.NORM_LAYERS))  # keeps FooRMSNorm
        fc.Schedule(cur, fc.Freezer(names="0", keep=()))  # explicitly nothing


# -- the facade's index-level API ------------------------------------------------------------
def test_set_frozen_leaves_and_maximal_names():
    cur = fc.Curriculum.from_module(BertStyle(head="lm"))
    ix = cur.index
    names = ["embeddings", r"encoder\.layer\.0\.attention"]
    leaves = ix.leaves_of(cur.select(names))
    by_index = cur.set_frozen_leaves(leaves)
    assert by_index == cur.freeze(names)
    assert ix.maximal_names(by_index.frozen_leaves) == by_index.frozen
    assert by_index.set_frozen_leaves(leaves, frozen=False) == cur
    assert ix.maximal_names([False] * len(ix.paths)) == frozenset()
    assert ix.maximal_names([True] * len(ix.paths)) == set(cur.select(r"[^.]+"))
    for bad in (len(ix.paths), -1, True, 0.0):
        with pytest.raises(ValueError, match="not a leaf index"):
            cur.set_frozen_leaves([bad])


# -- structure: one concept per module, no private reads, no hidden cycles -----------------
PKG = Path(fc.__file__).parent
PRIVATE = re.compile(
    r"\b(?!self\b|cls\b|obj\b)\w+\._(index|frozen_leaves|entries|make|with|init|key)\b"
)


def test_nothing_outside_curriculum_reads_its_private_state():
    offenders = []
    for path in sorted(PKG.rglob("*.py")):
        if path.name == "curriculum.py":
            continue
        for k, line in enumerate(path.read_text().splitlines(), 1):
            if PRIVATE.search(line):
                offenders.append(f"{path.relative_to(PKG)}:{k}: {line.strip()}")
    assert not offenders, offenders


def _function_level_imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom) and (
                    sub.level or "funcurriculum" in (sub.module or "")
                ):
                    out.append(f"{path.name}:{sub.lineno} from {'.' * sub.level}{sub.module}")
    return out


def test_curriculum_modules_import_at_top_level_only():
    """No function-level import hides a cycle between curriculum.py and the modules around it."""
    files = [
        "curriculum.py",
        "modules.py",
        "param_index.py",
        "inspection.py",
        "_selection.py",
        "_resolve.py",
        "_coeffs.py",
        "_groups.py",
        "_table.py",
        "_curriculum_dict.py",
        "_classes.py",
        "freezer.py",
        "gradual.py",
        "schedule.py",
        "coefficients.py",
    ]
    found = [imp for f in files for imp in _function_level_imports(PKG / f)]
    assert not found, found
    src = (PKG / "curriculum.py").read_text()
    assert "modules" not in {
        a.name for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom) for a in n.names
    }
    # one table renderer: the column names are spelled in _table.py only
    spelled = [p.name for p in PKG.rglob("*.py") if '"coeff"' in p.read_text()]
    assert spelled == ["_table.py"], spelled
