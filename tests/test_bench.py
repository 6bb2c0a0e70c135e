"""The benchmark suites (bench/) run as pytest-benchmark suites at smoke scale: every peer of every
group runs and agrees with its check, the JSON goes only where asked (the working tree stays as it
was), bench/report.py turns it into tables whose ratios are the JSON's, and a saved run can be
compared with a later one (--benchmark-compare)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import report


def git_status() -> str | None:
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60, check=False)
    except OSError:
        return None
    return out.stdout if out.returncode == 0 else None


def pytest_bench(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.mark.slow
def test_every_suite_runs_and_reports_its_ratios(tmp_path):
    before = git_status()
    out = tmp_path / "run.json"
    storage = f"file://{tmp_path / 'storage'}"
    done = pytest_bench("bench/", "--bench-scale", "smoke", "--bench-dir", str(tmp_path / "cache"),
                        f"--benchmark-json={out}", "--benchmark-autosave", f"--benchmark-storage={storage}", "-q")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert git_status() == before, "a benchmark run changed the working tree"

    run = json.loads(out.read_text())
    groups: dict[str, list[dict]] = {}
    for b in run["benchmarks"]:
        groups.setdefault(b["group"], []).append(b)
    assert {"extract", "finetune snnet", "finetune stitches-only", "probes", "reader sequential",
            "reader + compute"} <= set(groups)
    assert any(g.startswith("theta cifar") for g in groups)
    for group, entries in groups.items():
        peers = [e["extra_info"]["peer"] for e in entries]
        assert entries[0]["extra_info"]["baseline"] in peers, f"{group}: its baseline did not run"
        paired = len(entries) == 1 and "ratio_median" in entries[0]["extra_info"]  # its peers timed inside one entry
        assert len(peers) >= 2 or paired, f"{group}: nothing to compare"
    interleaved = groups["extract, interleaved"][0]["extra_info"]
    assert interleaved["pairs"] == 2
    assert interleaved["ratio_low"] <= interleaved["ratio_median"] <= interleaved["ratio_high"]

    text = report.render(report.load_run(out))
    assert "scale smoke (not for quoting)" in text
    probes = {e["extra_info"]["peer"]: e["stats"]["min"] for e in groups["probes"]}
    row = next(line for line in text.splitlines() if line.startswith("| joint |"))
    ratio = float(re.search(r"\| ([0-9.]+)x \|", row).group(1))
    assert ratio == pytest.approx(probes["naive"] / probes["joint"], rel=0.01, abs=0.006)

    compared = pytest_bench("bench/bench_kl.py", "-k", "cifar and (native or torch)", "--bench-scale", "smoke",
                            f"--benchmark-storage={storage}", "--benchmark-compare", "-q")
    assert compared.returncode == 0, compared.stdout[-3000:] + compared.stderr[-3000:]
    assert "0001" in compared.stdout and "NOW" in compared.stdout, compared.stdout[-3000:]
    assert git_status() == before


def test_report_refuses_what_is_not_a_run(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert report.main([str(bad)]) == 2
    assert "not a JSON file" in capsys.readouterr().err
    bad.write_text(json.dumps({"benchmarks": [{"name": "x", "stats": {"min": "1", "median": 1}}]}))
    assert report.main([str(bad)]) == 2
    assert "stats.min is '1', not a number" in capsys.readouterr().err
    bad.write_text(json.dumps({"machine_info": {}}))
    assert report.main([str(bad)]) == 2
    assert "--benchmark-json" in capsys.readouterr().err
    assert report.main([str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_report_ratios_and_rates(tmp_path):
    run = {"datetime": "2026-01-01T00:00:00", "commit_info": {"id": "abcdef123", "dirty": False},
           "machine_info": {"python_version": "3.11", "klas": {"cpu": "CPU X", "cores": 2, "torch_threads": 2}},
           "benchmarks": [
               {"name": "a", "group": "g", "stats": {"min": 2.0, "median": 2.5, "rounds": 3},
                "extra_info": {"peer": "slow", "baseline": "slow", "work": 10, "work_unit": "images", "floor_s": 0.5}},
               {"name": "b", "group": "g", "stats": {"min": 0.5, "median": 0.6, "rounds": 3},
                "extra_info": {"peer": "fast", "baseline": "slow", "work": 10, "work_unit": "images",
                               "floor_s": 0.5, "max_error": 2e-6}}]}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run))
    text = report.render(report.load_run(path), "T")
    assert "commit abcdef1, CPU X, 2 cores" in text
    assert "| slow | 2 | 2.5 | 3 | 1.00x | 5 | 25.0% | - |" in text
    assert "| fast | 0.5 | 0.6 | 3 | 4.00x | 20 | 100.0% | 2.0e-06 |" in text


def test_interleaved_rounds_rotate_the_order_and_pair_the_ratios():
    from common import interleaved_seconds, paired_ratios

    calls = []

    def peer(name, seconds):
        def run():
            calls.append(name)
            return seconds
        return run

    got = interleaved_seconds({"a": peer("a", 2.0), "b": peer("b", 1.0), "c": peer("c", 4.0)}, rounds=3)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert got == {"a": [2.0] * 3, "b": [1.0] * 3, "c": [4.0] * 3}

    ratios = paired_ratios([2.0, 3.0, 4.0], [1.0, 4.0, 2.0])  # round by round: 2, 0.75, 2
    assert ratios["ratio_median"] == pytest.approx(2.0)
    assert (ratios["ratio_low"], ratios["ratio_high"], ratios["pairs"]) == (0.75, 2.0, 3)
    assert (ratios["baseline_median_s"], ratios["peer_median_s"]) == (3.0, 2.0)
    with pytest.raises(ValueError):
        paired_ratios([1.0, 2.0], [1.0])
