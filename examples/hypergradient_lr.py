"""Learn per-layer LR coefficients by hypergradient (differentiable updates), on digits.

A 3-layer MLP trains with ``fc.sgd(..., differentiable=True)`` for a short unrolled inner
run; the validation loss after that run is differentiated with respect to each layer's
log-coefficient (``coefficient = exp(log_c)``, one per layer), and the coefficients are
learnt by ``fc.adam`` on those hypergradients. Prints the learnt coefficients and the
validation loss of the inner run with the initial (all 1.0) and the learnt ones.

    python examples/hypergradient_lr.py          # ~15 s on 2 cores
    python examples/hypergradient_lr.py --fast
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from _common import digits, random_split

import funcurriculum as fc

LAYERS = ("0", "2", "4")


def mlp_params(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    m = torch.nn.Sequential(
        torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(),
        torch.nn.Linear(32, 10),
    )  # fmt: skip
    return {k: v.detach().double() for k, v in m.named_parameters()}


def forward(p: dict, x: torch.Tensor) -> torch.Tensor:
    h = torch.relu(x @ p["0.weight"].T + p["0.bias"])
    h = torch.relu(h @ p["2.weight"].T + p["2.bias"])
    return h @ p["4.weight"].T + p["4.bias"]


def inner_run(p0, log_c, train, steps, batch, lr):
    """``steps`` differentiable SGD steps; returns the trained params (graph kept)."""
    opt = fc.sgd(lr, momentum=0.9, differentiable=True)
    x, y = train
    coeffs = {k: log_c[k.split(".")[0]].exp() for k in p0}
    p, s = p0, opt.init(p0)
    g = torch.Generator().manual_seed(0)  # the same batches for every outer step
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        loss = F.cross_entropy(forward(p, x[idx]), y[idx])
        grads = dict(zip(p, torch.autograd.grad(loss, list(p.values()), create_graph=True)))
        p, s = opt.update(p, grads, s, None, coeffs)
    return p


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fast", action="store_true", help="fewer steps (tests)")
    ap.add_argument("--outer", type=int, default=15, help="hypergradient steps")
    ap.add_argument("--inner", type=int, default=15, help="unrolled SGD steps")
    args = ap.parse_args(argv)
    outer, inner = (4, 5) if args.fast else (args.outer, args.inner)
    x, y = digits()
    train, val = random_split(x.double(), y)
    p0 = {k: v.requires_grad_(True) for k, v in mlp_params(0).items()}
    log_c = {k: torch.zeros((), dtype=torch.float64) for k in LAYERS}
    hyper_opt = fc.adam(0.1)  # our own optimizer, on the hyperparameters
    hstate = hyper_opt.init(log_c)

    def val_loss(lc):
        p = inner_run(p0, lc, train, inner, 64, 0.05)
        return F.cross_entropy(forward(p, val[0]), val[1])

    start = val_loss(log_c).item()
    for _ in range(outer):
        lc = {k: v.clone().requires_grad_(True) for k, v in log_c.items()}
        loss = val_loss(lc)
        hyper = dict(zip(lc, torch.autograd.grad(loss, list(lc.values()))))
        log_c, hstate = hyper_opt.update(log_c, hyper, hstate)
    end = val_loss(log_c).item()
    coeffs = {k: round(float(v.exp()), 3) for k, v in log_c.items()}
    print(f"learnt coefficients per layer: {coeffs}")
    print(f"validation loss after {inner} SGD steps: {start:.4f} (all 1.0) -> {end:.4f} (learnt)")
    return {"coeffs": coeffs, "start": start, "end": end}


if __name__ == "__main__":
    main()
