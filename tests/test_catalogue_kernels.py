"""The catalogue's declared in-place kernels (torch.optim's foreach / fused implementations,
Lion's foreach ops) equal the rules' reference math, called directly as the engine calls
them: one group, counts already incremented, a shared lr."""

from __future__ import annotations

import copy
import importlib

import pytest
import torch

import funcurriculum as fc

KERNELS = {
    "rmsprop": "_inplace",
    "adagrad": "_fused_inplace",
    "adamax": "_inplace",
    "nadam": "_inplace",
    "radam": "_inplace",
    "adadelta": "_inplace",
    "adafactor": "_inplace",
    "lion": "_inplace",
    "lion-foreach": "_foreach",  # Lion's CUDA path, run on CPU here
    "muon": "_inplace",
}
CASES = [
    ("rmsprop", {}),
    ("rmsprop", {"momentum": 0.9, "centered": True, "weight_decay": 0.1}),
    ("rmsprop", {"centered": True}),
    ("adagrad", {"lr_decay": 0.1, "weight_decay": 0.1, "initial_accumulator_value": 0.2}),
    ("adamax", {"weight_decay": 0.1}),
    ("nadam", {"weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("nadam", {}),
    ("radam", {"betas": (0.7, 0.9), "weight_decay": 0.1}),
    ("adadelta", {"weight_decay": 0.1}),
    ("adafactor", {}),
    ("adafactor", {"weight_decay": 0.1, "eps": (1e-20, 1e-3)}),
    ("lion", {"weight_decay": 0.1}),
    ("lion", {"betas": (0.5, 0.8)}),
    ("lion-foreach", {"weight_decay": 0.1}),
    ("muon", {}),
    ("muon", {"nesterov": False, "weight_decay": 0.0, "adjust_lr_fn": "match_rms_adamw"}),
]
SHAPES = [(4, 3), (5,), (2, 3, 4), ()]
SHAPES_2D = [(4, 3), (3, 5), (6, 6)]  # Muon's: matrices only (tall, wide, square)


@pytest.mark.parametrize("tensor_lr", [False, True], ids=["float-lr", "tensor-lr"])
@pytest.mark.parametrize("maximize", [False, True], ids=["min", "max"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", CASES, ids=[f"{n}-{kw}" for n, kw in CASES])
def test_kernel_equals_reference_step(case, dtype, maximize, tensor_lr):
    """(A tensor lr arrives as the engine passes one on CPU: 0-d float64; a scheduled or
    per-leaf coefficient under vmap / compile.)"""
    which, kw = case
    name = which.split("-")[0]
    module = importlib.import_module(f"funcurriculum.catalogue._{name}")
    kernel = getattr(module, KERNELS[which])
    rule = getattr(fc, name)(0.01, **kw).rule
    shapes = SHAPES_2D if name == "muon" else SHAPES
    gen = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    ref_ps = [p.clone() for p in ps]
    bufs = [list(col) for col in zip(*(rule.init(p) for p in ps))]
    ref_bufs = [[b.clone() for b in col] for col in bufs]
    counts = [torch.zeros((), dtype=torch.float32) for _ in ps]
    lr = torch.tensor(0.01, dtype=torch.float64) if tensor_lr else 0.01
    for step in range(1, 9):
        gs = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
        for c in counts:
            c.add_(1)
        kernel(rule, ps, gs, bufs, counts, lr, first=step == 1, maximize=maximize)
        assert all(float(c) == step for c in counts)  # the kernel leaves the counts as given
        for i in range(len(ps)):
            g = -gs[i] if maximize else gs[i]
            count = torch.tensor(float(step))
            new_p, new_b = rule.step(ref_ps[i], g, tuple(col[i] for col in ref_bufs), count, lr)
            ref_ps[i] = new_p
            for col, b in zip(ref_bufs, new_b):
                col[i] = b
        tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
        for i in range(len(ps)):
            torch.testing.assert_close(ps[i], ref_ps[i], **tol, msg=f"param {i} at {step}")
            for col, ref_col in zip(bufs, ref_bufs):
                torch.testing.assert_close(col[i], ref_col[i], **tol, msg=f"buf {i} at {step}")


@pytest.mark.parametrize("name", ["nadam", "adafactor"])
@pytest.mark.parametrize("donate", [False, True])
def test_buffers_not_shaped_like_the_leaf_still_take_the_kernel(name, donate):
    """NAdam's 0-d ``mu_product`` and Adafactor's factored moments once sent every leaf to
    the reference engine (their kernel never ran): the kernel runs, with its results."""
    import dataclasses

    import funcurriculum as fc

    opt = getattr(fc, name)(1e-2)
    calls = []
    inner = opt.kernels.inplace

    def counting(*a, **k):
        calls.append(1)
        return inner(*a, **k)

    fast = copy.copy(opt)
    fast.kernels = dataclasses.replace(opt.kernels, inplace=counting)
    g = torch.Generator().manual_seed(0)
    p = {"w": torch.randn(3000, 40, generator=g), "v": torch.randn(5, 7, generator=g)}
    grads = {k: torch.randn(v.shape, generator=g) for k, v in p.items()}
    ref_p, ref_s = opt.with_engine("reference").update(p, grads, opt.init(p))
    q = {k: v.clone() for k, v in p.items()}
    new_p, new_s = fast.update(q, grads, fast.init(q), donate=donate)
    assert calls
    for k in p:
        torch.testing.assert_close(new_p[k], ref_p[k], rtol=1e-6, atol=1e-7)
