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


def test_two_jobs_at_once_the_script_and_plain_srun_each_give_the_results_of_one_process(
        cluster, one_process, tmp_path, shapes_dir):
    """Two jobs on one node at the same time, each on its own rendezvous port: the shipped script
    (2 torchrun ranks) and `srun -n 2 python -m klas run` without torchrun, whose tasks take their
    ranks from SLURM_PROCID / SLURM_STEP_NUM_TASKS and their port from the job id."""
    from klas.distributed import port_for_job

    script_config = write_run_config(tmp_path / "script", shapes_dir)
    plain_config = write_run_config(tmp_path / "plain", shapes_dir)
    plain = tmp_path / "plain.sh"
    plain.write_text(f"#!/bin/bash\nsrun -n 2 {sys.executable} -m klas run {plain_config}\n")
    logs = tmp_path / "script.log", tmp_path / "plain.log"
    jobs = [cluster.sbatch(SCRIPT, "-o", str(logs[0]), "--cpus-per-task=2", "--time=30",
                           script_args=(str(script_config),), env={**JOB_ENV, "KLAS_PROCS_PER_NODE": "2"}),
            cluster.sbatch(plain, "-n", "2", "-o", str(logs[1]), "--time=30", env=JOB_ENV)]
    infos = [cluster.wait(job, 1200) for job in jobs]
    for info, log, config in zip(infos, logs, (script_config, plain_config)):
        assert info["JobState"] == "COMPLETED", _log(log)[-4000:]
        assert_same_results(one_process, config.parent / "out")
    assert json.loads((plain_config.parent / "out" / "cache" / ".klas-stage.json").read_text())["ranks"] == 2
    assert "[ranks] 2 ranks; global batch sizes" in _log(logs[1])
    script_port = int(re.search(r"rendezvous \S+:(\d+)", _log(logs[0])).group(1))
    assert script_port == port_for_job(jobs[0]) != port_for_job(jobs[1], 0)
    a, b = infos
    assert a["StartTime"] < b["EndTime"] and b["StartTime"] < a["EndTime"], infos  # they overlapped
