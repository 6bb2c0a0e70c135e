"""Extraction benchmark: `klas.extract` of k anchors against the sum of their bare forwards.

    pytest bench/bench_extract.py [--bench-data ROOT] --benchmark-json=RUN.json

- bare (the baseline): the same images, decoded and normalised beforehand (not timed), then for each
  anchor `torch.inference_mode()` forwards at the same batch size: what the models themselves cost;
- klas: `klas.extract` of the same anchors on the same images into a fresh folder: decoding, every
  block's pooled output, the checks, float16 conversion, shards with checksums, the manifest.
Best of 3 rounds each, no warm-up round (a round is long enough that first-call costs do not
matter). The ratio (bare best / klas best) is the fraction of the models' own speed that extraction reaches
(target ≥ 0.95). Anchors: ResNet-20 and ResNet-56 with random weights (the cost does not depend on
the weights); 5,000 train images at batch 256 (smoke: 64 images at batch 32).
"""
from __future__ import annotations

import shutil
import tempfile
from functools import cache
from pathlib import Path

import torch
from common import run_peer

from klas.anchors import load_anchor
from klas.cache import read_manifest
from klas.extraction.data import ImageDataset, split_for_anchor
from klas.extraction.extract import cached_anchors, extract

SPECS = ("cifar-resnet:20?pretrained=false", "cifar-resnet:56?pretrained=false")
GROUP = "extract"


def sizes(smoke: bool) -> tuple[int, int, int]:
    """(images, batch size, timed rounds)."""
    return (64, 32, 1) if smoke else (5000, 256, 3)


@cache
def anchors():
    return tuple(load_anchor(s).eval() for s in SPECS)


@cache
def decoded(data: Path, images: int) -> torch.Tensor:
    """The images klas.extract reads for the train split (same split, seed and limit) [n, 3, H, W]."""
    first = anchors()[0]
    source, indices = split_for_anchor(data, "train", first, val_fraction=0.1, seed=0, limit=images)
    dataset = ImageDataset(source, indices, input_size=first.input_size, mean=first.mean, std=first.std)
    return torch.stack([dataset[k][0] for k in range(len(dataset))])


def bare(x: torch.Tensor, batch_size: int) -> None:
    with torch.inference_mode():
        for anchor in anchors():
            for start in range(0, len(x), batch_size):
                anchor(x[start:start + batch_size])


def test_bare(benchmark, image_root, smoke):
    images, batch_size, rounds = sizes(smoke)
    x = decoded(image_root, images)
    run_peer(benchmark, lambda: bare(x, batch_size), group=GROUP, peer="bare", baseline="bare", rounds=rounds, warmup=False,
             work=len(x) * len(SPECS),
             work_unit="images", images=len(x), batch=batch_size, data=image_root.name)


def test_klas(benchmark, image_root, smoke):
    images, batch_size, rounds = sizes(smoke)
    n = len(decoded(image_root, images))

    def fresh_folder():
        return (Path(tempfile.mkdtemp(prefix="klas-bench-extract-")),), {}

    def run(out):
        extract(list(anchors()), image_root, out, splits=("train",), batch_size=batch_size, limit=images,
                progress=False)

    def check_and_remove(out):
        try:
            rows = {name: read_manifest(out / name / "train").num_samples for name in cached_anchors(out, "train")}
            assert len(rows) == len(SPECS) and set(rows.values()) == {n}, f"extraction wrote {rows}, expected {n} rows each"
        finally:
            shutil.rmtree(out, ignore_errors=True)

    run_peer(benchmark, run, setup=fresh_folder, teardown=check_and_remove, group=GROUP, peer="klas",
             baseline="bare", rounds=rounds, warmup=False, work=n * len(SPECS), work_unit="images",
             images=n, batch=batch_size, data=image_root.name)
