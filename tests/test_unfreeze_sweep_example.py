"""examples/unfreeze_sweep.py runs (fast settings) and prints the table it claims."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn", reason="the examples need the [examples] extra (scikit-learn)")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str):
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_unfreeze_sweep_table_and_equivalence(capsys, tmp_path, monkeypatch):
    mod = load_example("unfreeze_sweep")
    monkeypatch.setattr(mod, "OUT", tmp_path / "outputs")
    threads = torch.get_num_threads()
    res = mod.main(["--fast", "--no-progress"])
    out = capsys.readouterr().out
    assert torch.get_num_threads() == threads
    rows = res["rows"]
    assert [r["member"] for r in rows] == list(range(len(rows))) and len(rows) >= 6
    steps = [r["unfreeze_step"] for r in rows]
    assert steps[0] == 0 and steps[-1] == "never" and steps[1:-1] == sorted(steps[1:-1])
    header = out.splitlines()[0].split("|")
    assert [h.strip() for h in header] == [
        "member", "unfreeze step", "backbone coeff", "acc (sweep)", "acc (alone)",
    ]  # fmt: skip
    assert len([ln for ln in out.splitlines() if ln.count("|") == 4]) == len(rows) + 1
    for r in rows:  # each member of the sweep equals its schedule run alone
        assert 0.0 <= r["acc_sweep"] <= 1.0
        assert abs(r["acc_sweep"] - r["acc_alone"]) <= 0.01
    assert rows[0]["acc_sweep"] > rows[-1]["acc_sweep"]  # unfreezing early helps here
    assert "faster" in out and res["speedup"] > 0
    # the never-unfrozen member's backbone did not move
    for k, v in res["params"].items():
        if k.startswith("backbone."):
            assert torch.equal(v[-1], res["start"][k][-1])
    assert res["plot"] is not None and res["plot"].exists()
