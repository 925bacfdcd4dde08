"""shard_optimizer on a custom rule, a catalogue optimizer, chains and multi_optimizers (2 gloo ranks).

The ranks run this file as ``python tests/test_distributed_compose.py SCENARIO RANK WORLD
PORT OUT`` with the helpers of ``tests/test_distributed.py`` (same tiny model, curriculum
phases and launcher); each rank compares the sharded run with the unsharded optimizer
on the same averaged grads and writes what it saw to ``OUT/rank{r}.pt``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import test_distributed as td  # noqa: E402

import funcurriculum as fc  # noqa: E402


def labels(params):
    return {k: "matrices" if v.ndim == 2 else "rest" for k, v in params.items()}


@dataclass(frozen=True)
class SignMomentum:
    """A rule with only fields / init / step (no kernels): the generic engine under ZeRO."""

    beta: float = 0.9
    fields = ("m",)

    def init(self, p):
        return (torch.zeros_like(p),)

    def step(self, p, g, bufs, count, lr):
        m = self.beta * bufs[0] + (1 - self.beta) * g
        return p - lr * torch.sign(m), (m,)


def optimizers():
    return {
        "custom_rule": lambda: fc.Optimizer(SignMomentum(), 0.01, name="sign_momentum"),
        "catalogue": lambda: fc.nadam(0.05, weight_decay=0.01),
        "chain": lambda: fc.skip_nonfinite(fc.with_clipping(fc.adam(0.05, weight_decay=0.01), 0.5)),
        "multi": lambda: fc.multi_optimizer(
            {"matrices": fc.sgd(0.1, momentum=0.9), "rest": fc.adam(0.05)}, labels
        ),
        "multi_of_chains": lambda: fc.chain(
            fc.clip_grad_value(0.05),
            fc.multi_optimizer(
                {
                    "matrices": fc.with_clipping(fc.sgd(0.1, momentum=0.9), 0.2),
                    "rest": fc.adamw(0.05),
                },
                labels,
            ),
        ),
    }


def moment_elements(state):
    flat, _ = fc._tree.flatten(state)
    return sum(t.numel() for t in flat if isinstance(t, torch.Tensor) and t.dim() > 0)


def scenario_compose(rank, world, out):
    import funcurriculum.distributed as fcd

    res = {}
    for name, make in optimizers().items():
        plain, sharded = make(), fcd.shard_optimizer(make())
        ref_p, ref_s, _ = td.train(plain, world, rank, fcd.all_reduce_grads)
        got_p, got_s, _ = td.train(sharded, world, rank, fcd.all_reduce_grads)
        don_p, _, _ = td.train(sharded, world, rank, fcd.all_reduce_grads, donate=True)
        p = td.make_params()
        res[name] = {
            "ref": ref_p,
            "got": got_p,
            "donated": don_p,
            "repr": repr(sharded),
            "elements": (moment_elements(sharded.init(p)), moment_elements(plain.init(p))),
        }
        if name == "chain":
            res[name]["grad_norm"] = (ref_s["grad_norm"], got_s["grad_norm"])
            res[name]["skipped"] = int(got_s["skipped"])

    # a non-finite averaged grad: every rank skips (no collective entered by one only)
    opt = fcd.shard_optimizer(optimizers()["chain"]())
    p = td.make_params()
    s = opt.init(p)
    g = {k: torch.ones_like(v) for k, v in p.items()}
    g["head.bias"] = torch.full_like(g["head.bias"], float("nan"))
    new, s2 = opt.update(p, fcd.all_reduce_grads(g), s)
    res["skip"] = (all(new[k] is p[k] for k in p), int(s2["skipped"]))

    # ranks disagreeing on coefficients (issue #19 row 14): ValueError on every rank,
    # nothing written even with donate=True
    sharded = fcd.shard_optimizer(fc.adam(0.1))
    p = td.make_params()
    s = sharded.init(p)
    snap = {k: v.clone() for k, v in p.items()}
    g = {k: torch.ones_like(v) for k, v in p.items()}
    coeffs = {k: 1.0 for k in p}
    coeffs["head.weight"] = 0.5 if rank == 0 else 0.25
    res["err_coeffs"] = td._expect_error(lambda: sharded.update(p, g, s, None, coeffs, donate=True))
    res["coeffs_untouched"] = all(torch.equal(p[k], snap[k]) for k in p)
    t_coeffs = {k: torch.tensor(1.0) for k in p}
    t_coeffs["backbone.0.bias"] = torch.tensor(1.0 + rank)
    res["err_tensor_coeffs"] = td._expect_error(lambda: sharded.update(p, g, s, None, t_coeffs))
    same = {k: torch.tensor(0.5) if k.startswith("head") else 1.0 for k in p}
    res["same_coeffs_ok"] = td._expect_error(lambda: sharded.update(p, g, s, None, same))
    # a coefficient that differs only on a frozen leaf is not a disagreement
    masks = {k: k.startswith("head") for k in p}
    s = sharded.init(p, masks)
    frozen_diff = dict(same, **{"backbone.0.weight": float(rank)})
    res["frozen_coeff_ok"] = td._expect_error(lambda: sharded.update(p, g, s, masks, frozen_diff))
    return res


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return td.launch_file(__file__, "compose", tmp_path_factory.mktemp("compose"))


@pytest.mark.slow
def test_sharded_custom_rules_chains_and_multi_optimizers_equal_unsharded(ranks):
    for r in ranks:
        for name in optimizers():
            res = r[name]
            td.assert_trees_close(res["got"], res["ref"], rtol=0, atol=0)
            td.assert_trees_close(res["donated"], res["ref"], rtol=0, atol=0)
            sharded, plain = res["elements"]
            assert sharded < 0.75 * plain, name  # moments split over the ranks
        assert r["chain"]["repr"].startswith("chain(nonfinite_guard(), clip_grad_norm(0.5), shard")
        assert "multi_optimizer({'matrices': shard_optimizer(" in r["multi"]["repr"]
        a, b = r["chain"]["grad_norm"]
        assert torch.equal(a, b) and r["chain"]["skipped"] == 0
        assert r["skip"] == (True, 1)
    td.assert_trees_equal(ranks[0]["multi"]["got"], ranks[1]["multi"]["got"])


@pytest.mark.slow
def test_ranks_disagreeing_on_coefficients_raise_on_every_rank(ranks):
    for r in ranks:
        assert r["err_coeffs"].startswith("ValueError") and "coefficients" in r["err_coeffs"]
        assert r["err_tensor_coeffs"].startswith("ValueError")
        assert "coefficients" in r["err_tensor_coeffs"]
        assert r["coeffs_untouched"]
        assert r["same_coeffs_ok"] is None and r["frozen_coeff_ok"] is None


if __name__ == "__main__":
    torch.set_num_threads(1)
    _scenario, _rank, _world, _port, _out = sys.argv[1:]
    td.worker(_scenario, int(_rank), int(_world), int(_port), _out, globals())
