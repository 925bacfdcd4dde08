"""ZeRO (``shard_optimizer``) over every catalogue optimizer (2 gloo ranks): each sharded run,
pure and donated, equals the unsharded optimizer on the same averaged grads through the
curriculum's phases (frozen leaves, coefficients, unfreezing transitions).

The ranks run this file as ``python tests/test_catalogue_zero.py catalogue RANK WORLD PORT
OUT`` with the helpers of ``tests/test_distributed.py``.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import test_distributed as td  # noqa: E402

import funcurriculum as fc  # noqa: E402


def _muon_labels(params):
    return {
        k: "muon" if k.startswith("backbone.1") and v.ndim == 2 else "adamw"
        for k, v in params.items()
    }


OPTIMIZERS = {
    "rmsprop": lambda: fc.rmsprop(0.01, momentum=0.5, centered=True, weight_decay=0.01),
    "adagrad": lambda: fc.adagrad(0.1, lr_decay=0.1, initial_accumulator_value=0.1),
    "adamax": lambda: fc.adamax(0.02, weight_decay=0.01),
    "nadam": lambda: fc.nadam(0.02, decoupled_weight_decay=True, weight_decay=0.01),
    "radam": lambda: fc.radam(0.02, betas=(0.7, 0.9)),
    "adadelta": lambda: fc.adadelta(1.0, weight_decay=0.01),
    "adafactor": lambda: fc.adafactor(0.05, weight_decay=0.01),
    "muon": lambda: fc.multi_optimizer(
        {"muon": fc.muon(0.02), "adamw": fc.adamw(0.01)}, _muon_labels
    ),
    "lion": lambda: fc.lion(0.005, weight_decay=0.1),
}


def scenario_catalogue(rank, world, out):
    import funcurriculum.distributed as fcd

    res = {}
    for name, make in OPTIMIZERS.items():
        plain, sharded = make(), fcd.shard_optimizer(make())
        ref_p, _, _ = td.train(plain, world, rank, fcd.all_reduce_grads)
        got_p, _, _ = td.train(sharded, world, rank, fcd.all_reduce_grads)
        don_p, _, _ = td.train(sharded, world, rank, fcd.all_reduce_grads, donate=True)
        res[name] = {"ref": ref_p, "got": got_p, "donated": don_p}
    return res


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return td.launch_file(__file__, "catalogue", tmp_path_factory.mktemp("catalogue_zero"))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_sharded_catalogue_optimizer_equals_unsharded(ranks, name):
    for r in ranks:
        res = r[name]
        td.assert_trees_close(res["got"], res["ref"], rtol=0, atol=0)
        td.assert_trees_close(res["donated"], res["ref"], rtol=0, atol=0)
        moved = any(not torch.equal(res["ref"][k], v) for k, v in td.make_params().items())
        assert moved, name
    td.assert_trees_equal(ranks[0][name]["got"], ranks[1][name]["got"])


if __name__ == "__main__":
    torch.set_num_threads(1)
    _scenario, _rank, _world, _port, _out = sys.argv[1:]
    td.worker(_scenario, int(_rank), int(_world), int(_port), _out, globals())
