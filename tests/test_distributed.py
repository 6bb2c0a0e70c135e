"""torchrun: ranks share work without changing results; a rank that dies ends the job at once.

The end-to-end tests run `klas run` once in one plain process and under torchrun with 2 gloo ranks
(CIFAR-10 subset and the shared ResNet-20/32 when the shared folder is present, else a generated
image set and two small random-weight ResNets), then compare caches, Θ, selections and accuracies.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ranks_common import assert_same_results, write_run_config
from klas.cache.reader import batch_share, row_ranges
from klas.distributed import even_share


def _stream(ranges):
    return np.concatenate([np.arange(s, s + n) for s, n in ranges]) if ranges else np.zeros(0, dtype=int)


@pytest.mark.parametrize("n, batch_size, world_size, chunk", [(1000, 64, 2, 256), (1001, 96, 3, 37),
                                                              (130, 64, 4, 256), (5, 8, 4, 3), (300, 60, 1, 7)])
def test_batch_share_splits_every_one_process_batch(n, batch_size, world_size, chunk):
    order = _stream(row_ranges(n, shuffle=True, seed=4, epoch=1, chunk_rows=chunk))
    shares = [_stream(batch_share(row_ranges(n, shuffle=True, seed=4, epoch=1, chunk_rows=chunk), batch_size, r,
                                  world_size)) for r in range(world_size)]
    b = batch_size // world_size
    for t in range(-(-n // batch_size)):
        step = np.concatenate([s[t * b:(t + 1) * b] for s in shares])
        np.testing.assert_array_equal(step, order[t * batch_size:(t + 1) * batch_size])
    assert sum(len(s) for s in shares) == n


def test_batch_share_needs_a_multiple_of_the_ranks():
    with pytest.raises(ValueError, match="multiple of the number of ranks 3"):
        batch_share([(0, 10)], 64, 0, 3)


def test_even_share_covers_every_item_once():
    for n, w in [(10, 3), (2, 4), (0, 2), (7, 1)]:
        parts = [even_share(n, r, w) for r in range(w)]
        assert [s for s, _ in parts] == list(np.cumsum([0] + [c for _, c in parts])[:-1])
        assert sum(c for _, c in parts) == n and max(c for _, c in parts) - min(c for _, c in parts) <= 1


def test_slurm_step_tasks_get_torchruns_variables_and_nothing_else_does():
    from klas.distributed import port_for_job, slurm_step_ranks

    step = {"SLURM_STEP_ID": "0", "SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "4", "SLURM_NTASKS": "4",
            "SLURM_LOCALID": "1", "SLURM_JOB_ID": "123", "SLURM_STEP_NODELIST": "node7,node8"}
    assert slurm_step_ranks(step) == {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "node7",
                                      "MASTER_PORT": str(port_for_job(123, 0))}
    assert slurm_step_ranks({**step, "SLURM_STEP_NODELIST": "gpu[03-05,9]"})["MASTER_ADDR"] == "gpu03"
    assert slurm_step_ranks({**step, "MASTER_PORT": "29999"})["MASTER_PORT"] == "29999"
    assert slurm_step_ranks({**step, "RANK": "0", "WORLD_SIZE": "2"}) is None  # torchrun's own variables win
    assert slurm_step_ranks({k: v for k, v in step.items() if k != "SLURM_STEP_ID"}) is None  # the batch script
    assert slurm_step_ranks({**step, "SLURM_STEP_NUM_TASKS": "1"}) is None  # one task: one process
    assert slurm_step_ranks({**step, "SLURM_PROCID": "x"}) is None
    ports = {port_for_job(j, s) for j in range(1000, 1100) for s in range(2)}
    assert len(ports) == 200 and all(20000 <= p < 60000 for p in ports)


# -- end to end -------------------------------------------------------------------------------------

def _torchrun(config: Path, ranks: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
           "-m", "klas", "run", str(config), "--quiet"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> str:
    output = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, output[-4000:]
    return output


@pytest.mark.slow
def test_two_ranks_give_the_results_of_one_process(one_process, tmp_path, shapes_dir):
    config = write_run_config(tmp_path, shapes_dir)
    output = _finish(_torchrun(config, 2))
    out = config.parent / "out"
    assert_same_results(one_process, out)
    marker = json.loads((out / "cache" / ".klas-stage.json").read_text())
    assert marker["ranks"] == 2
    assert output.count("[extract] running") == 1  # rank 0 alone reports
    assert "[ranks] 2 ranks; global batch sizes: adapt 64 (32 per rank)" in output
    assert "finetune 16 (8 per rank)" in output or "finetune 8 (4 per rank)" in output
    ranks = json.loads((out / "timings.json").read_text())["ranks"]  # and recorded in the run
    assert ranks["ranks"] == 2 and ranks["learning_rates_rescaled"] is False
    assert all(ranks["batch_sizes_per_rank"][k] * 2 == b for k, b in ranks["global_batch_sizes"].items())


def _worker_pids(launcher: int) -> dict[int, int]:
    """rank -> pid of torchrun's worker processes."""
    found = {}
    for task in Path(f"/proc/{launcher}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for item in env:
                if item.startswith(b"RANK="):
                    found[int(item[5:])] = int(child)
    return found


def _kill_rank_when(proc: subprocess.Popen, rank: int, ready, what: str) -> float:
    deadline = time.time() + 600
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"the job ended before {what}"
    pid = _worker_pids(proc.pid)[rank]
    os.kill(pid, signal.SIGKILL)
    return time.time()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds torchrun's workers through /proc")
def test_a_rank_that_dies_fails_the_job_fast_and_a_rerun_finishes_it(one_process, tmp_path, shapes_dir):
    """SIGKILL rank 1 while it extracts, then again while it finetunes: each time torchrun stops
    the job within seconds and names the rank; the run started again resumes and ends with the
    results of one process."""
    config = write_run_config(tmp_path, shapes_dir)
    out = config.parent / "out"
    stages = [
        ("extracting", lambda: any(out.glob("cache/*/train/progress-1-of-2.json"))),
        ("finetuning", lambda: (out / "methods/klas/snnet/supernet/checkpoint.pt").exists()),
    ]
    for what, ready in stages:
        proc = _torchrun(config, 2)
        killed_at = _kill_rank_when(proc, 1, ready, what)
        output = proc.communicate(timeout=120)[0]
        waited = time.time() - killed_at
        assert proc.returncode != 0
        assert waited < 60, f"the job took {waited:.0f} s to stop after rank 1 died"
        assert "rank      : 1" in output and "SIGKILL" in output, output[-3000:]
    assert not (out / "methods/klas/snnet/supernet/.klas-stage.json").exists()
    _finish(_torchrun(config, 2))
    assert_same_results(one_process, out)


@pytest.mark.slow
def test_stage_commands_under_torchrun(tmp_path, shapes_dir):
    """`klas extract` shares its shards across 2 ranks and writes the bytes of one process;
    a command that runs in one process says so instead of running once per rank."""
    anchor = "cifar-resnet:8?pretrained=false&seed=1"
    args = ["extract", "--anchor", anchor, "--data", str(shapes_dir), "--batch-size", "16", "--shard-rows", "16",
            "--quiet"]
    one = subprocess.run([sys.executable, "-m", "klas", *args, "--out", str(tmp_path / "one")], capture_output=True,
                         text=True, timeout=600)
    assert one.returncode == 0, one.stderr
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "klas"]
    two = subprocess.run([*base, *args, "--out", str(tmp_path / "two")], capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count(" train  ") == 1  # rank 0 alone lists the caches
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert len([f for f in files if f.name.startswith("shard-")]) > 2
    assert files == sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file())
    for f in files:
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f
    refused = subprocess.run([*base, "select", "--scores", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0
    assert "`klas select` runs in one process: start it without torchrun" in refused.stderr
