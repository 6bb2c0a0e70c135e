"""Recovery-test benchmark: `train_configurations` with the images every source block reads decoded
once, against decoding them again for every block.

    pytest bench/bench_recovery.py [--bench-data ROOT] --benchmark-json=RUN.json

ResNet-20 -> ResNet-56 with random weights; the grid-valid configurations of two source blocks,
trained alone for the same steps and evaluated on the same test images before and after:
- decoded per block (the baseline): klas.limits.MAX_DECODED_BYTES set to 0, so every source block
  decodes its step batches and the test set again (what the recovery test did before);
- decoded once: the default; the first block decodes them, the others replay them.
Both produce the same results (checked when both run). One round each (a round takes minutes), no
warm-up round, into a fresh folder. 20 steps at batch 64, 500 test images (smoke: ResNet-8 ->
ResNet-14, one source block, 2 steps at batch 8, 40 test images, 16 calibration images).
"""
from __future__ import annotations

import shutil
import tempfile
from functools import cache
from pathlib import Path

import pytest
from common import run_peer

import klas.extraction.data as data
from klas.anchors import load_anchor
from klas.evaluation.recovery import RecoverySettings, train_configurations
from klas.extraction.data import ImageDataset, split_for_anchor

GROUP = "recovery"
BASELINE = "decoded per block"


def sizes(smoke: bool) -> tuple[int, int, int, int, int]:
    """(steps, batch size, test images, source blocks, timed rounds)."""
    return (2, 8, 40, 1, 1) if smoke else (20, 64, 500, 2, 1)


@cache
def anchors(smoke: bool = False):
    depths = (8, 14) if smoke else (20, 56)
    return tuple(load_anchor(f"cifar-resnet:{d}?pretrained=false&seed={k}") for k, d in enumerate(depths))


def configurations(smoke: bool, blocks: int) -> list[tuple[int, int]]:
    f, g = anchors(smoke)
    sources = [1, 2, 4, 7][:blocks]
    return [(i, j) for i in sources for j in range(1, g.depth) if f.block_info[i - 1].grid == g.block_info[j - 1].grid]


def images(root: Path, split: str, limit: int) -> ImageDataset:
    f = anchors(False)[0]  # the same input size and normalisation at both scales
    source, indices = split_for_anchor(root, split, f, limit=limit)
    return ImageDataset(source, indices, input_size=f.input_size, mean=f.mean, std=f.std)


@pytest.mark.parametrize("peer", [BASELINE, "decoded once"], ids=["per-block", "once"])
def test_recovery(benchmark, peer, image_root, smoke, monkeypatch):
    steps, batch_size, test_images, blocks, rounds = sizes(smoke)
    if peer == BASELINE:
        monkeypatch.setattr(data, "MAX_DECODED_BYTES", 0)
    f, g = anchors(smoke)
    configs = configurations(smoke, blocks)
    train, test = images(image_root, "train", 4000), images(image_root, "test", test_images)
    settings = RecoverySettings(steps=steps, batch_size=batch_size, test_images=len(test),
                                calibration_images=16 if smoke else 128)

    def run(out):
        return train_configurations(f, g, configs, train, test, settings, out, progress=False, log=lambda *_: None)

    results = run_peer(benchmark, run, setup=lambda: ((Path(tempfile.mkdtemp(prefix="klas-bench-recovery-")),), {}),
                       teardown=lambda out: shutil.rmtree(out, ignore_errors=True), group=GROUP, peer=peer,
                       baseline=BASELINE, rounds=rounds, warmup=False, work=len(configs), work_unit="configurations",
                       source_blocks=blocks, steps=steps, batch=batch_size, test=len(test), data=image_root.name)
    _outcomes[peer] = {c: (r["correct"], r["correct_init"]) for c, r in results.items()}
    if len(_outcomes) == 2:
        assert _outcomes[BASELINE] == _outcomes["decoded once"], "decoding once changed the results"


_outcomes: dict[str, dict] = {}  # each peer's results, compared once both ran
