"""Checkpoints: full training state, exact resume, crash safety, code-free loading, rotation."""

from __future__ import annotations

import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import grad

import funcurriculum as fc

SHAPES = {
    "backbone.0.weight": (8, 4),
    "backbone.0.bias": (8,),
    "backbone.1.weight": (8, 8),
    "backbone.1.bias": (8,),
    "head.weight": (2, 8),
    "head.bias": (2,),
}


def make_params(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.5 for k, s in SHAPES.items()}


def flat(tree):
    """(path, leaf) pairs of any nested container, for bitwise comparison."""
    out = []

    def walk(x, where):
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{where}.{k}")
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, f"{where}.{i}")
        else:
            out.append((where, x))

    walk(tree, "")
    return out


def bits(x: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a tensor (so NaNs and signed zeros compare exactly)."""
    return x.detach().contiguous().reshape(-1).view(torch.uint8)


def assert_bitwise_equal(a, b):
    fa, fb = flat(a), flat(b)
    assert [p for p, _ in fa] == [p for p, _ in fb]
    for (p, x), (_, y) in zip(fa, fb):
        if isinstance(x, torch.Tensor):
            assert isinstance(y, torch.Tensor), p
            assert x.dtype == y.dtype and x.shape == y.shape, p
            assert torch.equal(bits(x), bits(y)), p
        else:
            assert x == y, p


# -- a small curriculum training loop that uses every RNG ------------------------------
BOUNDARY = 6  # phase 2 (backbone unfrozen, lower lr) starts at this step
TOTAL = 12


def curriculum_at(base: fc.Curriculum, step: int) -> fc.Curriculum:
    if step < BOUNDARY:
        return base.freeze("backbone")
    return base.freeze("backbone.0").set_lr_coefficient(0.1, "backbone")


def loss_fn(trainable, frozen, x, y):
    p = fc.combine(trainable, frozen)
    h = torch.tanh(F.linear(x, p["backbone.0.weight"], p["backbone.0.bias"]))
    h = F.dropout(h, 0.2, training=True)  # torch CPU generator
    h = torch.tanh(F.linear(h, p["backbone.1.weight"], p["backbone.1.bias"]))
    out = F.linear(h, p["head.weight"], p["head.bias"])
    return F.cross_entropy(out, y)


def make_opt():
    return fc.skip_nonfinite(fc.with_clipping(fc.adam(fc.cosine(0.05, TOTAL)), max_norm=0.5))


def run(params, state, cur, start, stop, save_to=None):
    """Steps ``start .. stop-1``; returns the final (params, state, cur)."""
    opt = make_opt()
    base = fc.Curriculum(params)
    for t in range(start, stop):
        new_cur = curriculum_at(base, t)
        if new_cur.masks != cur.masks:
            state = opt.transition(state, params, cur.masks, new_cur.masks)
        cur = new_cur
        scale = random.uniform(0.5, 1.5)  # Python's generator
        idx = np.random.permutation(16)[:8]  # numpy's legacy generator
        x = torch.randn(16, 4)[torch.from_numpy(idx)] * scale
        y = torch.randint(0, 2, (8,))
        trainable, frozen = fc.partition(params, cur.masks)
        grads = grad(loss_fn)(trainable, frozen, x, y)
        params, state = opt.update(params, grads, state, cur.masks, cur.coeffs)
        if save_to is not None and t + 1 == save_to[1]:
            fc.save_training_state(
                save_to[0], params=params, opt_state=state, curriculum=cur, step=t + 1, epoch=0
            )
    return params, state, cur


def seed_all(seed):
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


@pytest.mark.parametrize("stop_at", [3, BOUNDARY, BOUNDARY + 2])
def test_resume_is_bit_identical(tmp_path, stop_at):
    """Mid-phase (3), exactly at the phase boundary (6) and just after it (8)."""
    opt = make_opt()
    params = make_params()
    cur0 = curriculum_at(fc.Curriculum(params), 0)

    seed_all(1)
    ref_params, ref_state, ref_cur = run(params, opt.init(params, cur0.masks), cur0, 0, TOTAL)

    f = str(tmp_path / "ckpt.pt")
    seed_all(1)
    run(params, opt.init(params, cur0.masks), cur0, 0, stop_at, save_to=(f, stop_at))
    seed_all(12345)  # a "fresh process": every generator elsewhere
    ts = fc.load_training_state(f, like_params=params)
    assert ts.step == stop_at
    p2, s2, c2 = run(ts.params, ts.opt_state, ts.curriculum, ts.step, TOTAL)

    assert_bitwise_equal(p2, ref_params)
    assert_bitwise_equal(s2, ref_state)
    assert c2 == ref_cur
    assert int(s2["step"]) == TOTAL
    # the backbone really trained after the boundary, so the comparison covers phase 2
    assert not torch.equal(ref_params["backbone.1.weight"], params["backbone.1.weight"])
    assert torch.equal(ref_params["backbone.0.weight"], params["backbone.0.weight"])


def test_resume_without_rng_diverges(tmp_path):
    """The exactness test has teeth: skipping the generator restore changes the run."""
    opt = make_opt()
    params = make_params()
    cur0 = curriculum_at(fc.Curriculum(params), 0)
    seed_all(1)
    ref_params, _, _ = run(params, opt.init(params, cur0.masks), cur0, 0, 5)
    f = str(tmp_path / "ckpt.pt")
    seed_all(1)
    run(params, opt.init(params, cur0.masks), cur0, 0, 3, save_to=(f, 3))
    seed_all(12345)
    ts = fc.load_training_state(f, like_params=params, restore_rng=False)
    p2, _, _ = run(ts.params, ts.opt_state, ts.curriculum, ts.step, 5)
    assert not torch.equal(p2["head.weight"], ref_params["head.weight"])


def test_training_state_round_trip(tmp_path):
    params = make_params()
    cur = fc.Curriculum(params).freeze("backbone").set_lr_coefficient(0.3, "head.bias")
    opt = fc.adam(0.1)
    state = opt.init(params, cur.masks)
    grads = {k: torch.randn_like(v) for k, v in params.items()}
    params2, state = opt.update(params, grads, state, cur.masks, cur.coeffs)
    extra = {"best": 0.25, "name": "run", "hist": [1, 2, 3], "t": torch.arange(3)}
    random.random()
    rng = fc.rng_state()
    path = fc.save_training_state(
        tmp_path / "s.pt",
        params=params2,
        opt_state=state,
        curriculum=cur,
        step=7,
        epoch=2,
        extra=extra,
        rng=rng,
    )
    expected = (torch.rand(3), random.random(), np.random.rand())
    seed_all(99)
    ts = fc.load_training_state(path, like_params=params)
    assert (torch.rand(3).tolist(), random.random(), np.random.rand()) == (
        expected[0].tolist(),
        expected[1],
        expected[2],
    )
    assert_bitwise_equal(ts.params, params2)
    assert_bitwise_equal(ts.opt_state, state)
    assert ts.opt_state["exp_avg"]["backbone.0.weight"].numel() == 0  # frozen: no buffers
    assert ts.curriculum == cur
    assert ts.curriculum.frozen == cur.frozen and ts.curriculum.lr_coefficients == {
        "head.bias": 0.3
    }
    assert (ts.step, ts.epoch) == (7, 2)
    assert_bitwise_equal(ts.extra, extra)
    assert ts.path == os.fspath(path)


def test_mmap_load_survives_rotation(tmp_path):
    params = make_params()
    pattern = str(tmp_path / "m{step}.pt")
    f = fc.save_training_state(pattern, params=params, step=1)
    ts = fc.load_training_state(f, like_params=params, mmap=True)
    fc.save_training_state(
        pattern, params={k: v + 1 for k, v in params.items()}, step=2, keep_last=1
    )
    assert not os.path.exists(f)
    assert_bitwise_equal(ts.params, params)


def test_restore_rng_false_leaves_generators_alone(tmp_path):
    params = make_params()
    f = fc.save_training_state(tmp_path / "s.pt", params=params)
    seed_all(5)
    before = torch.get_rng_state()
    ts = fc.load_training_state(f, restore_rng=False)
    assert torch.equal(torch.get_rng_state(), before)
    assert ts.rng is not None and set(ts.rng) >= {"torch", "python", "numpy"}


def test_rng_state_round_trip_through_a_file(tmp_path):
    seed_all(3)
    s = fc.rng_state()
    a = (torch.randn(4), random.random(), np.random.randn(2))
    fc.save(tmp_path / "r.pt", s)
    seed_all(4)
    fc.set_rng_state(fc.load(tmp_path / "r.pt"))
    b = (torch.randn(4), random.random(), np.random.randn(2))
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and np.array_equal(a[2], b[2])


def test_set_rng_state_rejects_bad_state_changing_nothing():
    seed_all(8)
    before = torch.get_rng_state()
    with pytest.raises(ValueError, match="unknown components"):
        fc.set_rng_state({"torch": torch.get_rng_state(), "jax": 1})
    with pytest.raises(ValueError, match="uint8"):
        fc.set_rng_state({"torch": torch.zeros(3)})
    with pytest.raises(ValueError, match="python"):
        fc.set_rng_state({"torch": torch.get_rng_state(), "python": [1, 2]})
    with pytest.raises(ValueError, match="cuda"):
        fc.set_rng_state({"torch": torch.get_rng_state(), "cuda": [torch.zeros(2)]})
    with pytest.raises(ValueError, match="numpy"):
        fc.set_rng_state({"torch": torch.get_rng_state(), "numpy": {"keys": 1}})
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only warning")
def test_cuda_rng_state_on_a_cpu_machine_warns():
    with pytest.warns(UserWarning, match="CUDA is not available"):
        fc.set_rng_state({"cuda": [torch.get_rng_state()]})
    assert "cuda" not in fc.rng_state()


def test_vmapped_ensemble_state_round_trip(tmp_path):
    """Stacked params and vmap(opt.init) state (per-member counts of shape (E,))."""
    E = 3
    base = make_params()
    stacked = {k: torch.stack([v + i for i in range(E)]) for k, v in base.items()}
    cur = fc.Curriculum(base).freeze("backbone.0")
    opt = fc.skip_nonfinite(fc.adam(0.1))
    state = torch.func.vmap(lambda p: opt.init(p, cur.masks))(stacked)
    grads = {k: torch.randn_like(v) for k, v in stacked.items()}
    stacked2, state = torch.func.vmap(lambda p, g, s: opt.update(p, g, s, cur.masks))(
        stacked, grads, state
    )
    assert state["count"]["head.bias"].shape == (E,)
    f = fc.save_training_state(
        tmp_path / "e.pt", params=stacked2, opt_state=state, curriculum=cur, step=1
    )
    ts = fc.load_training_state(f, like_params=stacked)
    assert_bitwise_equal(ts.params, stacked2)
    assert_bitwise_equal(ts.opt_state, state)
    with pytest.raises(
        ValueError, match=r"backbone\.0\.weight: shape \(8, 4\) vs model \(3, 8, 4\)"
    ):
        fc.load_training_state(
            fc.save_training_state(tmp_path / "one.pt", params=base), like_params=stacked
        )


# -- refusing mismatched checkpoints -------------------------------------------------------
def test_like_params_mismatch_lists_paths_and_changes_nothing(tmp_path):
    params = make_params()
    f = fc.save_training_state(tmp_path / "s.pt", params=params, step=1)
    model = dict(params)
    model["head.weight"] = torch.zeros(3, 8)  # shape
    model["head.bias"] = torch.zeros(2, dtype=torch.float64)  # dtype
    del model["backbone.1.bias"]  # missing from the model -> unexpected in the file
    model["extra.weight"] = torch.zeros(1)  # missing from the file
    seed_all(0)
    before = torch.get_rng_state()
    with pytest.raises(ValueError) as err:
        fc.load_training_state(f, like_params=model)
    msg = str(err.value)
    for name in (
        "head.weight",
        "head.bias",
        "backbone.1.bias",
        "extra.weight",
        "(3, 8)",
        "float64",
    ):
        assert name in msg, (name, msg)
    assert torch.equal(torch.get_rng_state(), before)  # RNG not restored on refusal


def test_like_params_reordered(tmp_path):
    params = make_params()
    f = fc.save_training_state(tmp_path / "s.pt", params=params)
    reordered = dict(reversed(list(params.items())))
    with pytest.raises(ValueError, match="different order"):
        fc.load_training_state(f, like_params=reordered)


def test_save_refuses_inconsistent_state_and_writes_nothing(tmp_path):
    params = make_params()
    other = {"a.weight": torch.zeros(2)}
    f = tmp_path / "s.pt"
    with pytest.raises(ValueError, match="curriculum does not match"):
        fc.save_training_state(f, params=params, curriculum=fc.Curriculum(other))
    state = fc.adam(0.1).init(other)
    with pytest.raises(ValueError, match=r"opt_state\['count'\].*missing paths"):
        fc.save_training_state(f, params=params, opt_state=state)
    bad = fc.adam(0.1).init(params)
    bad["exp_avg"]["head.bias"] = torch.zeros(5)
    with pytest.raises(ValueError, match="head.bias.*shape"):
        fc.save_training_state(f, params=params, opt_state=bad)
    with pytest.raises(ValueError, match="step must be >= 0"):
        fc.save_training_state(f, params=params, step=-1)
    with pytest.raises(TypeError, match="step"):
        fc.save_training_state(f, params=params, step=1.5)
    with pytest.raises(TypeError, match="cannot checkpoint"):
        fc.save_training_state(f, params=params, extra={"fn": print})
    assert os.listdir(tmp_path) == []


def test_failed_save_keeps_old_file(tmp_path):
    f = tmp_path / "c.pt"
    fc.save(f, {"v": torch.arange(4)})
    with pytest.raises(TypeError):
        fc.save(f, {"v": torch.arange(4), "bad": object()})
    assert torch.equal(fc.load(f)["v"], torch.arange(4))
    assert os.listdir(tmp_path) == ["c.pt"]


def test_not_a_training_state(tmp_path):
    fc.save(tmp_path / "plain.pt", {"w": torch.ones(1)})
    with pytest.raises(ValueError, match="not a training state"):
        fc.load_training_state(tmp_path / "plain.pt")


# -- code-free loading ---------------------------------------------------------------------
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("fmt", ["torch", "pickle2", "pickle5"])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_is_refused_without_running(tmp_path, fmt):
    marker = str(tmp_path / "pwned")
    f = tmp_path / "evil.pt"
    payload = {"__funcurriculum__": "checkpoint", "format": 1, "obj": _Evil(marker)}
    if fmt == "torch":
        torch.save(payload, f)
    else:
        with open(f, "wb") as fh:
            pickle.dump(payload, fh, protocol=int(fmt[-1]))
    reason = "mkdir"
    with pytest.raises(ValueError, match=rf"refusing to load.*{reason}") as err:
        fc.load(f)
    assert "weights_only=False unless you trust" in str(err.value)
    with pytest.raises(ValueError, match="refusing to load"):
        fc.load_training_state(f)
    assert not os.path.exists(marker)


def test_corrupt_files_are_refused(tmp_path):
    good = tmp_path / "good.pt"
    fc.save(good, {"w": torch.ones(1000)})
    data = good.read_bytes()
    for name, content in [("trunc", data[: len(data) // 2]), ("empty", b""), ("junk", b"hello")]:
        f = tmp_path / f"{name}.pt"
        f.write_bytes(content)
        with pytest.raises(ValueError, match="not a readable checkpoint"):
            fc.load(f)
    torch.save({"w": torch.ones(1)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a funcurriculum checkpoint"):
        fc.load(tmp_path / "foreign.pt")
    with pytest.raises(FileNotFoundError):
        fc.load(tmp_path / "missing.pt")


def test_saved_file_has_normal_permissions(tmp_path):
    f = tmp_path / "c.pt"
    fc.save(f, {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(f).st_mode & 0o777 == 0o666 & ~umask
    os.chmod(f, 0o640)
    fc.save(f, {"a": 2})
    assert os.stat(f).st_mode & 0o777 == 0o640  # an overwrite keeps the file's mode


# -- rotation ------------------------------------------------------------------------------
def test_keep_last_rotation(tmp_path):
    params = make_params()
    pattern = str(tmp_path / "run-{step}.pt")
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "run-best.pt").write_bytes(b"not matched")
    written = [
        fc.save_training_state(pattern, params=params, step=s, keep_last=3)
        for s in (1, 2, 9, 10, 100)
    ]
    assert written[-1] == str(tmp_path / "run-100.pt")
    names = sorted(os.listdir(tmp_path))
    assert names == ["notes.txt", "run-10.pt", "run-100.pt", "run-9.pt", "run-best.pt"]
    assert [os.path.basename(p) for p in fc.checkpoint_files(pattern)] == [
        "run-9.pt",
        "run-10.pt",
        "run-100.pt",
    ]
    assert fc.latest_checkpoint(pattern) == str(tmp_path / "run-100.pt")
    assert fc.load_training_state(fc.latest_checkpoint(pattern)).step == 100


def test_rotation_with_epoch_and_format_spec(tmp_path):
    params = {"w": torch.zeros(1)}
    pattern = str(tmp_path / "e{epoch:03d}-s{step:06d}.pt")
    for e, s in [(0, 5), (1, 10), (2, 15)]:
        fc.save_training_state(pattern, params=params, step=s, epoch=e, keep_last=1)
    assert os.listdir(tmp_path) == ["e002-s000015.pt"]


def test_rotation_bad_patterns(tmp_path):
    params = {"w": torch.zeros(1)}
    with pytest.raises(ValueError, match="needs a path pattern"):
        fc.save_training_state(tmp_path / "fixed.pt", params=params, keep_last=2)
    with pytest.raises(ValueError, match=r"\{run\}"):
        fc.save_training_state(str(tmp_path / "x{run}.pt"), params=params)
    with pytest.raises(ValueError, match="keep_last"):
        fc.save_training_state(str(tmp_path / "x{step}.pt"), params=params, keep_last=0)
    with pytest.raises(ValueError, match="only in the file name"):
        fc.save_training_state(str(tmp_path / "r{step}" / "x{step}.pt"), params=params)
    assert os.listdir(tmp_path) == []
    assert fc.latest_checkpoint(str(tmp_path / "nothing{step}.pt")) is None
    assert fc.latest_checkpoint(str(tmp_path / "missing_dir" / "x{step}.pt")) is None


# -- crash safety --------------------------------------------------------------------------
def test_sigkill_during_save_keeps_previous_checkpoint(tmp_path):
    target = tmp_path / "ckpt.pt"
    old = {"w": torch.arange(1000, dtype=torch.float32)}
    fc.save_training_state(target, params=old, step=1)
    n = 100_000_000  # 400 MB of float32
    code = textwrap.dedent(
        f"""
        import torch, funcurriculum as fc
        big = {{"w": torch.ones({n})}}
        fc.save_training_state({str(target)!r}, params=big, step=2)
        print("finished", flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    temps = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            temps = [n for n in os.listdir(tmp_path) if n.startswith(".tmp-fc-")]
            if temps:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.001)
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate()[0]
    assert temps, f"the temp file never appeared (child output {out!r})"
    assert proc.returncode == -signal.SIGKILL
    assert b"finished" not in out
    # the killed write left its temp file, which is not the target and not a rotation match
    assert os.path.exists(tmp_path / temps[0])
    ts = fc.load_training_state(target, like_params=old)
    assert ts.step == 1
    assert torch.equal(ts.params["w"], old["w"])
    assert fc.checkpoint_files(str(tmp_path / "ckpt{step}.pt")) == []
    # the next save into the folder removes the dead writer's temp file (and only it)
    fc.save_training_state(target, params=old, step=3)
    assert not os.path.exists(tmp_path / temps[0])
