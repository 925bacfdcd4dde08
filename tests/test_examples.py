"""The examples run (fast settings) and produce what they claim, so they cannot rot."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import funcurriculum as fc

pytest.importorskip("sklearn", reason="the examples need the [examples] extra (scikit-learn)")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def load_example(name: str):
    """Import ``examples/<name>.py`` as a module (examples/ on sys.path for their imports)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# -- transfer_curriculum (the README's main example) -----------------------------------------
@pytest.fixture(scope="module")
def transfer():
    return load_example("transfer_curriculum")


def test_transfer_curriculum_table(transfer, tmp_path, capsys):
    """--fast: every method on every seed, a mean/std/min/max table, the plot."""
    threads = torch.get_num_threads()
    plot = tmp_path / "t.png"
    res = transfer.main(["--fast", "--no-progress", "--plot", str(plot)])
    out = capsys.readouterr().out
    assert torch.get_num_threads() == threads  # the example restores the thread count
    assert list(res["finals"]) == list(transfer.METHODS)
    for m in transfer.METHODS:
        assert len(res["finals"][m]) == 2  # --fast: 2 seeds
        assert all(0.0 <= a <= 1.0 for a in res["finals"][m])
        assert all(len(c) == 60 // 10 + 1 for c in res["curves"][m])  # step 0, every 10
    lines = out.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("method"))
    assert lines[head].split() == ["method", "mean", "acc", "std", "min", "max"]
    assert set(lines[head + 1]) == {"-"}
    for m, row in zip(transfer.METHODS, lines[head + 2 : head + 5]):
        assert row.startswith(m)
        assert len(row[len(m) :].split()) == 4 and all(v.endswith("%") for v in row.split()[-4:])
    assert "curriculum - scratch:" in out and "curriculum - naive fine-tuning:" in out
    if importlib.util.find_spec("matplotlib") is not None:
        assert res["plot"] == plot and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_transfer_curriculum_schedule(transfer):
    """Probe first (backbone frozen), then fc3, fc2, fc1 released; LLRD coefficients."""
    import argparse

    params = transfer.fresh_params(0)
    args = argparse.Namespace(decay=0.5, probe=40, every=30)
    s = transfer.curriculum_schedule(params, args)
    assert s.at(step=39).frozen == frozenset({"backbone"})
    assert s.at(step=40).frozen == frozenset({"backbone.fc1", "backbone.fc2"})
    assert s.at(step=99).frozen == frozenset({"backbone.fc1"})
    assert not s.at(step=100).frozen
    c = s.at(step=100).coeffs
    assert c["head.weight"] == 1.0 and c["backbone.fc3.bias"] == 0.5
    assert c["backbone.fc1.weight"] == 0.125


@pytest.mark.slow
def test_transfer_curriculum_beats_scratch_default_settings(transfer, capsys):
    """The README's claim: defaults, seeds 0-4, the curriculum's mean beats scratch by more
    than the seed spread (and beats naive fine-tuning)."""
    res = transfer.main(["--no-progress", "--plot", ""])
    capsys.readouterr()
    f = res["finals"]
    assert len(f["curriculum"]) == 5
    cur = torch.tensor(f["curriculum"])
    scr = torch.tensor(f["scratch"])
    naive = torch.tensor(f["naive fine-tuning"])
    assert cur.mean() - scr.mean() > max(cur.std(), scr.std())
    assert cur.mean() > naive.mean()


def test_transfer_curriculum_command_line(tmp_path):
    """The README's main command (with --fast), as a fresh process: phase changes shown."""
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / "transfer_curriculum.py"), "--fast",
         "--plot", str(tmp_path / "p.png")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "phase change at step 20: unfroze ['backbone.fc3']" in r.stdout
    assert "curriculum - scratch:" in r.stdout
    assert "\r" not in r.stderr  # no progress bar off a TTY


# -- digits_transfer (the mechanics, step by step) --------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return load_example("digits_transfer")


def test_digits_transfer_phases(digits, capsys):
    threads = torch.get_num_threads()
    res = digits.main(["--fast", "--no-progress"])
    out = capsys.readouterr().out
    assert torch.get_num_threads() == threads  # the example restores the thread count
    # 5 classes per task: chance is 20%.
    assert res["pretrain_acc"] > 0.9
    assert res["head_acc"] > 0.3
    assert res["finetune_acc"] > res["head_acc"]  # unfreezing the backbone helps
    assert res["scratch_acc"] > 0.5
    # LLRD: the head at 1.0, each backbone layer towards the input x0.5
    cur = res["curriculum"]
    assert not cur.frozen
    c = cur.coeffs
    assert c["head.weight"] == 1.0
    assert c["backbone.fc3.weight"] == 0.5
    assert c["backbone.fc2.bias"] == 0.25
    assert c["backbone.fc1.weight"] == 0.125
    for phase in ("pretrain (0-4)", "head only (5-9)", "finetune LLRD (5-9)", "scratch (5-9)"):
        assert phase in out
    assert "transfer (head + finetune)" in out


def test_digits_transfer_frozen_backbone_is_untouched(digits):
    """The head phase's building block: frozen leaves stay bit-identical, the head moves."""
    _, _, tgt_train, _ = digits.load_data(5, 0)
    params = digits.fresh_params(0)
    cur = fc.Curriculum(params).freeze("backbone")
    opt = fc.adam(1e-2)
    state = opt.init(params, cur.masks)
    new, state, loss, steps = digits.train(
        params, opt, state, cur, tgt_train, 2, 16, 0, "test", bar=False
    )
    assert steps == 4 and loss > 0
    for k in params:
        moved = not torch.equal(params[k], new[k])
        assert moved == k.startswith("head."), k
    # frozen leaves hold no Adam moments
    assert state["exp_avg"]["backbone.fc1.weight"].numel() == 0
    assert state["exp_avg"]["head.weight"].shape == params["head.weight"].shape


def test_digits_transfer_command_line():
    """The README's main command (with --fast), as a fresh process."""
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / "digits_transfer.py"), "--fast", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    assert "scratch (5-9)" in r.stdout and "finetune LLRD (5-9)" in r.stdout


# -- vmap_sweep ---------------------------------------------------------------------------------
def test_vmap_sweep_matches_a_loop_of_torch_optim(capsys):
    sweep = load_example("vmap_sweep")
    res = sweep.main(["--fast", "--no-progress"])
    out = capsys.readouterr().out
    coeffs = res["coefficients"]
    assert len(coeffs) == 32
    # Over 40 Adam steps float round-off can flip a ReLU here and there (Adam amplifies
    # near-zero gradients), so compare outcomes: the same accuracies, and nearly every
    # member's params close to its torch.optim twin.
    assert (res["acc_vmap"] - res["acc_loop"]).abs().max() <= 0.02
    close = 0
    for i, model in enumerate(res["looped"]):
        close += all(
            torch.allclose(res["stacked"][n][i], p.detach(), rtol=1e-3, atol=1e-4)
            for n, p in model.named_parameters()
        )
    assert close >= 28
    # A real sweep: tiny coefficients barely learn, the best one learns well.
    assert res["acc_vmap"][0] < 0.5
    assert res["acc_vmap"].max() > 0.85
    assert 0.1 < res["best_coefficient"] <= 100
    assert "best coefficient" in out and "torch.optim.Adam" in out
    assert "showing 10 of 32 members" in out  # the table is a subset, and says so
    assert re.search(r"over all 32 members: \d+\.\d%", out)  # percent, like the table


def test_vmap_sweep_first_steps_equal_torch_optim_per_member():
    """A few steps: every member equals its own torch.optim.Adam(lr * coefficient)."""
    sweep = load_example("vmap_sweep")
    train, _ = sweep.load_data(0)
    torch.manual_seed(0)
    models = [sweep.make_model() for _ in range(6)]
    coeffs = torch.tensor([0.0, 0.1, 0.5, 1.0, 3.0, 10.0])
    idx = sweep.batches(len(train[0]), 32, 5, 0)
    stacked, _ = sweep.sweep_vmap(models, coeffs, 1e-3, train, idx, bar=False)
    looped, _ = sweep.sweep_loop(models, coeffs, 1e-3, train, idx, bar=False)
    for i, model in enumerate(looped):
        for n, p in model.named_parameters():
            torch.testing.assert_close(stacked[n][i], p.detach(), rtol=1e-4, atol=1e-5)
    # coefficient 0: the member did not move
    for n, p in models[0].named_parameters():
        assert torch.equal(stacked[n][0], p.detach())


# -- resume ---------------------------------------------------------------------------------------
def test_resume_is_bit_exact(tmp_path, capsys):
    resume = load_example("resume")
    res = resume.main(["--fast", "--no-progress", "--ckpt-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert res["same_params"] and res["same_state"] and res["same_curriculum"]
    # the crash happened in epoch 2 (after the unfreeze), resuming from the epoch-2 file
    assert res["resumed_from_epoch"] == 2
    assert res["resumed_from_step"] < res["crash_at"]
    assert res["val_acc"] > 0.6  # 10 classes: chance is 10%
    assert res["checkpoints"] == ["run-epoch003.pt", "run-epoch004.pt"]  # keep_last=2
    assert "params True, optimizer state True" in out


def test_resume_helpers_detect_a_difference():
    resume = load_example("resume")
    a = {"w": torch.zeros(2), "s": {"m": torch.ones(1)}}
    assert resume.same_tree(a, {"w": torch.zeros(2), "s": {"m": torch.ones(1)}})
    assert not resume.same_tree(a, {"w": torch.zeros(2), "s": {"m": torch.ones(1) + 1e-7}})
    assert not resume.same_tree(a, {"s": {"m": torch.ones(1)}, "w": torch.zeros(2)})


# -- gradual_unfreeze ------------------------------------------------------------------------
def test_gradual_unfreeze(tmp_path, capsys):
    gradual = load_example("gradual_unfreeze")
    plot = tmp_path / "schedule.png"
    res = gradual.main(["--fast", "--no-progress", "--plot", str(plot)])
    out = capsys.readouterr().out
    assert res["same_as_gradual"]
    trainable = [r[1] for r in res["rows"]]
    # one stage released per epoch (layer4 first), then everything trainable
    assert all(a < b for a, b in zip(trainable[:6], trainable[1:6]))
    assert trainable[5:] == [trainable[5]] * len(trainable[5:])
    assert res["rows"][1][4].startswith("unfroze ['layer4")
    assert res["rows"][5][4] == "unfroze ['conv1']"
    assert res["stem_moved"]
    assert res["final_acc"] > 0.5  # 10 classes: chance is 10%
    if importlib.util.find_spec("matplotlib") is not None:
        assert res["plot"] == plot
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Freezer(name_starts_with=['layer4.']" in out


def test_gradual_unfreeze_torchvision_is_optional(tmp_path, capsys):
    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed: nothing to skip")
    gradual = load_example("gradual_unfreeze")
    assert gradual.main(["--fast", "--arch", "resnet18", "--plot", ""]) is None
    assert "needs torchvision" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["digits_transfer", "vmap_sweep", "resume", "gradual_unfreeze"])
def test_progress_bar_is_optional(name, monkeypatch):
    """Without tqdm installed the loops run bare; with it they get a bar."""
    mod = load_example(name)
    common = sys.modules["_common"]  # the examples share one progress() helper
    assert mod.progress is common.progress
    monkeypatch.setattr(common, "tqdm", None)
    r = range(3)
    assert mod.progress(r, "x") is r
    if importlib.util.find_spec("tqdm") is not None:
        monkeypatch.undo()
        assert mod.progress(r, "x", enabled=False) is r
        monkeypatch.setattr(common, "interactive", lambda: False)
        assert mod.progress(r, "x") is r  # no bar in a non-interactive log
        monkeypatch.setattr(common, "interactive", lambda: True)
        bar = mod.progress(r, "x")
        assert bar is not r and list(bar) == [0, 1, 2]


def test_hypergradient_lr_learns_coefficients(capsys):
    """Hypergradients through differentiable updates lower the validation loss."""
    res = load_example("hypergradient_lr").main(["--fast"])
    assert set(res["coeffs"]) == {"0", "2", "4"}
    assert res["end"] < res["start"]
    assert any(c != 1.0 for c in res["coeffs"].values())
    assert "learnt coefficients per layer" in capsys.readouterr().out
