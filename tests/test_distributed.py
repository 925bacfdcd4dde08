"""Scale-out on torch.distributed (gloo on CPU, 2 ranks spawned by the tests).

The ranks are subprocesses running this very file (``python tests/test_distributed.py
SCENARIO RANK WORLD PORT OUT``); each writes what it observed to ``OUT/rank{r}.pt`` and
the tests assert on those results (and on single-process oracles computed here). One
launch runs most scenarios, so the whole file stays well under a minute.
"""

from __future__ import annotations

import importlib.util
import os
import runpy
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.func import grad

import funcurriculum as fc

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 90

# ---------------------------------------------------------------------------------------
# a tiny model and a curriculum run shared by the workers and the single-process oracles


def make_params(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "backbone.0.weight": (8, 6),
        "backbone.0.bias": (8,),
        "backbone.1.weight": (8, 8),
        "backbone.1.bias": (8,),
        "head.weight": (3, 8),
        "head.bias": (3,),
    }
    return {k: torch.randn(s, generator=g) * 0.3 for k, s in shapes.items()}


def make_data(n: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def loss_fn(trainable, frozen, x, y):
    p = fc.combine(trainable, frozen)
    h = torch.tanh(x @ p["backbone.0.weight"].T + p["backbone.0.bias"])
    h = torch.tanh(h @ p["backbone.1.weight"].T + p["backbone.1.bias"])
    return torch.nn.functional.cross_entropy(h @ p["head.weight"].T + p["head.bias"], y)


def phases(params):
    """(steps, curriculum) per phase: all -> head only -> head.bias only -> all with LLRD."""
    cur = fc.Curriculum(params)
    head = cur.freeze("backbone")
    return [
        (3, cur),
        (3, head),
        (2, head.freeze("head.weight")),  # one trainable leaf: a rank owns nothing
        (3, cur.set_lr_coefficient(0.1, "backbone")),
    ]


def train(opt, world=1, rank=0, reduce=None, donate=False, stop=None, start=None):
    """Run the curriculum; ``reduce(grads, masks)`` averages grads across ranks.

    ``start``: (params, state, step) to resume from; ``stop``: global step at which to
    return early with (params, state, step).
    """
    x, y = make_data()
    x, y = x.chunk(world)[rank], y.chunk(world)[rank]
    params = make_params()
    plan = phases(params)
    step, masks, state = 0, None, None
    if start is not None:
        params, state, step0 = start
    else:
        step0 = 0
    for steps, cur in plan:
        new_masks = cur.masks
        for _ in range(steps):
            if state is None:
                state = opt.init(params, new_masks)
            elif masks is not None and new_masks != masks and step >= step0:
                state = opt.transition(state, params, masks, new_masks)
            masks = new_masks
            if step < step0:
                step += 1
                continue
            if stop is not None and step == stop:
                return params, state, step
            tr, frz = fc.partition(params, masks)
            g = grad(loss_fn)(tr, frz, x, y)
            if reduce is not None:
                g = reduce(g, masks)
            params, state = opt.update(params, g, state, masks, cur.coeffs, donate=donate)
            step += 1
    return params, state, step


def moment_bytes(state) -> int:
    return sum(
        t.numel() * t.element_size() for k in ("exp_avg", "exp_avg_sq") for t in state[k].values()
    )


# ---------------------------------------------------------------------------------------
# worker side


class Counter:
    """Wraps dist.all_reduce / broadcast to count the float elements they carry."""

    def __init__(self):
        self.elements = 0
        self.calls = 0
        self._orig = {}

    def __enter__(self):
        for name in ("all_reduce", "broadcast"):
            orig = getattr(dist, name)
            self._orig[name] = orig

            def wrapped(tensor, *a, _orig=orig, **kw):
                if tensor.is_floating_point():
                    self.elements += tensor.numel()
                    self.calls += 1
                return _orig(tensor, *a, **kw)

            setattr(dist, name, wrapped)
        return self

    def __exit__(self, *exc):
        for name, orig in self._orig.items():
            setattr(dist, name, orig)


def _expect_error(fn):
    try:
        fn()
    except (ValueError, RuntimeError, TypeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def scenario_main(rank, world, out):
    import funcurriculum.distributed as fcd

    res = {}
    opt = fc.adam(0.05, weight_decay=0.01)

    # 1. data parallel with all_reduce_grads, elements communicated counted per step
    sent = []

    def reduce(g, masks):
        with Counter() as c:
            r = fcd.all_reduce_grads(g, masks, bucket_cap_mb=0.0005)
        sent.append(c.elements)
        return r

    res["dp"], _, _ = train(opt, world, rank, reduce)
    res["sent"] = sent
    # grads with None at frozen leaves and a full-structure tree are handled too
    p = make_params()
    full = {k: torch.ones_like(v) * (rank + 1) for k, v in p.items()}
    masks = phases(p)[1][1].masks
    with Counter() as c:
        avg = fcd.all_reduce_grads(full, masks)
    res["masked_full"] = (avg, c.elements, full)

    # 2. ZeRO-1 against the unsharded optimizer, same averaged grads
    sharded = fcd.shard_optimizer(opt)
    zp, zstate, _ = train(sharded, world, rank, fcd.all_reduce_grads)
    res["zero"] = zp
    res["zero_donate"], _, _ = train(sharded, world, rank, fcd.all_reduce_grads, donate=True)
    res["zero_counts"] = zstate["count"]
    p = make_params()
    res["zero_bytes"] = moment_bytes(sharded.init(p))
    res["plain_bytes"] = moment_bytes(opt.init(p))
    one = phases(p)[2][1].masks
    res["owns_nothing_bytes"] = moment_bytes(sharded.init(p, one))
    head_only = phases(p)[1][1].masks
    g = {k: torch.ones_like(v) for k, v in p.items()}
    with Counter() as c:
        sharded.update(p, g, sharded.init(p, head_only), head_only)
    res["zero_sync_elements"] = c.elements

    # 3. DCP: save mid-phase (step 5, inside "head only"), resume, compare bit for bit
    ckpt = os.path.join(out, "ckpt")
    params, state, step = train(sharded, world, rank, fcd.all_reduce_grads, stop=5)
    cur = phases(make_params())[1][1]
    fcd.save(ckpt, params, state, curriculum=cur, progress={"step": step}, group=None)
    loaded = fcd.load(ckpt, make_params(seed=7), sharded)
    assert loaded["progress"] == {"step": 5} and loaded["curriculum"] == cur
    res["resumed"], _, _ = train(
        sharded,
        world,
        rank,
        fcd.all_reduce_grads,
        start=(loaded["params"], loaded["state"], loaded["progress"]["step"]),
    )

    # 4. DTensor leaves, Shard(0) over a 2-rank CPU mesh
    res["dtensor"] = dtensor_case(rank, world, out)

    res["fsdp2"] = fsdp2_case(rank, world)

    # 5. misuse: different masks / trees on the ranks
    p = make_params()
    g = {k: torch.ones_like(v) for k, v in p.items()}
    m = [phases(p)[0][1].masks, phases(p)[1][1].masks][rank]
    res["err_masks"] = _expect_error(lambda: fcd.all_reduce_grads(g, m))
    g2 = dict(g)
    if rank == 1:
        g2["extra"] = torch.zeros(2)
    res["err_tree"] = _expect_error(lambda: fcd.all_reduce_grads(g2))
    s = sharded.init(p)
    res["err_zero"] = _expect_error(lambda: sharded.update(p, g, s, m))
    g3 = dict(g)
    if rank == 0:
        g3["head.bias"] = "oops"
    res["err_local"] = _expect_error(lambda: fcd.all_reduce_grads(g3))
    res["after_errors"] = fcd.all_reduce_grads({"w": torch.full((2,), float(rank))})["w"]

    # 6. ensemble split over ranks
    res["ensemble"] = ensemble_case(rank, world)

    # 7. the digits example, data-parallel on this process group (launched by torchrun
    # in real use: ``torchrun --nproc-per-node 2 examples/distributed_digits.py``)
    res["digits"] = None
    if importlib.util.find_spec("sklearn") is not None:
        sys.path.insert(0, os.path.dirname(DIGITS[0]))  # the examples import examples/_common.py
        example = runpy.run_path(DIGITS[0])
        res["digits"] = example["main"]([*DIGITS[1:], os.path.join(out, "digits2.pt")])["params"]
    return res


def dtensor_case(rank, world, out_dir):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor
    from torch.distributed.tensor.debug import CommDebugMode

    mesh = init_device_mesh("cpu", (world,))
    gen = torch.Generator().manual_seed(3)
    full_p = {
        "a": torch.randn(6, 4, generator=gen),
        "b": torch.randn(4, generator=gen),
        "c": torch.randn(2, 3, generator=gen),
    }
    full_g = [{k: torch.randn(v.shape, generator=gen) for k, v in full_p.items()} for _ in range(3)]
    old = {"a": True, "b": True, "c": False}
    new = {"a": True, "b": True, "c": True}
    coeffs = {"a": 1.0, "b": 0.5, "c": 2.0}
    out = {}
    for donate in (False, True):
        opt = fc.adamw(0.1)
        dp = {k: distribute_tensor(v.clone(), mesh, [Shard(0)]) for k, v in full_p.items()}
        fp = {k: v.clone() for k, v in full_p.items()}
        ds, fs = opt.init(dp, old), opt.init(fp, old)
        comm = CommDebugMode()
        for i, g in enumerate(full_g):
            if i == 2:
                with comm:
                    ds = opt.transition(ds, dp, old, new)
                fs = opt.transition(fs, fp, old, new)
            masks = old if i < 2 else new
            dg = {k: distribute_tensor(v, mesh, [Shard(0)]) for k, v in g.items()}
            with comm:
                dp, ds = opt.update(dp, dg, ds, masks, coeffs, donate=donate)
            fp, fs = opt.update(fp, g, fs, masks, coeffs)
        out[donate] = {
            "params": {k: v.full_tensor() for k, v in dp.items()},
            "exp_avg": {k: v.full_tensor() for k, v in ds["exp_avg"].items()},
            "ref_params": fp,
            "ref_exp_avg": fs["exp_avg"],
            "count": {k: v.clone() for k, v in ds["count"].items()},
            "ref_count": fs["count"],
            "comms": comm.get_total_counts(),
            "is_dtensor": all(isinstance(v, DTensor) for v in dp.values()),
            "local_shape": tuple(dp["a"].to_local().shape),
        }
    # many steps on DTensor leaves hold a constant number of DTensor specs (no leak)
    import gc

    from torch.distributed.tensor._dtensor_spec import DTensorSpec

    def specs():
        gc.collect()
        return sum(isinstance(o, DTensorSpec) for o in gc.get_objects())

    q, s = dp, ds
    counts = []
    for i in range(101):
        q, s = fc.adamw(0.01).update(q, {k: dg[k] for k in q}, s, new, donate=True)
        if i in (0, 100):
            counts.append(specs())
    out["spec_counts"] = counts

    # DTensor params and moments through a DCP checkpoint, loaded into a fresh template
    import funcurriculum.distributed as fcd

    opt = fc.adamw(0.1)
    ckpt = os.path.join(out_dir, "dtensor_ckpt")
    fcd.save(ckpt, dp, ds, masks=new)
    template = {
        k: distribute_tensor(torch.zeros_like(v), mesh, [Shard(0)]) for k, v in full_p.items()
    }
    back = fcd.load(ckpt, template, opt)
    out["dcp"] = {
        "params": {k: v.full_tensor() for k, v in back["params"].items()},
        "exp_avg_sq": {k: v.full_tensor() for k, v in back["state"]["exp_avg_sq"].items()},
        "ref_params": {k: v.full_tensor() for k, v in dp.items()},
        "ref_exp_avg_sq": {k: v.full_tensor() for k, v in ds["exp_avg_sq"].items()},
    }
    # mismatched placements are refused, never gathered
    from torch.distributed.tensor import Replicate

    opt = fc.adam(0.1)
    dp = {"a": distribute_tensor(full_p["a"], mesh, [Shard(0)])}
    bad = {"a": distribute_tensor(full_p["a"], mesh, [Replicate()])}
    out["err_placement"] = _expect_error(lambda: opt.update(dp, bad, opt.init(dp)))
    return out


def fsdp2_case(rank, world):
    """FSDP2 ``fully_shard`` module: its named_parameters() (DTensors) feed the optimizer."""
    from torch.distributed.fsdp import fully_shard

    def make():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))

    x, y = make_data()
    ref, model = make(), make()
    fully_shard(model)
    opt = fc.adam(0.1)
    params = dict(model.named_parameters())
    masks = {k: not k.startswith("0.") for k in params}
    state = opt.init(params, masks)
    ref_p = {k: v.detach().clone() for k, v in ref.named_parameters()}
    ref_s = opt.init(ref_p, masks)

    def ref_loss(p):
        return torch.nn.functional.cross_entropy(torch.func.functional_call(ref, p, (x,)), y)

    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(x.chunk(world)[rank]), y.chunk(world)[rank])
        loss.backward()
        grads = {k: v.grad for k, v in params.items()}
        new, state = opt.update(params, grads, state, masks, donate=True)
        assert all(new[k] is params[k] for k in params)  # in place on the module's shards
        model.zero_grad(set_to_none=True)
        ref_p, ref_s = opt.update(ref_p, grad(ref_loss)(ref_p), ref_s, masks)
    return {k: v.full_tensor() for k, v in model.named_parameters()}, ref_p


def ensemble_losses(coeffs: torch.Tensor) -> torch.Tensor:
    """A vmapped sweep: members differ by head lr coefficient; returns final losses."""
    from torch.func import vmap

    x, y = make_data()
    opt = fc.adam(0.05)
    base = make_params()
    n = coeffs.shape[0]
    stacked = {k: v.expand(n, *v.shape).clone() for k, v in base.items()}
    masks = {k: True for k in base}

    def member_step(p, s, c):
        g = grad(loss_fn)(p, {}, x, y)
        cs = {k: (c if k.startswith("head") else torch.ones_like(c)) for k in p}
        return opt.update(p, g, s, masks, cs)

    state = vmap(opt.init)(stacked)
    for _ in range(3):
        stacked, state = vmap(member_step)(stacked, state, coeffs)
    return vmap(lambda p: loss_fn(p, {}, x, y))(stacked)


def ensemble_case(rank, world):
    import funcurriculum.distributed as fcd

    coeffs = torch.linspace(0.0, 2.0, 5)
    sl = fcd.member_slice(5)
    local = ensemble_losses(coeffs[sl])
    return fcd.gather_members(local, 5), (sl.start, sl.stop)


def worker(scenario, rank, world, port, out, scenarios=None):
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=30),
    )
    try:
        res = (scenarios or globals())[f"scenario_{scenario}"](rank, world, out)
        torch.save(res, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------
# test side


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(scenario, tmp, world=2):
    return launch_file(__file__, scenario, tmp, world)


def launch_file(path, scenario, tmp, world=2):
    """Run ``python path scenario rank world port tmp`` on ``world`` ranks; their results."""
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen(
            [sys.executable, str(path), scenario, str(r), str(world), str(port), str(tmp)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(world)
    ]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=TIMEOUT)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"rank processes hung for {TIMEOUT}s")
    for r, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {r} failed:\n{log}"
    return [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=False) for r in range(world)]


DIGITS = [str(ROOT / "examples" / "distributed_digits.py"), "--fast", "--save"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    # the single-process digits run, alongside the ranks (they run the 2-rank one)
    ref = None
    if importlib.util.find_spec("sklearn") is not None:
        ref = subprocess.Popen(
            [sys.executable, *DIGITS, str(tmp / "digits1.pt")],
            env=dict(os.environ, OMP_NUM_THREADS="1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    ranks = launch("main", tmp)
    if ref is not None:
        log = ref.communicate(timeout=TIMEOUT)[0]
        assert ref.returncode == 0, log
    return ranks, tmp


def assert_trees_close(a, b, **tol):
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol, msg=lambda m, k=k: f"{k}: {m}")


def assert_trees_equal(a, b):
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_two_ranks_half_batches_match_one_process_full_batch(results):
    ranks, _ = results
    ref, _, _ = train(fc.adam(0.05, weight_decay=0.01))
    for r in ranks:
        assert_trees_close(r["dp"], ref, rtol=1e-5, atol=1e-6)
    assert_trees_equal(ranks[0]["dp"], ranks[1]["dp"])


def test_only_trainable_elements_are_communicated(results):
    ranks, _ = results
    p = make_params()
    expected = []
    for steps, cur in phases(p):
        n = sum(v.numel() for k, v in p.items() if cur.masks[k])
        expected += [n] * steps
    assert ranks[0]["sent"] == expected
    assert expected[3] < expected[0] / 5  # frozen backbone: a fraction of the bytes
    avg, elements, full = ranks[0]["masked_full"]
    assert elements == 3 * 8 + 3  # head only
    assert torch.equal(avg["head.weight"], torch.full((3, 8), 1.5))
    assert avg["backbone.0.weight"] is full["backbone.0.weight"]  # frozen: passed through
    assert torch.equal(full["head.weight"], torch.ones(3, 8))  # input untouched


def test_zero1_matches_unsharded_across_phases(results):
    ranks, _ = results
    for r in ranks:
        assert_trees_close(r["zero"], r["dp"], rtol=0, atol=0)
        assert_trees_close(r["zero_donate"], r["dp"], rtol=0, atol=0)
    # counts replicated on every rank, as the unsharded optimizer's
    _, ref_state, _ = train(fc.adam(0.05, weight_decay=0.01))
    for r in ranks:
        assert_trees_equal(r["zero_counts"], ref_state["count"])


def test_zero1_state_memory_is_about_half(results):
    ranks, _ = results
    total = ranks[0]["plain_bytes"]
    per_rank = [r["zero_bytes"] for r in ranks]
    assert sum(per_rank) == total
    assert max(per_rank) <= 0.6 * total
    # the re-sync broadcasts the trainable leaves only (head: 3 x 8 + 3)
    assert all(r["zero_sync_elements"] == 27 for r in ranks)
    # one trainable leaf over two ranks: one rank owns it, the other owns nothing
    assert sorted(r["owns_nothing_bytes"] for r in ranks) == [0, 2 * 3 * 4]


def test_dcp_resume_mid_phase_is_bit_identical(results):
    ranks, _ = results
    for r in ranks:
        assert_trees_equal(r["resumed"], r["zero"])


def test_dcp_checkpoint_reshards_onto_one_process(results):
    ranks, tmp = results
    import funcurriculum.distributed as fcd

    assert not dist.is_initialized()
    opt = fc.adam(0.05, weight_decay=0.01)
    loaded = fcd.load(os.path.join(tmp, "ckpt"), make_params(seed=9), opt)
    # every trainable leaf's moments came back, from whichever rank owned it
    masks = loaded["masks"]
    for k, v in loaded["state"]["exp_avg"].items():
        assert v.numel() == (make_params()[k].numel() if masks[k] else 0)
    out, _, _ = train(opt, start=(loaded["params"], loaded["state"], 5))
    assert_trees_close(out, ranks[0]["zero"], rtol=1e-5, atol=1e-6)


def test_dtensor_shard_local_update_equals_full_update(results):
    ranks, _ = results
    for r in ranks:
        for donate in (False, True):
            d = r["dtensor"][donate]
            assert d["is_dtensor"] and d["local_shape"] == (3, 4)
            assert d["comms"] == 0  # shard-local: no collective during update / transition
            assert_trees_close(d["params"], d["ref_params"], rtol=1e-6, atol=1e-7)
            assert_trees_close(d["exp_avg"], d["ref_exp_avg"], rtol=1e-6, atol=1e-7)
            assert_trees_equal(d["count"], d["ref_count"])
        assert "placements" in r["dtensor"]["err_placement"]
        first, last = r["dtensor"]["spec_counts"]
        assert last == first  # 100 more updates, no DTensor spec objects leaked
        d = r["dtensor"]["dcp"]
        assert_trees_equal(d["params"], d["ref_params"])
        assert_trees_equal(d["exp_avg_sq"], d["ref_exp_avg_sq"])


def test_dcp_load_refuses_other_params(tmp_path):
    import funcurriculum.distributed as fcd

    opt = fc.adam(0.1)
    p = make_params()
    fcd.save(tmp_path / "c", p, opt.init(p), curriculum=fc.Curriculum(p).freeze("backbone"))
    other = dict(make_params(), extra=torch.zeros(1))
    with pytest.raises(ValueError, match="extra"):
        fcd.load(tmp_path / "c", other, opt)
    wrong = dict(make_params(), **{"head.bias": torch.zeros(4)})
    with pytest.raises(ValueError, match="head.bias"):
        fcd.load(tmp_path / "c", wrong, opt)
    back = fcd.load(tmp_path / "c", make_params(seed=5), opt)
    assert_trees_equal(back["params"], p)
    assert back["state"]["exp_avg"]["backbone.0.weight"].numel() == 0  # frozen at save


def test_fsdp2_module_parameters_update_in_place(results):
    ranks, _ = results
    for r in ranks:
        got, ref = r["fsdp2"]
        assert_trees_close(got, ref, rtol=1e-5, atol=1e-6)
        assert not torch.equal(got["2.weight"], make_fsdp_initial_head())


def make_fsdp_initial_head():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))[
        2
    ].weight.detach()


def test_misuse_is_an_error_on_every_rank(results):
    ranks, _ = results
    for r in ranks:
        assert r["err_masks"].startswith("ValueError") and "different" in r["err_masks"]
        assert r["err_tree"].startswith("ValueError") and "different" in r["err_tree"]
        assert r["err_zero"].startswith("ValueError") and "different" in r["err_zero"]
        assert r["err_local"] is not None
        assert torch.equal(r["after_errors"], torch.full((2,), 0.5))
    assert "expected a tensor" in ranks[0]["err_local"]
    assert "another rank failed" in ranks[1]["err_local"]


def test_uninitialised_process_group_is_a_clear_error():
    import funcurriculum.distributed as fcd

    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="init_process_group"):
        fcd.all_reduce_grads({"w": torch.ones(1)})
    with pytest.raises(RuntimeError, match="init_process_group"):
        fcd.shard_optimizer(fc.adam(0.1)).init({"w": torch.ones(1)})


def test_ensemble_split_over_ranks_gathers_the_full_sweep(results):
    ranks, _ = results
    ref = ensemble_losses(torch.linspace(0.0, 2.0, 5))
    assert [r["ensemble"][1] for r in ranks] == [(0, 3), (3, 5)]
    for r in ranks:
        torch.testing.assert_close(r["ensemble"][0], ref, rtol=1e-5, atol=1e-6)


def test_digits_example_two_ranks_match_single_process(results):
    ranks, tmp = results
    if ranks[0]["digits"] is None:
        pytest.skip("scikit-learn is not installed")
    one, two = fc.load(tmp / "digits1.pt"), fc.load(tmp / "digits2.pt")
    assert two["world"] == 2 and one["world"] == 1
    for phase in ("pretrain", "head", "finetune"):
        assert abs(one["acc"][phase] - two["acc"][phase]) <= 0.01
    assert_trees_close(two["params"], one["params"], rtol=1e-4, atol=1e-5)
    # every rank ends with the same params (ZeRO-1 re-sync)
    assert_trees_equal(ranks[0]["digits"], ranks[1]["digits"])


if __name__ == "__main__":
    torch.set_num_threads(1)
    _scenario, _rank, _world, _port, _out = sys.argv[1:]
    worker(_scenario, int(_rank), int(_world), int(_port), _out)
