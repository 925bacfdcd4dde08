"""Recompilations of a ``torch.compile``d training step (grad + ``update``) when only the
coefficients change, and when the mask set changes.

A counting backend records every graph dynamo hands over (``--backend`` picks the one it
wraps; ``eager`` by default: the counts do not depend on it, the wall time does).
Prints one JSON line per case and a final line of counts.

    python benchmarks/bench_compile.py
    python benchmarks/bench_compile.py --backend inductor
    python benchmarks/bench_compile.py --fullgraph   # fails on any graph break
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch._dynamo
from torch import nn
from torch.func import functional_call, grad

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # this checkout's package
import _common as C  # noqa: E402

import funcurriculum as fc  # noqa: E402


def main() -> None:
    ap = C.base_parser(__doc__.splitlines()[0])
    ap.add_argument("--backend", default="eager")
    ap.add_argument("--steps", type=int, default=4, help="steps per coefficient/mask setting")
    ap.add_argument(
        "--fullgraph", action="store_true", help="fail on any graph break (fullgraph=True)"
    )
    args = ap.parse_args()
    C.setup(args)
    dev = args.device
    model = nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
    )
    model.to(dev)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    names = list(params)
    x, y = torch.randn(32, 16, device=dev), torch.randn(32, 4, device=dev)
    opt = fc.adam(1e-2)

    def loss(p):
        return nn.functional.mse_loss(functional_call(model, p, (x,)), y)

    def train_step(p, s, masks, coeffs):
        g = grad(loss)(p)
        return opt.update(p, g, s, masks, coeffs)

    graphs = [0]
    inner = args.backend

    def counting(gm, example_inputs):
        graphs[0] += 1
        if inner == "eager":
            return gm.forward
        from torch._dynamo.backends.registry import lookup_backend

        return lookup_backend(inner)(gm, example_inputs)

    meta = C.machine(dev) | {
        "bench": "compile",
        "backend": args.backend,
        "torch": torch.__version__,
    }
    results = {}

    def run_case(name, settings):
        """settings: list of (masks, coeffs); each held for --steps steps."""
        torch._dynamo.reset()
        graphs[0] = 0
        step = torch.compile(train_step, backend=counting, fullgraph=args.fullgraph)
        p, s = dict(params), opt.init(params)
        per_setting = []
        t0 = time.perf_counter()
        prev_masks = None
        for masks, coeffs in settings:
            if prev_masks is not None and masks is not prev_masks:
                s = opt.transition(s, p, prev_masks, masks)
            before = graphs[0]
            for _ in range(args.steps):
                p, s = step(p, s, masks, coeffs)
            per_setting.append(graphs[0] - before)
            prev_masks = masks
        rec = {
            "case": name,
            "graphs_per_setting": per_setting,
            "first_setting_graphs": per_setting[0],
            "later_graphs": sum(per_setting[1:]),
            "wall_s": round(time.perf_counter() - t0, 2),
        }
        results[name] = rec
        C.emit(meta | rec)

    all_on = {k: True for k in names}

    def tensor_coeffs(v):
        return {k: torch.tensor(v * (1 + i / 10), device=dev) for i, k in enumerate(names)}

    def float_coeffs(v):
        return {k: v * (1 + i / 10) for i, k in enumerate(names)}

    run_case("tensor_coeffs_change", [(all_on, tensor_coeffs(v)) for v in (1.0, 0.5, 0.25, 0.1)])
    run_case("float_coeffs_change", [(all_on, float_coeffs(v)) for v in (1.0, 0.5, 0.25, 0.1)])
    mask_sets = [
        {k: not k.startswith("0.") for k in names},  # first layer frozen
        {k: k.startswith("4.") for k in names},  # head only
        all_on,
    ]
    c = tensor_coeffs(1.0)
    seq = [(m, c) for m in mask_sets] + [(m, c) for m in mask_sets]  # each set visited twice
    run_case("masks_change", seq)
    mc = results["masks_change"]["graphs_per_setting"]
    C.emit(
        {
            "bench": "compile",
            "device": dev,
            "counts": {
                "recompiles_tensor_coeffs_change": results["tensor_coeffs_change"]["later_graphs"],
                "recompiles_float_coeffs_change": results["float_coeffs_change"]["later_graphs"],
                "graphs_per_new_mask_set": mc[: len(mask_sets)],
                "graphs_on_revisited_mask_sets": sum(mc[len(mask_sets) :]),
            },
        }
    )


if __name__ == "__main__":
    main()
