"""funcurriculum under torch.func: vmapped ensembles, grad over partitioned params, functional_call loops."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

import funcurriculum as fc

E = 4
RTOL, ATOL = 1e-12, 1e-14


def mlp(seed, d_in=3, d_hidden=5, d_out=2):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.ReLU(), nn.Linear(d_hidden, d_out)).double()


def stacked_ensemble():
    models = [mlp(seed) for seed in range(E)]
    params, _ = stack_module_state(models)
    return models, {k: v.detach().clone() for k, v in params.items()}


OPTS = {
    "sgd-momentum": lambda: fc.sgd(0.1, momentum=0.9, dampening=0.1, weight_decay=0.01),
    "sgd-nesterov-cosine": lambda: fc.sgd(
        fc.cosine(0.2, 5, final=0.01), momentum=0.8, nesterov=True
    ),
    "adam": lambda: fc.adam(0.05, weight_decay=0.1),
    "adam-cosine": lambda: fc.adam(fc.cosine(0.05, 5, final=0.005)),
    "adamw-cosine": lambda: fc.adamw(fc.cosine(0.05, 5), betas=(0.8, 0.99)),
    "adam-step_lr": lambda: fc.adam(fc.step_lr(0.05, 2, 0.5)),
    "sgd-warmup": lambda: fc.sgd(fc.linear_warmup(0.1, 3, start=0.02), momentum=0.9),
    "adam-join": lambda: fc.adam(
        fc.join([fc.linear_warmup(0.05, 2, start=0.01), fc.cosine(0.05, 3)], [2])
    ),
}


def member(tree, e):
    """Slice member ``e`` out of a stacked state / params dict (nested dicts of tensors)."""
    if isinstance(tree, dict):
        return {k: member(v, e) for k, v in tree.items()}
    return tree[e]


@pytest.mark.parametrize("opt_name", list(OPTS))
@pytest.mark.parametrize("freeze", [False, True], ids=["all-trainable", "frozen-0.bias"])
def test_vmapped_update_equals_per_member_loop(opt_name, freeze):
    opt = OPTS[opt_name]()
    _, stacked = stacked_ensemble()
    cur = fc.Curriculum(member(stacked, 0))
    if freeze:
        cur = cur.freeze("0.bias")
    masks = cur.masks
    # per-member coefficients as a batched input (some members with 0 on a layer)
    member_coeffs = [
        {"0.weight": 1.0, "0.bias": 1.0, "2.weight": 1.0, "2.bias": 1.0},
        {"0.weight": 0.5, "0.bias": 0.5, "2.weight": 2.0, "2.bias": 2.0},
        {"0.weight": 0.0, "0.bias": 0.0, "2.weight": 1.0, "2.bias": 0.25},
        {"0.weight": 3.0, "0.bias": 1.0, "2.weight": 0.0, "2.bias": 0.0},
    ]
    coeffs = {k: torch.tensor([c[k] for c in member_coeffs], dtype=torch.float64) for k in stacked}
    g = torch.Generator().manual_seed(0)
    grads_seq = [
        {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in stacked.items()}
        for _ in range(4)
    ]

    # vmapped
    vp = stacked
    vs = vmap(opt.init)(stacked)
    for grads in grads_seq:
        vp, vs = vmap(opt.update, in_dims=(0, 0, 0, None, 0))(vp, grads, vs, masks, coeffs)

    # python loop of per-member updates
    for e in range(E):
        p = member(stacked, e)
        s = opt.init(p)
        c = {k: coeffs[k][e] for k in coeffs}
        for grads in grads_seq:
            p, s = opt.update(p, member(grads, e), s, masks, c)
        for k in p:
            torch.testing.assert_close(vp[k][e], p[k], rtol=RTOL, atol=ATOL)
            if not masks[k] or member_coeffs[e][k] == 0.0:
                assert torch.equal(vp[k][e], stacked[k][e]), (e, k)
            else:
                assert not torch.equal(vp[k][e], stacked[k][e]), (e, k)
        ve = member(vs, e)
        assert int(ve["step"]) == int(s["step"]) == len(grads_seq)
        for key in s:
            if key == "step":
                continue
            for k in s[key]:
                torch.testing.assert_close(ve[key][k], s[key][k], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("init_with_masks", [False, True], ids=["init-full", "init-masked"])
def test_vmapped_transition_equals_per_member_loop(init_with_masks):
    opt = fc.adam(fc.cosine(0.05, 6))
    _, stacked = stacked_ensemble()
    cur0 = fc.Curriculum(member(stacked, 0)).freeze("0")
    cur1 = cur0.unfreeze("0")
    coeffs = {k: torch.linspace(0.0, 1.5, E, dtype=torch.float64) for k in stacked}
    g = torch.Generator().manual_seed(1)
    grads_seq = [
        {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in stacked.items()}
        for _ in range(4)
    ]
    vupdate = vmap(opt.update, in_dims=(0, 0, 0, None, 0))

    init = (lambda p: opt.init(p, cur0.masks)) if init_with_masks else opt.init
    vp, vs = stacked, vmap(init)(stacked)
    if init_with_masks:  # frozen leaves hold no moment buffers, even batched
        assert (
            vs["exp_avg"]["0.weight"].numel() == 0
            and vs["exp_avg"]["2.weight"].shape == stacked["2.weight"].shape
        )
    for t, grads in enumerate(grads_seq):
        if t == 2:
            vs = vmap(opt.transition, in_dims=(0, 0, None, None))(vs, vp, cur0.masks, cur1.masks)
        masks = cur0.masks if t < 2 else cur1.masks
        vp, vs = vupdate(vp, grads, vs, masks, coeffs)

    for e in range(E):
        p = member(stacked, e)
        s = opt.init(p, cur0.masks) if init_with_masks else opt.init(p)
        c = {k: coeffs[k][e] for k in coeffs}
        for t, grads in enumerate(grads_seq):
            if t == 2:
                s = opt.transition(s, p, cur0.masks, cur1.masks)
            p, s = opt.update(p, member(grads, e), s, cur0.masks if t < 2 else cur1.masks, c)
        for k in p:
            torch.testing.assert_close(vp[k][e], p[k], rtol=RTOL, atol=ATOL)
        assert float(member(vs, e)["count"]["0.weight"]) == 2.0
        assert float(member(vs, e)["count"]["2.weight"]) == 4.0


def _loss_fn(model, like):
    def loss(trainable, frozen, x, y):
        out = functional_call(model, fc.combine(trainable, frozen, like=like), (x,))
        return ((out - y) ** 2).mean()

    return loss


def test_grad_on_partition_matches_full_grad_on_trainable_leaves():
    model = mlp(0)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    masks = (
        fc.Curriculum(params).freeze(["0.bias", "2.weight"]).masks
    )  # interleaved frozen / trainable
    x = torch.randn(7, 3, dtype=torch.float64)
    y = torch.randn(7, 2, dtype=torch.float64)

    trainable, frozen = fc.partition(params, masks)
    assert list(trainable) == ["0.weight", "2.bias"] and list(frozen) == ["0.bias", "2.weight"]
    assert all(trainable[k] is params[k] for k in trainable) and all(
        frozen[k] is params[k] for k in frozen
    )

    g = grad(_loss_fn(model, params))(trainable, frozen, x, y)
    assert list(g) == ["0.weight", "2.bias"]  # no keys for frozen leaves

    def full_loss(p, x, y):
        return ((functional_call(model, p, (x,)) - y) ** 2).mean()

    full = grad(full_loss)(params, x, y)
    for k in g:
        torch.testing.assert_close(g[k], full[k], rtol=RTOL, atol=ATOL)

    combined = fc.combine(trainable, frozen, like=params)
    assert list(combined) == list(params)
    assert all(combined[k] is params[k] for k in params)


@pytest.mark.parametrize(
    "make",
    [
        (lambda: fc.adam(0.02), lambda ps: torch.optim.Adam(ps, lr=0.02, foreach=False)),
        (
            lambda: fc.sgd(0.05, momentum=0.9, nesterov=True),
            lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, foreach=False),
        ),
    ],
    ids=["adam", "sgd-nesterov"],
)
def test_functional_call_loop_with_frozen_backbone_matches_torch_optim(make):
    ours_opt, torch_opt = make
    model = mlp(1, d_in=4, d_hidden=6, d_out=3)
    ref = copy.deepcopy(model)
    ref[0].requires_grad_(False)  # the backbone
    topt = torch_opt([p for p in ref.parameters() if p.requires_grad])

    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    params0 = {k: v.clone() for k, v in params.items()}
    cur = fc.Curriculum(params).freeze("0")
    masks = cur.masks
    assert masks == {"0.weight": False, "0.bias": False, "2.weight": True, "2.bias": True}
    opt = ours_opt()
    state = opt.init(params, masks)
    loss = _loss_fn(model, params)

    g = torch.Generator().manual_seed(2)
    for _ in range(5):
        x = torch.randn(8, 4, generator=g, dtype=torch.float64)
        y = torch.randn(8, 3, generator=g, dtype=torch.float64)
        trainable, frozen = fc.partition(params, masks)
        grads = grad(loss)(trainable, frozen, x, y)
        params, state = opt.update(params, grads, state, masks)

        topt.zero_grad()
        ((ref(x) - y) ** 2).mean().backward()
        topt.step()

    ref_params = dict(ref.named_parameters())
    for k in params:
        torch.testing.assert_close(params[k], ref_params[k].detach(), rtol=1e-10, atol=1e-12)
    for k in ["0.weight", "0.bias"]:
        assert torch.equal(params[k], params0[k])
    for k in ["2.weight", "2.bias"]:
        assert not torch.equal(params[k], params0[k])
    assert list(params) == list(params0)
