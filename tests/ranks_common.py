"""A small `klas run` config and the comparison of two of its outputs, shared by the tests that run
it under several launchers (torchrun, SLURM) against one plain process."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from conftest import shared_available
from klas.settings import cifar10_dir


def run_config(out: Path, shapes_dir: Path) -> dict:
    # contiguous models: channels last, oneDNN picks its convolution kernels by batch shape, so a rank's
    # half batch sums in another order than the whole batch, and AdamW's steps carry such rounding
    # further (tests/test_memory_format.py); the comparison here is of the ranks' arithmetic
    common = {"name": "ranks", "out": str(out), "select": {"method": "klas"}, "evaluate": {"batch_size": 128},
              "distributed": {"timeout_s": 120.0}, "memory_format": "contiguous"}
    if shared_available():
        return {**common, "anchors": ["cifar-resnet:20", "cifar-resnet:32"],
                "data": {"root": str(cifar10_dir()), "train_limit": 512, "val_limit": 256, "test_limit": 256},
                "extract": {"batch_size": 64, "shard_rows": 128}, "probes": {"epochs": 2, "batch_size": 64},
                "finetune": {"steps": 20, "batch_size": 16, "checkpoint_every": 5, "calibration_images": 32, "protocols": ["snnet"]}}
    return {**common, "anchors": ["cifar-resnet:8?pretrained=false&seed=1", "cifar-resnet:14?pretrained=false&seed=2"],
            "data": {"root": str(shapes_dir), "val_fraction": 0.25},
            "extract": {"batch_size": 16, "shard_rows": 32}, "probes": {"epochs": 2, "batch_size": 32},
            "finetune": {"steps": 20, "batch_size": 8, "checkpoint_every": 5, "calibration_images": 16, "protocols": ["snnet"]}}


def write_run_config(directory: Path, shapes_dir: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "run.yaml"
    path.write_text(yaml.safe_dump(run_config(directory / "out", shapes_dir)))
    return path


def assert_same_results(a: Path, b: Path) -> None:
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


