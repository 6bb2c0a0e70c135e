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
import torch
import yaml
from safetensors.torch import load_file

from conftest import shared_available
from klas.cache.reader import batch_share, row_ranges
from klas.distributed import even_share
from klas.settings import cifar10_dir


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


# -- end to end -------------------------------------------------------------------------------------

def _config(out: Path, shapes_dir: Path) -> dict:
    common = {"name": "ranks", "out": str(out), "select": {"method": "klas"}, "evaluate": {"batch_size": 128},
              "distributed": {"timeout_s": 120.0}}
    if shared_available():
        return {**common, "anchors": ["cifar-resnet:20", "cifar-resnet:32"],
                "data": {"root": str(cifar10_dir()), "train_limit": 512, "val_limit": 256, "test_limit": 256},
                "extract": {"batch_size": 64, "shard_rows": 128}, "probes": {"epochs": 2, "batch_size": 64},
                "finetune": {"steps": 20, "batch_size": 16, "checkpoint_every": 5, "calibration_images": 32, "protocols": ["snnet"]}}
    return {**common, "anchors": ["cifar-resnet:8?pretrained=false&seed=1", "cifar-resnet:14?pretrained=false&seed=2"],
            "data": {"root": str(shapes_dir), "val_fraction": 0.25},
            "extract": {"batch_size": 16, "shard_rows": 32}, "probes": {"epochs": 2, "batch_size": 32},
            "finetune": {"steps": 20, "batch_size": 8, "checkpoint_every": 5, "calibration_images": 16, "protocols": ["snnet"]}}


def _write_config(directory: Path, shapes_dir: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "run.yaml"
    path.write_text(yaml.safe_dump(_config(directory / "out", shapes_dir)))
    return path


def _torchrun(config: Path, ranks: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
           "-m", "klas", "run", str(config), "--quiet"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> str:
    output = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, output[-4000:]
    return output


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, shapes_dir) -> Path:
    """The reference: `klas run` in one plain process."""
    config = _write_config(tmp_path_factory.mktemp("one"), shapes_dir)
    done = subprocess.run([sys.executable, "-m", "klas", "run", str(config), "--quiet"], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return config.parent / "out"


def _assert_same_results(a: Path, b: Path) -> None:
    """Caches byte for byte, Θ to 1e-5, the selected stitches exactly, accuracies per route."""
    listed = [sorted(p.relative_to(d) for p in d.glob("cache/*/*/*") if p.is_file()) for d in (a, b)]
    assert listed[0] == listed[1]  # the same files, heatmaps included (their pixels are not compared)
    caches = [f for f in listed[0] if f.suffix in (".bin", ".json") and f.parts[1] not in ("probes", "scores")]
    assert any(f.name == "shard-00001.bin" for f in caches), "the test needs caches of several shards"
    for f in caches:  # extraction is the same computation on any number of ranks: the same bytes
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    for f in (f for f in listed[0] if f.parts[1] == "probes" and f.suffix == ".safetensors"):
        pa, pb = load_file(str(a / f)), load_file(str(b / f))  # gradients summed across ranks: rounding only
        assert pa.keys() == pb.keys()
        for k in pa:
            torch.testing.assert_close(pb[k], pa[k], atol=1e-5, rtol=1e-4)
    ta = load_file(str(a / "cache/scores/scores.safetensors"))["theta_all"]
    tb = load_file(str(b / "cache/scores/scores.safetensors"))["theta_all"]
    torch.testing.assert_close(tb, ta, atol=1e-5, rtol=1e-5)
    sel = [json.loads((d / "methods/klas/selection/selection.json").read_text()) for d in (a, b)]
    chosen = [[(c["source"], c["i"], c["target"], c["j"]) for p in s["pairs"] for c in p["selected"]] for s in sel]
    assert chosen[0] == chosen[1] and chosen[0]
    ev = [json.loads((d / "methods/klas/snnet/evaluation/evaluation.json").read_text())["routes"] for d in (a, b)]
    assert [r["name"] for r in ev[0]] == [r["name"] for r in ev[1]]
    assert [r["total"] for r in ev[1]] == [r["total"] for r in ev[0]]
    # weights agree to rounding (gradients summed in another order); a test image near a decision
    # boundary could flip, so allow one image per route
    for ra, rb in zip(*ev):
        assert abs(ra["correct"] - rb["correct"]) <= 1, (ra["name"], ra["correct"], rb["correct"])


@pytest.mark.slow
def test_two_ranks_give_the_results_of_one_process(one_process, tmp_path, shapes_dir):
    config = _write_config(tmp_path, shapes_dir)
    output = _finish(_torchrun(config, 2))
    out = config.parent / "out"
    _assert_same_results(one_process, out)
    marker = json.loads((out / "cache" / ".klas-stage.json").read_text())
    assert marker["ranks"] == 2
    assert output.count("[extract] running") == 1  # rank 0 alone reports


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
    config = _write_config(tmp_path, shapes_dir)
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
    _assert_same_results(one_process, out)


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
