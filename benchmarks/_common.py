"""Shared helpers for the benchmark scripts: timing, JSON lines, machine description."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def base_parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (first is warm-up)")
    ap.add_argument("--iters", type=int, default=3, help="timed calls per case per round")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave)")
    return ap


def setup(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)


def machine(device: str) -> dict:
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "device": device,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def interleaved(
    cases: dict[str, Callable[[], None]], rounds: int, iters: int, device: str
) -> dict[str, list[float]]:
    """Time every case ``iters`` times per round, rounds interleaved so that background
    noise hits all cases alike; the first round is a warm-up and is dropped.
    Returns seconds per call, per case."""
    times: dict[str, list[float]] = {k: [] for k in cases}
    for r in range(rounds):
        for name, fn in cases.items():
            for _ in range(iters):
                sync(device)
                t0 = time.perf_counter()
                fn()
                sync(device)
                if r > 0 or rounds == 1:
                    times[name].append(time.perf_counter() - t0)
    return times


def summary(ts: list[float]) -> dict:
    return {
        "median_ms": round(statistics.median(ts) * 1e3, 3),
        "min_ms": round(min(ts) * 1e3, 3),
        "n": len(ts),
    }


def paired_ratio(ta: list[float], tb: list[float], iters: int) -> float:
    """Median over rounds of (median time of ``a`` / median time of ``b``) in that round.

    ``ta`` and ``tb`` come from ``interleaved`` (``iters`` calls per round, in round
    order): both cases of a ratio ran within seconds of each other, so a slow drift of
    the machine between rounds cancels out."""
    rounds = min(len(ta), len(tb)) // max(iters, 1)
    per_round = [
        statistics.median(ta[k * iters : (k + 1) * iters])
        / statistics.median(tb[k * iters : (k + 1) * iters])
        for k in range(rounds)
    ]
    return statistics.median(per_round)


def has_fused(optim_cls: type, device: str, **hp: object) -> bool:
    """Whether this torch has a ``fused=True`` kernel of ``optim_cls`` for ``device``."""
    try:
        p = torch.zeros(2, device=device, requires_grad=True)
        p.grad = torch.zeros(2, device=device)
        optim_cls([p], lr=1e-3, fused=True, **hp).step()
        return True
    except Exception:  # noqa: BLE001 (a torch without this fused kernel)
        return False
