"""klas on a real SLURM scheduler (one node, started by the test): the shipped sbatch script with
torchrun ranks, plain `srun -n 2` without torchrun, a job requeued by the time-limit signal and
resumed, and two jobs on one node at once; each run's results equal one plain process's.

Skipped, with the reason, where SLURM's packages are not installed or the tests do not run as root.
"""
from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest

from ranks_common import assert_same_results, write_run_config
from slurm_cluster import missing, start_cluster

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "examples" / "slurm_klas_run.sh"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(missing()), reason=missing() or "-")]

JOB_ENV = {"KLAS_PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = start_cluster(tmp_path_factory.mktemp("slurm"))
    yield c
    c.stop()


def _log(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def test_plain_srun_takes_its_ranks_from_slurm(cluster, one_process, tmp_path, shapes_dir):
    """`srun -n 2 python -m klas run` (no torchrun): two ranks from SLURM_PROCID / SLURM_STEP_NUM_TASKS."""
    config = write_run_config(tmp_path, shapes_dir)
    script = tmp_path / "job.sh"
    script.write_text(f"#!/bin/bash\nsrun -n 2 {sys.executable} -m klas run {config} --quiet\n")
    log = tmp_path / "job.log"
    job = cluster.sbatch(script, "-n", "2", "-o", str(log), "--time=20", env=JOB_ENV)
    info = cluster.wait(job, 900)
    assert info["JobState"] == "COMPLETED", _log(log)[-4000:]
    out = config.parent / "out"
    assert_same_results(one_process, out)
    assert json.loads((out / "cache" / ".klas-stage.json").read_text())["ranks"] == 2


def test_the_sbatch_script_requeued_by_its_time_limit_signal_resumes_to_the_same_results(
        cluster, one_process, tmp_path, shapes_dir):
    """The shipped script, 2 torchrun ranks: SLURM's time-limit signal (USR1 to the batch shell,
    sent here by scancel once finetuning has checkpointed, as SLURM sends it --signal's seconds
    before the limit) makes the script requeue the job, which starts again and resumes."""
    config = write_run_config(tmp_path, shapes_dir)
    log = tmp_path / "job.log"
    job = cluster.sbatch(SCRIPT, "-o", str(log), "--cpus-per-task=2", "--time=30", script_args=(str(config),),
                         env={**JOB_ENV, "KLAS_PROCS_PER_NODE": "2"})
    checkpoint = config.parent / "out" / "methods" / "klas" / "snnet" / "supernet" / "checkpoint.pt"
    deadline = time.time() + 900
    while not checkpoint.exists() and time.time() < deadline:
        assert cluster.job(job)["JobState"] in ("PENDING", "RUNNING"), _log(log)[-4000:]
        time.sleep(0.2)
    assert checkpoint.exists(), _log(log)[-4000:]
    shards = sorted((config.parent / "out" / "cache").glob("*/train/shard-*.bin"))
    written = {p: p.stat().st_mtime_ns for p in shards}
    cluster.control("scancel", "--batch", "--signal=USR1", str(job))
    info = cluster.wait(job, 900)
    text = _log(log)
    assert info["JobState"] == "COMPLETED" and int(info["Restarts"]) == 1, text[-4000:]
    assert "requeueing job" in text and "(restart 1)" in text, text[-4000:]
    assert shards and {p: p.stat().st_mtime_ns for p in shards} == written  # extraction resumed, not redone
    assert_same_results(one_process, config.parent / "out")


def test_two_jobs_on_one_node_at_once_use_their_own_ports(cluster, one_process, tmp_path, shapes_dir):
    jobs = []
    for name in ("a", "b"):
        config = write_run_config(tmp_path / name, shapes_dir)
        log = tmp_path / f"{name}.log"
        jobs.append((cluster.sbatch(SCRIPT, "-o", str(log), "--cpus-per-task=2", "--time=30",
                                    script_args=(str(config),), env={**JOB_ENV, "KLAS_PROCS_PER_NODE": "2"}), config, log))
    infos = [cluster.wait(job, 1200) for job, _, _ in jobs]
    for info, (_, config, log) in zip(infos, jobs):
        assert info["JobState"] == "COMPLETED", _log(log)[-4000:]
        assert_same_results(one_process, config.parent / "out")
    ports = [re.search(r"rendezvous \S+:(\d+)", _log(log)).group(1) for _, _, log in jobs]
    assert ports[0] != ports[1]
    a, b = infos
    assert a["StartTime"] < b["EndTime"] and b["StartTime"] < a["EndTime"], infos  # they overlapped
