"""Probe training benchmark: all probes together against one training loop per probe, per epoch.

    pytest bench/bench_probes.py [--bench-cache RUNS/cifar] --benchmark-json=RUN.json

With --bench-cache (an extraction output holding train caches, e.g. of the four shared CIFAR ResNets:
84 blocks) both peers read those caches; without it, synthetic caches with the same layout (four
anchors of 9/15/21/27 blocks, widths 16/32/64, 10 classes, fp16, 45,000 rows; smoke: 2,000) are
written first.
- naive (the baseline): for every block of every anchor its own nn.Linear + AdamW loop over a full
  pass of its anchor's cache (reading its own columns), i.e. one pass per probe;
- joint: klas.train_probes, one pass over every anchor's cache per epoch, all probes at once.
Same batch size (256), optimizer and learning rate (1e-2); one epoch per round.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from common import run_peer

from klas.cache import BlockEntry, CacheReader, CacheWriter
from klas.extraction.extract import cached_anchors
from klas.scoring.probes import train_probes

BATCH, LR = 256, 1e-2
GROUP = "probes"


def synthetic_caches(root: Path, rows: int) -> list[Path]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, rows)
    paths = []
    for n in (3, 5, 7, 9):
        widths = [16] * n + [32] * n + [64] * n
        blocks, off = [], 0
        for k, w in enumerate(widths, start=1):
            blocks.append(BlockEntry(f"b{k}", k, w, off))
            off += w
        blocks.append(BlockEntry("logits", 0, 10, off, kind="logits"))
        path = root / f"resnet{6 * n + 2}" / "train"
        w = CacheWriter(path, anchor=f"bench:resnet{6 * n + 2}", split="train", dtype="float16", blocks=tuple(blocks),
                        num_classes=10, num_samples=rows, shard_rows=4096,
                        source={"samples": f"bench-synthetic-{rows}", "classes": [f"c{k}" for k in range(10)]},
                        anchor_info={"weights": f"bench-synthetic-{n}"})
        for s in range(0, rows, 8192):
            m = min(8192, rows - s)
            w.append(rng.standard_normal((m, off + 10), dtype=np.float32).astype(np.float16), labels[s:s + m])
        w.finish()
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def caches(request, tmp_path_factory, smoke) -> list[Path]:
    given = request.config.getoption("--bench-cache")
    if given:
        paths = [Path(given) / n / "train" for n in cached_anchors(given, "train")]
        if not paths:
            pytest.exit(f"--bench-cache {given}: no complete train cache there", returncode=4)
        return paths
    return synthetic_caches(tmp_path_factory.mktemp("probe-caches"), 2_000 if smoke else 45_000)


def naive_epoch(paths: list[Path]) -> int:
    """One training loop per probe; returns the number of probes trained."""
    trained = 0
    for path in paths:
        reader = CacheReader(path)
        for e in reader.manifest.block_entries:
            probe = torch.nn.Linear(e.width, reader.manifest.num_classes)
            opt = torch.optim.AdamW(probe.parameters(), lr=LR)
            for batch in reader.batches(BATCH, shuffle=True, seed=0):
                rows, y = batch.torch()
                loss = F.cross_entropy(probe(rows[:, e.offset:e.offset + e.width].float()), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            trained += 1
    return trained


def described(paths: list[Path]) -> dict:
    return {"anchors": len(paths), "probes": sum(len(CacheReader(p).manifest.block_entries) for p in paths),
            "rows": CacheReader(paths[0]).num_samples}


def test_naive(benchmark, caches, smoke):
    info = described(caches)
    trained = run_peer(benchmark, lambda: naive_epoch(caches), group=GROUP, peer="naive", baseline="naive",
                       rounds=1 if smoke else 3, warmup=False, **info)
    assert trained == info["probes"]


def test_joint(benchmark, caches, smoke):
    info = described(caches)
    result = run_peer(benchmark, lambda: train_probes(caches, epochs=1, batch_size=BATCH, lr=LR, progress=False,
                                                      evaluate=False),
                      group=GROUP, peer="joint", baseline="naive", rounds=1 if smoke else 3, warmup=False, **info)
    assert sum(len(p.weights) for p in result) == info["probes"]
