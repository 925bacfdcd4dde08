"""docs/catalogue.md against torch: its tables name every torch.optim optimizer and
scheduler, and its Muon recipe (``fc.multi_optimizer`` over ``fc.labels_by_pattern``
labels on a Llama) equals ``torch.optim.Muon`` + ``torch.optim.AdamW`` stepped together."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch

import funcurriculum as fc

PAGE = Path(__file__).resolve().parents[1] / "docs" / "catalogue.md"


def table_names(section: str) -> set[str]:
    """The backticked names of a table's first column, in the given ``## section``."""
    text = PAGE.read_text()
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([\w.]+)` \|", body, re.M))


def test_every_torch_optimizer_has_a_row():
    torch_names = {
        n
        for n in torch.optim.__all__
        if inspect.isclass(getattr(torch.optim, n))
        and issubclass(getattr(torch.optim, n), torch.optim.Optimizer)
        and n != "Optimizer"
    }
    assert {"LBFGS", "SparseAdam", "ASGD", "Rprop", "Muon", "Adafactor"} <= torch_names
    missing = torch_names - table_names("Optimizers")
    assert not missing, f"docs/catalogue.md's optimizer table lacks {sorted(missing)}"


def test_every_torch_scheduler_has_a_row():
    sched = torch.optim.lr_scheduler
    torch_names = {n for n in sched.__all__ if inspect.isclass(getattr(sched, n))}
    missing = torch_names - table_names("Learning-rate schedules")
    assert not missing, f"docs/catalogue.md's scheduler table lacks {sorted(missing)}"


def test_every_catalogue_factory_is_in_the_table_and_the_api():
    text = PAGE.read_text()
    for name in ("rmsprop", "adagrad", "adamax", "nadam", "radam", "adadelta", "adafactor"):
        assert f"[`fc.{name}`][funcurriculum.{name}]" in text, name
        assert f"::: funcurriculum.{name}\n" in text, name
    for name in ("muon", "lion"):
        assert f"::: funcurriculum.{name}\n" in text, name


# -- the Muon recipe against torch.optim.Muon + torch.optim.AdamW ---------------------------

PATTERN = r"model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj"
EMBED = "model.embed_tokens.weight"


def tiny_llama():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=32,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
    )


def test_muon_recipe_equals_torch_muon_plus_adamw():
    """Phase 1: the embeddings frozen; phase 2 (``transition``): they join AdamW (torch:
    ``add_param_group``). Every update is compared, params and moments."""
    llama = tiny_llama().double()
    params = {k: v.detach().clone() for k, v in llama.named_parameters()}
    labels = fc.labels_by_pattern(params, {"muon": PATTERN}, default="adamw")
    muon_keys = [k for k, lab in labels.items() if lab == "muon"]
    adamw_keys = [k for k, lab in labels.items() if lab == "adamw"]
    assert len(muon_keys) == 14 and all(params[k].dim() == 2 for k in muon_keys)
    assert {EMBED, "lm_head.weight", "model.norm.weight"} <= set(adamw_keys)

    opt = fc.multi_optimizer(
        {"muon": fc.muon(0.02, weight_decay=0.05), "adamw": fc.adamw(3e-3)}, labels
    )
    phase1 = {k: k != EMBED for k in params}
    phase2 = {k: True for k in params}
    state = opt.init(params, phase1)

    ref = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    t_muon = torch.optim.Muon([ref[k] for k in muon_keys], lr=0.02, weight_decay=0.05)
    t_adamw = torch.optim.AdamW([ref[k] for k in adamw_keys if k != EMBED], lr=3e-3, foreach=False)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 64, (2, 8), generator=gen) for _ in range(8)]

    def loss_fn(p, ids):
        return torch.func.functional_call(llama, p, (ids,), {"labels": ids}).loss

    masks = phase1
    for t, ids in enumerate(batches):
        if t == 4:
            state = opt.transition(state, params, phase1, phase2)
            t_adamw.add_param_group({"params": [ref[EMBED]]})
            masks = phase2
        grads = torch.func.grad(loss_fn)(params, ids)
        grads = {k: g for k, g in grads.items() if masks[k]}
        params, state = opt.update(params, grads, state, masks)

        for v in ref.values():
            v.grad = None
        loss_fn(ref, ids).backward()
        if not masks[EMBED]:
            ref[EMBED].grad = None
        t_muon.step()
        t_adamw.step()
        for k in params:
            torch.testing.assert_close(params[k], ref[k].detach(), rtol=1e-9, atol=1e-11)
        for k in muon_keys:
            buf = t_muon.state[ref[k]]["momentum_buffer"]
            torch.testing.assert_close(state["muon"]["momentum_buffer"][k], buf)
        if masks[EMBED]:
            assert float(state["adamw"]["count"][EMBED]) == t - 3  # its own count
        else:
            assert torch.equal(params[EMBED], llama.get_parameter(EMBED).detach())
