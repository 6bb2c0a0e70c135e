"""Shared pieces of the benchmark suites: one way to time a peer, the machine's description.

Every benchmark is one *peer* of a *group*: the peers of a group do the same work and are timed
side by side in one pytest run; one of them is the group's baseline, and `bench/report.py` turns a
run's JSON into a table of each peer's speed relative to it (ratios are the claims on a CPU).
"""
from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> dict:
    """What the results depend on: the CPU, its cores, torch's threads, the GPU where one is used."""
    import torch

    info = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def best_seconds(fn, repeats: int = 3, sync=lambda: None) -> float:
    """Best wall seconds of `fn()` over `repeats` calls (`sync` before and after each: a device's queue)."""
    import time

    best = float("inf")
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def interleaved_seconds(peers: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds of every peer in each of `rounds` rounds, the peers taking turns within a round and
    the order rotated from round to round, so that the machine's drift (a neighbour's load, clock
    changes) falls on every peer alike. `peers` maps a name to a callable that runs the work once and
    returns the seconds it measured itself (so that its own setup and checks stay untimed)."""
    names = list(peers)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            seconds[name].append(float(peers[name]()))
    return seconds


def paired_ratios(baseline: list[float], peer: list[float]) -> dict:
    """The speed of `peer` relative to `baseline` round by round (baseline seconds / peer seconds of
    the same round: above 1 is faster): median, lowest and highest, and the rounds."""
    import statistics

    ratios = [b / p for b, p in zip(baseline, peer, strict=True)]
    return {"ratio_median": statistics.median(ratios), "ratio_low": min(ratios), "ratio_high": max(ratios),
            "pairs": len(ratios), "baseline_median_s": statistics.median(baseline),
            "peer_median_s": statistics.median(peer)}


def run_peer(benchmark, fn, *, group: str, peer: str, baseline: str, rounds: int, setup=None, teardown=None,
             warmup: bool = True, **extra):
    """Times `fn` as `peer` of `group` (best and median over `rounds`, after one untimed warm-up run
    unless `warmup` is False) and returns its last result. `baseline` names the group's reference
    peer; `extra` lands in the JSON beside the times: `work` and `work_unit` (amount done per run,
    reported as a rate), `floor_s` (a lower bound on the time, reported as the fraction reached),
    and anything else the report should show (errors, sizes)."""
    benchmark.group = group
    benchmark.extra_info.update(peer=peer, baseline=baseline, **extra)
    return benchmark.pedantic(fn, setup=setup, teardown=teardown, rounds=rounds,
                              warmup_rounds=1 if warmup else 0, iterations=1)
