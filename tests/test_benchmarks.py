"""Every benchmark script runs to its ratio line at a tiny size (no timings asserted).

A benchmark that raises is a figure nobody can reproduce: ``bench_update.py`` once chose
an engine eagerly for every case and raised before timing anything. Each script runs
here in a subprocess with tiny sizes and must exit 0 and print its JSON lines (``bench_checkpoint.py``: its table).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
FAST = ["--rounds", "2", "--iters", "1", "--device", "cpu"]
CASES = {
    "update_adam": [
        "bench_update.py",
        "--opt",
        "adam",
        "--extra",
        "--params",
        "4e4",
        "--leaves",
        "4",
        *FAST,
    ],
    "update_sgd": [
        "bench_update.py",
        "--opt",
        "sgd",
        "--generic",
        "--params",
        "4e4",
        "--leaves",
        "4",
        *FAST,
    ],
    "generic": ["bench_generic.py", "--params", "4e4", "--leaves", "4", *FAST],
    "catalogue": ["bench_catalogue.py", "--params", "4e4", "--leaves", "4", *FAST],
    "vmap": ["bench_vmap.py", "--members", "2", "--width", "8", *FAST],
    "sweep": ["bench_sweep.py", "--members", "2", "--steps", "4", "--width", "8", *FAST],
    "memory": ["bench_memory.py", "--params", "4e4", "--leaves", "10", "--steps", "1"],
    "checkpoint": ["bench_checkpoint.py", "--size-mb", "1", "--leaves", "4", "--repeat", "1"],
    "optax": ["bench_optax.py", "--params", "4e4", "--leaves", "4", *FAST],
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_benchmark_runs_at_a_tiny_size(case, tmp_path):
    script, *args = CASES[case]
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(BENCH.parent), os.environ.get("PYTHONPATH", "")]),
    )
    out = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip(), out.stderr[-3000:]
    lines = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
    assert lines or case == "checkpoint", out.stdout[-2000:]  # checkpoint prints a table
