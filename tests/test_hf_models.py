"""Real models: tiny Hugging Face transformers (and peft) against torch.optim as the oracle.

Every model is built from a config with random init (never ``from_pretrained``, no hub
access). Each test trains an identical copy with ordinary ``backward()`` and
``torch.optim`` param groups from ``Curriculum.param_groups``, and ours functionally
(``functional_call`` + ``torch.func.grad`` + ``fc.adamw``), and compares trajectories.
Skips cleanly without the ``hf`` extra (``pip install "funcurriculum[hf]"``).
"""

from __future__ import annotations

import copy
import os
import warnings

import pytest
import torch
from torch.func import functional_call, grad, vmap

import funcurriculum as fc

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

TINY = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, vocab_size=64)
# eps: attention key biases get a mathematically zero gradient (softmax ignores a shift
# per query), i.e. float noise that differs between backward() and torch.func.grad; with
# eps=1e-8 Adam would scale that noise up to lr-sized steps in both runs, differently.
LR, WD, BETAS, EPS = 1e-2, 0.1, (0.9, 0.99), 1e-4


def no_decay(params):
    """The BERT recipe: no weight decay for biases and LayerNorm weights."""
    return {k: not (k.endswith(".bias") or "LayerNorm" in k) for k in params}


def bert(seed: int = 0, num_labels: int = 3):
    cfg = transformers.BertConfig(
        num_hidden_layers=2,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=num_labels,
        attn_implementation="eager",
        **TINY,
    )
    torch.manual_seed(seed)
    return transformers.BertForSequenceClassification(cfg).eval()


def batches(n: int, seed: int = 1, vocab: int = 64, labels: int | None = 3):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (4, 8), generator=g)
        y = torch.randint(0, labels, (4,), generator=g) if labels else ids
        out.append((ids, y))
    return out


class Pair:
    """One model trained by torch.optim (backward) and a copy trained functionally."""

    def __init__(self, model, cur, opt_kwargs, **groups_kw):
        self.ref = model
        self.fun = copy.deepcopy(model)
        self.params = {k: v.detach().clone() for k, v in self.fun.named_parameters()}
        self.cur = cur
        self.groups_kw = groups_kw
        fc.apply_requires_grad(self.ref, cur)
        self.torch_opt = torch.optim.AdamW(
            cur.param_groups(self.ref, LR, **groups_kw),
            lr=LR,
            betas=BETAS,
            eps=EPS,
            weight_decay=WD,
        )
        self.opt = fc.adamw(LR, betas=BETAS, eps=EPS, weight_decay=WD, **opt_kwargs)
        self.state = self.opt.init(self.params, cur.masks)

    def loss(self, model, params, ids, y):
        out = functional_call(model, params, (), {"input_ids": ids, "labels": y})
        return out.loss

    def step(self, ids, y):
        self.torch_opt.zero_grad()
        self.ref(input_ids=ids, labels=y).loss.backward()
        self.torch_opt.step()
        train, frozen = fc.partition(self.params, self.cur.masks)
        g = grad(lambda t: self.loss(self.fun, fc.combine(t, frozen), ids, y))(train)
        self.params, self.state = self.opt.update(
            self.params, g, self.state, self.cur.masks, self.cur.coeffs
        )

    def phase(self, new):
        """torch: add_param_group for the newly trainable leaves; ours: transition."""
        fc.apply_requires_grad(self.ref, new)
        for g in new.param_groups(self.ref, LR, since=self.cur, **self.groups_kw):
            self.torch_opt.add_param_group(g)
        self.state = self.opt.transition(self.state, self.params, self.cur.masks, new.masks)
        self.cur = new

    def check(self):
        for k, p in self.ref.named_parameters():
            torch.testing.assert_close(self.params[k], p.detach(), rtol=2e-5, atol=2e-6, msg=k)


def _bert_llrd(cur):
    return fc.layer_decay(
        cur,
        0.8,
        {
            "bert.embeddings": 0,
            "bert.encoder.layer.0": 1,
            "bert.encoder.layer.1": 2,
            ("bert.pooler", "classifier"): 3,
        },
    )


# -- BERT ------------------------------------------------------------------------------
def test_bert_frozen_lower_layers_keep_norms_llrd_no_decay_and_phase_change():
    model = bert()
    base = fc.Curriculum.from_module(model)
    cur = _bert_llrd(base).freeze(["bert.embeddings", "bert.encoder.layer.0"], keep=fc.NORM_LAYERS)
    m = cur.masks
    assert not m["bert.embeddings.word_embeddings.weight"]
    assert m["bert.embeddings.LayerNorm.weight"] and m["bert.embeddings.LayerNorm.bias"]
    assert m["bert.encoder.layer.0.attention.output.LayerNorm.weight"]
    assert not m["bert.encoder.layer.0.attention.self.query.weight"]
    c = cur.coeffs
    assert c["bert.embeddings.LayerNorm.weight"] == pytest.approx(0.8**3)
    assert c["bert.encoder.layer.1.output.dense.weight"] == pytest.approx(0.8)
    assert c["classifier.weight"] == 1.0 and c["bert.pooler.dense.bias"] == 1.0

    pair = Pair(model, cur, {"weight_decay_mask": no_decay}, weight_decay_mask=no_decay)
    # the no-decay split: each coefficient's leaves in a decay and a no-decay group
    wds = {(g["lr"], g.get("weight_decay")) for g in pair.torch_opt.param_groups}
    assert (LR, 0.0) in wds and (LR, WD) in wds
    data = batches(5)
    for ids, y in data[:3]:
        pair.step(ids, y)
    pair.check()
    pair.phase(pair.cur.unfreeze("bert.encoder.layer.0"))
    assert len(pair.torch_opt.param_groups) > 4
    for ids, y in data[3:]:
        pair.step(ids, y)
    pair.check()
    # frozen embeddings never moved
    torch.testing.assert_close(
        pair.params["bert.embeddings.word_embeddings.weight"],
        dict(model.named_parameters())["bert.embeddings.word_embeddings.weight"],
        rtol=0,
        atol=0,
    )


def test_param_groups_no_decay_split_matches_weight_decay_mask():
    model = bert()
    cur = _bert_llrd(fc.Curriculum.from_module(model))
    groups = cur.param_groups(model, 1.0, weight_decay=0.05, weight_decay_mask=no_decay)
    names = dict((id(p), n) for n, p in model.named_parameters())
    for g in groups:
        ns = [names[id(p)] for p in g["params"]]
        decays = {no_decay({n: None})[n] for n in ns}
        assert len(decays) == 1
        assert g["weight_decay"] == (0.05 if decays.pop() else 0.0)
        assert len({cur.coeffs[n] for n in ns}) == 1
    assert sum(len(g["params"]) for g in groups) == len(cur.paths)


def test_bert_llrd_groups_equal_the_hand_written_recipe():
    """The usual hand-written grouping (revisit-bert-finetuning's
    get_optimizer_grouped_parameters), param by param, against ours by HF's names."""
    model, lr, d, wd, L = bert(), 1e-3, 0.8, 0.01, 2
    want = {}
    for n, _ in model.named_parameters():
        if n.startswith("bert.embeddings."):
            scale = d ** (L + 1)
        elif n.startswith("bert.encoder.layer."):
            scale = d ** (L - int(n.split(".")[3]))
        else:  # pooler, classifier
            scale = 1.0
        no_wd = n.endswith(".bias") or "LayerNorm.weight" in n
        want[n] = (lr * scale, 0.0 if no_wd else wd)
    groups = _bert_llrd(fc.Curriculum.from_module(model)).param_groups(
        model, lr, named=True, weight_decay=wd, weight_decay_mask=no_decay
    )
    got = {n: (g["lr"], g["weight_decay"]) for g in groups for n, _ in g["params"]}
    assert list(got) != [] and set(got) == set(want)
    for n in want:
        assert got[n] == pytest.approx(want[n], rel=1e-12), n


# -- GPT-2 (tied head) -----------------------------------------------------------------
def gpt2(seed: int = 0):
    cfg = transformers.GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=64,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(cfg).eval()


def test_gpt2_tied_head_freezing_either_name_freezes_the_shared_weight():
    model = gpt2()
    cur = fc.Curriculum.from_module(model)
    assert cur.tied == {"transformer.wte.weight": ("lm_head.weight",)}
    assert "lm_head.weight" not in cur.paths
    for name in ("lm_head", "transformer.wte", "lm_head.weight"):
        assert cur.freeze(name).masks["transformer.wte.weight"] is False
    # a coefficient conflict between the two names is named
    with pytest.raises(ValueError, match=r"transformer\.wte\.weight.*lm_head\.weight"):
        cur.set_lr_coefficient(0.5, "transformer.wte").set_lr_coefficient(
            0.1, ["lm_head", "transformer"]
        )
    # layer decay: the canonical name's group, whatever the group order
    groups = [
        ["transformer.wte", "transformer.wpe"],
        r"transformer\.h\.0",
        r"transformer\.h\.1",
        ["transformer.ln_f", "lm_head"],
    ]
    fwd = fc.layer_decay(cur, 0.5, groups)
    rev = fc.layer_decay(
        cur,
        0.5,
        {
            ("transformer.ln_f", "lm_head"): 3,
            r"transformer\.h\.1": 2,
            r"transformer\.h\.0": 1,
            ("transformer.wte", "transformer.wpe"): 0,
        },
    )
    assert fwd == rev
    assert fwd.coeffs["transformer.wte.weight"] == 0.125


def test_gpt2_oracle_with_frozen_tied_head():
    model = gpt2()
    cur = fc.Curriculum.from_module(model).freeze(["lm_head", r"transformer\.h\.0"])
    assert not cur.masks["transformer.wte.weight"]
    pair = Pair(model, cur, {})
    for ids, y in batches(3, labels=None):
        pair.step(ids, y)
    pair.check()
    w0 = dict(gpt2().named_parameters())["transformer.wte.weight"]
    assert torch.equal(pair.params["transformer.wte.weight"], w0)
    assert model.lm_head.weight is model.transformer.wte.weight


def test_gpt2_oracle_llrd_with_trainable_tied_head():
    model = gpt2()
    # the head's group first: the tied weight still takes its canonical name's group
    cur = fc.layer_decay(
        fc.Curriculum.from_module(model),
        0.5,
        {
            ("transformer.ln_f", "lm_head"): 3,
            ("transformer.wte", "transformer.wpe"): 0,
            r"transformer\.h\.0": 1,
            r"transformer\.h\.1": 2,
        },
    )
    assert cur.coeffs["transformer.wte.weight"] == 0.125  # the embeddings' group
    pair = Pair(model, cur, {"weight_decay_mask": no_decay}, weight_decay_mask=no_decay)
    # the tied weight is one parameter in one group (torch.optim would warn on a duplicate)
    n_params = sum(len(g["params"]) for g in pair.torch_opt.param_groups)
    assert n_params == len(list(model.parameters()))
    for ids, y in batches(3, labels=None):
        pair.step(ids, y)
    pair.check()


def test_gpt2_select_by_class_explains_conv1d():
    cur = fc.Curriculum.from_module(gpt2())
    with pytest.warns(UserWarning, match="Conv1D"):
        assert cur.select_by_class(torch.nn.Linear) == ["lm_head"]
    with pytest.raises(ValueError, match="Conv1D"):
        cur.select_by_class(torch.nn.Linear, under="transformer")
    found = cur.select_by_class(("Linear", "Conv1D"), under=r"transformer\.h\.0")
    assert "transformer.h.0.attn.c_attn" in found


# -- Llama + peft LoRA -----------------------------------------------------------------
def llama(seed: int = 0):
    cfg = transformers.LlamaConfig(
        num_hidden_layers=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        attn_implementation="eager",
        **TINY,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).eval()


def test_llama_norm_layers_recognised_by_name():
    cur = fc.Curriculum.from_module(llama())
    assert "LlamaRMSNorm" in cur.module_classes["model.norm"]
    kept = cur.freeze("model", keep=fc.NORM_LAYERS)
    assert kept.masks["model.norm.weight"] and kept.masks["model.layers.0.input_layernorm.weight"]
    assert not kept.masks["model.layers.0.self_attn.q_proj.weight"]
    assert cur.select_by_class(fc.NORM_LAYERS, under="model.layers.1") == [
        "model.layers.1.input_layernorm",
        "model.layers.1.post_attention_layernorm",
    ]
    with pytest.warns(UserWarning, match="keeps nothing"):
        cur.freeze("model.layers.0.mlp", keep=fc.NORM_LAYERS)


def test_t5_layer_norm_recognised_by_name():
    t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    m = torch.nn.Sequential(torch.nn.Linear(4, 4), t5.T5LayerNorm(4))
    cur = fc.Curriculum.from_module(m).freeze(".*", keep=fc.NORM_LAYERS)
    assert cur.masks == {"0.weight": False, "0.bias": False, "1.weight": True}


def lora(model, **kw):
    peft = pytest.importorskip("peft")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], **kw)
        return peft.get_peft_model(model, cfg)


def test_llama_lora_from_requires_grad_then_train_the_head():
    model = lora(llama())
    cur = fc.Curriculum.from_requires_grad(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    assert cur.masks == flags
    assert any(flags.values()) and not all(flags.values())
    # LoRA B starts at zero: give it one step, so A's gradient is not zero either
    pair = Pair(model, cur, {})
    data = batches(4, labels=None)
    for ids, y in data[:2]:
        pair.step(ids, y)
    pair.check()
    head = "base_model.model.lm_head"
    pair.phase(pair.cur.unfreeze(head))
    assert pair.cur.masks[f"{head}.weight"]
    for ids, y in data[2:]:
        pair.step(ids, y)
    pair.check()


def test_peft_modules_to_save_original_stays_frozen():
    model = lora(llama(), modules_to_save=["lm_head"])
    cur = fc.Curriculum.from_requires_grad(model)
    orig = "base_model.model.lm_head.original_module.weight"
    copy_ = "base_model.model.lm_head.modules_to_save.default.weight"
    assert not cur.masks[orig] and cur.masks[copy_]
    with pytest.warns(UserWarning, match="original_module"):
        broad = cur.unfreeze("base_model.model")
    assert not broad.masks[orig] and broad.masks["base_model.model.model.norm.weight"]
    explicit = cur.unfreeze("base_model.model.lm_head.original_module")
    assert explicit.masks[orig]
    # a regex that reaches every name does not name the original: still guarded
    with pytest.warns(UserWarning, match="original_module"):
        everything = cur.unfreeze(".*")
    assert not everything.masks[orig] and all(
        v for k, v in everything.masks.items() if ".original_module." not in k
    )
    with pytest.warns(UserWarning, match="original_module"):
        linears = cur.unfreeze(classes=torch.nn.Linear)
    assert not linears.masks[orig] and linears.masks[copy_]


# -- ensembles of real models ----------------------------------------------------------
def test_bert_ensemble_stack_modules_matches_separate_torch_runs():
    E = 4
    members = [bert(seed=s) for s in range(E)]
    params, buffers, base = fc.stack_modules(members)
    assert set(buffers) == {"bert.embeddings.position_ids", "bert.embeddings.token_type_ids"}
    cur = fc.Curriculum.from_module(members[0]).freeze("bert.embeddings")
    refs = [copy.deepcopy(m) for m in members]
    torch_opts = []
    for m in refs:
        fc.apply_requires_grad(m, cur)
        torch_opts.append(
            torch.optim.AdamW(
                cur.param_groups(m, LR, weight_decay_mask=no_decay),
                lr=LR,
                betas=BETAS,
                eps=EPS,
                weight_decay=WD,
            )
        )
    opt = fc.adamw(LR, betas=BETAS, eps=EPS, weight_decay=WD, weight_decay_mask=no_decay)
    state = vmap(opt.init, in_dims=(0, None))(params, cur.masks)

    def loss(p, b, ids, y):
        return functional_call(base, (p, b), (), {"input_ids": ids, "labels": y}).loss

    def member_grads(train, frozen, b, ids, y):
        return grad(lambda t: loss(fc.combine(t, frozen), b, ids, y))(train)

    grads_of = vmap(member_grads, in_dims=(0, 0, 0, None, None))
    update = vmap(opt.update, in_dims=(0, 0, 0, None, None))
    for ids, y in batches(3):
        for m, o in zip(refs, torch_opts):
            o.zero_grad()
            m(input_ids=ids, labels=y).loss.backward()
            o.step()
        train, frozen = fc.partition(params, cur.masks)
        g = grads_of(train, frozen, buffers, ids, y)
        params, state = update(params, g, state, cur.masks, None)
    for k in cur.paths:
        for e, m in enumerate(refs):
            ref = dict(m.named_parameters())[k].detach()
            torch.testing.assert_close(params[k][e], ref, rtol=2e-5, atol=2e-6, msg=k)
    assert all(torch.isfinite(v).all() for v in params.values())


def test_stack_modules_refuses_the_meta_buffer_trap():
    members = [bert(seed=s) for s in range(2)]
    params, buffers, base = fc.stack_modules(members)
    ids, y = batches(1)[0]
    with pytest.raises(ValueError, match="position_ids"):
        vmap(lambda p: functional_call(base, p, (), {"input_ids": ids}).logits)(params)
    with pytest.raises(ValueError, match="member 1"):
        fc.stack_modules([members[0], bert(num_labels=2)])
