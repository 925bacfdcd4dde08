"""Adam update speed against optax: funcurriculum, torch.optim and a jitted optax step.

Every case runs in one process on the same leaf sizes and values, interleaved round
by round, each keeping its own params/state chain:

* ``torch_fused``: ``torch.optim.Adam(fused=True).step()`` (the baseline, as in
  ``bench_update.py``; ``foreach=True`` where this torch has no fused kernel),
* ``ours_pure``: ``params, state = opt.update(params, grads, state)``,
* ``ours_donate``: the same with ``donate=True``,
* ``optax_jit``: ``params, state = step(params, grads, state)`` where ``step`` is
  ``optax.adam`` followed by ``optax.apply_updates`` under
  ``jax.jit(..., donate_argnums=(0, 2))``, blocked on its outputs inside the timed call,
* ``optax_jit_no_donate``: the same step jitted without donation.

Torch runs on ``--device``; JAX runs on its default backend (recorded as
``jax_backend`` in every line). Prints one JSON line per case and a final line of
ratios against ``torch_fused`` (of medians and paired within rounds) and of ours
against ``optax_jit`` (paired).

JAX and optax are not dependencies of funcurriculum; to run this script install them
first (``pip install jax optax``). Without them it prints a ``skipped`` line and exits.

On CPU both libraries use all cores (torch its intra-op pool, XLA its own thread
pool); the cases run interleaved, one call at a time, never concurrently.
``--threads`` sets torch's pool only. On CUDA, JAX's preallocation of most of the GPU
is turned off (``XLA_PYTHON_CLIENT_PREALLOCATE=false``) so that both fit.

    python benchmarks/bench_optax.py                   # 20M float32 params in 100 leaves
    python benchmarks/bench_optax.py --params 5e6 --leaves 50 --rounds 8
    python benchmarks/bench_optax.py --check           # 3 steps each, print the max diffs
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import funcurriculum as fc  # noqa: E402

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
try:
    import jax
    import jax.numpy as jnp
    import optax
except ImportError:
    print(json.dumps({"bench": "optax", "skipped": "jax/optax not installed"}), flush=True)
    sys.exit(0)

LR = 1e-3
BETAS = (0.9, 0.999)
EPS = 1e-8

Tensors = dict[str, torch.Tensor]


def optax_adam(weight_decay: float) -> optax.GradientTransformation:
    """optax's Adam with torch.optim.Adam's hyperparameters (L2 decay added to the grad)."""
    adam = optax.adam(LR, b1=BETAS[0], b2=BETAS[1], eps=EPS)
    if weight_decay:
        return optax.chain(optax.add_decayed_weights(weight_decay), adam)
    return adam


def to_jax(tree: Tensors) -> dict[str, jax.Array]:
    # a private host copy first: a donated JAX buffer must never alias torch's memory
    return {k: jnp.asarray(v.detach().cpu().numpy().copy()) for k, v in tree.items()}


def optax_step(tx: optax.GradientTransformation, donate: bool) -> Callable[..., Any]:
    def step(params: Any, grads: Any, state: Any) -> tuple[Any, Any]:
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 2) if donate else ())


def check(base: Tensors, grads: Tensors, weight_decay: float, device: str, steps: int) -> dict:
    """``steps`` updates of each implementation from the same start; max differences."""
    opt = fc.adam(LR, betas=BETAS, eps=EPS, weight_decay=weight_decay)
    ours = {k: v.clone() for k, v in base.items()}
    state = opt.init(ours)
    names = list(base)
    ps = [base[k].clone().requires_grad_(True) for k in names]
    for p, k in zip(ps, names):
        p.grad = grads[k]
    flags = {"fused": True} if C.has_fused(torch.optim.Adam, device) else {"foreach": True}
    topt = torch.optim.Adam(ps, lr=LR, betas=BETAS, eps=EPS, weight_decay=weight_decay, **flags)
    tx = optax_adam(weight_decay)
    jp, jg = to_jax(base), to_jax(grads)
    jstate = tx.init(jp)
    step = optax_step(tx, donate=False)
    for _ in range(steps):
        ours, state = opt.update(ours, grads, state)
        topt.step()
        jp, jstate = step(jp, jg, jstate)
    jp = jax.block_until_ready(jp)

    def diffs(other: dict[str, torch.Tensor]) -> dict[str, float]:
        abs_d = max((ours[k].cpu().double() - other[k].double()).abs().max().item() for k in names)
        scale = max(ours[k].abs().max().item() for k in names)
        # relative to how far the params moved: far stricter than relative to the params
        moved = max((ours[k] - base[k]).abs().max().item() for k in names)
        return {
            "max_abs_diff": abs_d,
            "max_rel_diff": abs_d / scale,
            "max_diff_rel_to_step": abs_d / moved,
        }

    from_jax = {k: torch.from_numpy(jax.device_get(jp[k]).copy()) for k in names}
    from_torch = {k: p.detach().cpu() for k, p in zip(names, ps)}
    return {
        "ours_vs_optax": diffs(from_jax),
        "ours_vs_torch": diffs(from_torch),
        "torch_ref": next(iter(flags)),
    }


def main() -> None:
    ap = C.base_parser(__doc__.splitlines()[0])
    ap.add_argument("--params", type=float, default=20e6, help="total parameter count")
    ap.add_argument("--leaves", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.0, help="L2, as torch.optim.Adam")
    ap.add_argument("--check", action="store_true", help="only compare params after 3 steps")
    args = ap.parse_args()
    C.setup(args)
    dev = args.device
    L = args.leaves
    n = int(args.params) // L
    names = [f"layer{i}.weight" for i in range(L)]
    gen = torch.Generator().manual_seed(0)

    def rand() -> torch.Tensor:
        return torch.randn(n, generator=gen).to(dev, torch.float32)

    base = {k: rand() for k in names}
    grads = {k: rand() * 1e-2 for k in names}
    wd = args.weight_decay
    meta = C.machine(dev) | {
        "bench": "optax",
        "jax_backend": jax.default_backend(),
        "jax": jax.__version__,
        "optax": optax.__version__,
        "params": n * L,
        "leaves": L,
        "dtype": "float32",
        "weight_decay": wd,
    }
    if args.check:
        C.emit(meta | {"case": "check", "steps": 3} | check(base, grads, wd, dev, 3))
        return

    opt = fc.adam(LR, betas=BETAS, eps=EPS, weight_decay=wd)
    fused_ok = C.has_fused(torch.optim.Adam, dev)
    base_name = "torch_fused" if fused_ok else "torch_foreach"

    def torch_case() -> Callable[[], None]:
        ps = [base[k].clone().requires_grad_(True) for k in names]
        for p, k in zip(ps, names):
            p.grad = grads[k]
        flags = {"fused": True} if fused_ok else {"foreach": True}
        o = torch.optim.Adam(ps, lr=LR, betas=BETAS, eps=EPS, weight_decay=wd, **flags)
        return o.step

    def ours_case(donate: bool) -> Callable[[], None]:
        params = {k: v.clone() for k, v in base.items()}
        holder = [params, opt.init(params)]

        def run() -> None:
            holder[:] = opt.update(holder[0], grads, holder[1], donate=donate)

        return run

    jgrads = to_jax(grads)

    def optax_case(donate: bool) -> Callable[[], None]:
        tx = optax_adam(wd)
        params = to_jax(base)
        holder = [params, tx.init(params)]
        step = optax_step(tx, donate)

        def run() -> None:
            holder[:] = jax.block_until_ready(step(holder[0], jgrads, holder[1]))

        return run

    cases = {
        base_name: torch_case(),
        "ours_pure": ours_case(donate=False),
        "ours_donate": ours_case(donate=True),
        "optax_jit": optax_case(donate=True),
        "optax_jit_no_donate": optax_case(donate=False),
    }
    times = C.interleaved(cases, args.rounds, args.iters, dev)
    med = {}
    for name, ts in times.items():
        s = C.summary(ts)
        med[name] = s["median_ms"]
        C.emit(meta | {"case": name} | s)

    def paired(a: str, b: str) -> float:
        return round(C.paired_ratio(times[a], times[b], args.iters), 3)

    others = [k for k in cases if k != base_name]
    C.emit(
        {
            "bench": "optax",
            "device": dev,
            "jax_backend": jax.default_backend(),
            f"{base_name}_ms": med[base_name],
            "ratios": {f"{k}_vs_{base_name}": round(med[k] / med[base_name], 3) for k in others},
            # median over rounds of the ratio within a round: drift between rounds cancels
            "ratios_paired": {f"{k}_vs_{base_name}": paired(k, base_name) for k in others}
            | {
                "ours_pure_vs_optax_jit": paired("ours_pure", "optax_jit"),
                # both pure: new buffers, inputs kept
                "ours_pure_vs_optax_jit_no_donate": paired("ours_pure", "optax_jit_no_donate"),
                "ours_donate_vs_optax_jit": paired("ours_donate", "optax_jit"),
            },
        }
    )


if __name__ == "__main__":
    main()
