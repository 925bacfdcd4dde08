"""Every catalogue optimizer on every path of the engine: donate equals pure, a vmapped
ensemble equals a loop, a compiled update equals the eager one, weight-decay masks,
checkpoints, differentiable updates."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import funcurriculum as fc

FACTORIES = {
    "rmsprop": lambda **kw: fc.rmsprop(0.01, momentum=0.5, centered=True, **kw),
    "adagrad": lambda **kw: fc.adagrad(0.1, lr_decay=0.1, **kw),
    "adamax": lambda **kw: fc.adamax(0.01, **kw),
    "nadam": lambda **kw: fc.nadam(0.01, decoupled_weight_decay=True, **kw),
    "radam": lambda **kw: fc.radam(fc.cosine(0.01, 5), **kw),
    "adadelta": lambda **kw: fc.adadelta(1.0, **kw),
    "adafactor": lambda **kw: fc.adafactor(0.01, **kw),
    "muon": lambda **kw: fc.muon(0.02, **kw),
    "lion": lambda **kw: fc.lion(0.001, **kw),
}
NAMES = sorted(FACTORIES)
names = pytest.mark.parametrize("name", NAMES)


def make(name, seed=0, dtype=torch.float32, lead=()):
    g = torch.Generator().manual_seed(seed)
    shapes = (
        {"a.w": (4, 3), "b.w": (3, 5), "c.w": (2, 3)}
        if name == "muon"
        else {"a.w": (4, 3), "a.b": (3,), "c.w": (2, 3, 2), "s": ()}
    )
    return {k: torch.randn((*lead, *s), generator=g, dtype=dtype) for k, s in shapes.items()}


def masks_coeffs(params):
    keys = list(params)
    return {k: k != keys[1] for k in keys}, {
        k: [1.0, 0.5, 2.0, 0.25][i] for i, k in enumerate(keys)
    }


def tol(name):
    # Muon's Newton-Schulz runs in bfloat16: batched and compiled matmuls round differently
    return dict(rtol=2e-2, atol=2e-2) if name == "muon" else dict(rtol=1e-5, atol=1e-6)


@names
def test_donate_chain_equals_pure_chain(name):
    opt = FACTORIES[name](weight_decay=0.01)
    params = make(name)
    masks, coeffs = masks_coeffs(params)
    pure_p, pure_s = params, opt.init(params, masks)
    don_p = {k: v.clone() for k, v in params.items()}
    don_s = opt.init(don_p, masks)
    for t in range(5):
        grads = make(name, seed=10 + t)
        pure_p, pure_s = opt.update(pure_p, grads, pure_s, masks, coeffs)
        don_p, don_s = opt.update(don_p, grads, don_s, masks, coeffs, donate=True)
    for k in params:
        assert torch.equal(pure_p[k], don_p[k]), k
    for f in opt.rule.fields:
        for k in params:
            assert torch.equal(pure_s[f][k], don_s[f][k]), (f, k)


@names
@pytest.mark.parametrize("donate", [False, True], ids=["pure", "donate"])
def test_kernel_paths_with_small_waves_equal_the_reference(name, donate):
    """Leaves bigger than a CPU wave: the pure fused path slices them into flat waves only
    for elementwise rules (Muon's Newton-Schulz, NAdam's and Adafactor's reductions see
    the whole leaf); every path equals the reference engine."""
    opt = FACTORIES[name](weight_decay=0.01).with_engine(wave_elems=2)
    ref = opt.with_engine("reference")

    def tree(seed):  # (plus a trainable vector: Adafactor's moment for it is leaf-shaped)
        t = make(name, seed)
        if name != "muon":
            t["v"] = torch.randn(7, generator=torch.Generator().manual_seed(seed))
        return t

    params = tree(0)
    masks, coeffs = masks_coeffs(make(name))
    masks, coeffs = masks | {"v": True}, coeffs | {"v": 0.5}
    masks, coeffs = ({k: d[k] for k in params} for d in (masks, coeffs))
    p, s = {k: v.clone() for k, v in params.items()}, opt.init(params, masks)
    rp, rs = params, ref.init(params, masks)
    for t in range(4):
        grads = tree(20 + t)
        p, s = opt.update(p, grads, s, masks, coeffs, donate=donate)
        rp, rs = ref.update(rp, grads, rs, masks, coeffs)
    for k in params:
        torch.testing.assert_close(p[k], rp[k], **tol(name), msg=k)
        for f in opt.rule.fields:
            torch.testing.assert_close(s[f][k], rs[f][k], **tol(name), msg=(f, k))


@names
def test_vmapped_ensemble_equals_a_loop(name):
    members = 3
    opt = FACTORIES[name]()
    params = make(name, lead=(members,))
    grads = [make(name, seed=20 + t, lead=(members,)) for t in range(3)]
    state = torch.func.vmap(opt.init)(params)
    bp, bs = params, state
    for g in grads:
        bp, bs = torch.func.vmap(opt.update)(bp, g, bs)
    for m in range(members):
        p = {k: v[m] for k, v in params.items()}
        s = opt.init(p)
        for g in grads:
            p, s = opt.update(p, {k: v[m] for k, v in g.items()}, s)
        for k in p:
            torch.testing.assert_close(bp[k][m], p[k], **tol(name), msg=f"member {m} {k}")


@names
def test_compiled_update_equals_eager(name):
    opt = FACTORIES[name]()
    params = make(name)
    masks, coeffs = masks_coeffs(params)
    state = opt.init(params, masks)
    step = torch.compile(
        lambda p, g, s: opt.update(p, g, s, masks, coeffs), backend="eager", fullgraph=False
    )
    cp, cs, ep, es = params, state, params, state
    for t in range(3):
        g = make(name, seed=30 + t)
        cp, cs = step(cp, g, cs)
        ep, es = opt.update(ep, g, es, masks, coeffs)
    for k in params:
        torch.testing.assert_close(cp[k], ep[k], **tol(name), msg=k)


@names
def test_weight_decay_mask_equals_no_decay_on_masked_leaves(name):
    params = make(name)
    keys = list(params)
    decay = {k: k.endswith(".w") and k != keys[-1] for k in keys}
    opt = FACTORIES[name](weight_decay=0.1, weight_decay_mask=decay)
    with_wd, without = FACTORIES[name](weight_decay=0.1), FACTORIES[name](weight_decay=0.0)
    p, s = params, opt.init(params)
    pw, sw = params, with_wd.init(params)
    p0, s0 = params, without.init(params)
    for t in range(3):
        g = make(name, seed=40 + t)
        p, s = opt.update(p, g, s)
        pw, sw = with_wd.update(pw, g, sw)
        p0, s0 = without.update(p0, g, s0)
    for k in keys:
        torch.testing.assert_close(p[k], pw[k] if decay[k] else p0[k], rtol=0, atol=0, msg=k)
    assert not torch.equal(pw[keys[0]], p0[keys[0]])  # the decay does something


@names
def test_checkpoint_resume_is_bit_identical(name, tmp_path):
    opt = FACTORIES[name](weight_decay=0.01)
    params = make(name)
    masks, coeffs = masks_coeffs(params)
    state = opt.init(params, masks)
    grads = [make(name, seed=50 + t) for t in range(6)]
    for g in grads[:3]:
        params, state = opt.update(params, g, state, masks, coeffs)
    fc.save(tmp_path / "ckpt.pt", {"params": params, "state": state})
    loaded = fc.load(tmp_path / "ckpt.pt")
    lp, ls = loaded["params"], loaded["state"]
    assert sorted(ls) == sorted(state)
    for key, sub in state.items():
        for k, v in sub.items() if isinstance(sub, dict) else [(None, sub)]:
            got = ls[key][k] if k is not None else ls[key]
            assert got.dtype == v.dtype and got.shape == v.shape and torch.equal(got, v), (key, k)
    # a phase change after the resume: the frozen leaf joins with fresh state
    all_on = {k: True for k in params}
    state = opt.transition(state, params, masks, all_on)
    ls = opt.transition(ls, lp, masks, all_on)
    masks = all_on
    for g in grads[3:]:
        params, state = opt.update(params, g, state, masks, coeffs)
        lp, ls = opt.update(lp, g, ls, masks, coeffs)
    for k in params:
        assert torch.equal(params[k], lp[k]), k


@names
def test_differentiable_update_lets_autograd_through(name):
    """With ``differentiable=True`` the new params are a differentiable function of the
    old ones (a hypergradient / meta-learning step)."""
    opt = FACTORIES[name](differentiable=True)
    params = {k: v.clone().requires_grad_(True) for k, v in make(name, dtype=torch.float64).items()}
    state = opt.init({k: v.detach() for k, v in params.items()})
    grads = {k: v * 2 for k, v in params.items()}  # the gradient of sum(p ** 2)
    new, _ = opt.update(params, grads, state)
    loss = sum((v**2).sum() for v in new.values())
    loss.backward()
    for k, v in params.items():
        assert v.grad is not None and torch.isfinite(v.grad).all(), k


def test_rules_are_frozen_dataclasses_with_weight_decay():
    for name in NAMES:
        rule = FACTORIES[name]().rule
        assert dataclasses.is_dataclass(rule) and "weight_decay" in {
            f.name for f in dataclasses.fields(rule)
        }
        with pytest.raises(dataclasses.FrozenInstanceError):
            rule.weight_decay = 1.0


@names
def test_swept_members_with_their_own_masks_equal_runs_alone(name):
    """Dynamic masks: a vmapped ensemble where each member freezes, scales and unfreezes
    its own leaves (batched bool masks, batched ``transition``) equals each member alone."""
    members = 3
    params = make(name, lead=(members,))
    keys = list(params)
    opt = FACTORIES[name](weight_decay=0.01)
    first = [{k: (i + m) % 3 != 0 for i, k in enumerate(keys)} for m in range(members)]
    second = [{k: True for k in keys} for _ in range(members)]
    coeffs = [{k: [1.0, 0.5, 2.0][(i + m) % 3] for i, k in enumerate(keys)} for m in range(members)]

    def stack(trees, dtype):
        return {k: torch.tensor([t[k] for t in trees], dtype=dtype) for k in keys}

    m1, m2, cs = stack(first, torch.bool), stack(second, torch.bool), stack(coeffs, torch.float32)
    grads = [make(name, seed=60 + t, lead=(members,)) for t in range(6)]
    bp, bs = params, torch.func.vmap(opt.init)(params)
    for t, g in enumerate(grads):
        if t == 3:
            bs = torch.func.vmap(opt.transition)(bs, bp, m1, m2)
        masks = m1 if t < 3 else m2
        bp, bs = torch.func.vmap(opt.update)(bp, g, bs, masks, cs)
    for m in range(members):
        p = {k: v[m] for k, v in params.items()}
        s = opt.init(p)
        for t, g in enumerate(grads):
            if t == 3:
                s = opt.transition(s, p, first[m], second[m])
            masks = first[m] if t < 3 else second[m]
            p, s = opt.update(p, {k: v[m] for k, v in g.items()}, s, masks, coeffs[m])
        for k in keys:
            torch.testing.assert_close(bp[k][m], p[k], **tol(name), msg=f"member {m} {k}")
            assert float(bs["count"][k][m]) == float(s["count"][k]), (m, k)
