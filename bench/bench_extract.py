"""Extraction benchmark: `klas.extract` of k anchors against the sum of their bare forwards.

    python bench/bench_extract.py [--data ROOT] [--anchors SPEC,SPEC] [--images 5000] [--batch-size 256]

- bare: the same images, decoded and normalised beforehand (not timed), then for each anchor
  `torch.inference_mode()` forwards at the same batch size: what the models themselves cost;
- klas: `klas.extract` of the same anchors on the same images into a fresh folder: decoding,
  every block's pooled output, the checks, float16 conversion, shards with checksums, the manifest.
Interleaved, best of --repeats each; the ratio bare / klas is the fraction of the models' own speed
that extraction reaches (target ≥ 0.95). Appended to bench/RESULTS.md.

Data: --data (a folder with train/test sets), else the shared CIFAR-10 ($KLAS_SHARED/data/cifar10)
when present, else the generated shapes (examples/shapes.zip). Anchors are built with random
weights by default (the cost does not depend on the weights).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import append_results  # noqa: E402

from klas.anchors import load_anchor  # noqa: E402
from klas.extraction.data import ImageDataset, split_for_anchor  # noqa: E402
from klas.extraction.extract import extract  # noqa: E402
from klas.settings import cifar10_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def default_data() -> Path:
    return cifar10_dir() if (cifar10_dir() / "train.zip").exists() else ROOT / "examples" / "shapes.zip"


def decoded(data: Path, anchor, images: int) -> torch.Tensor:
    """The images klas.extract reads for the train split (same split, seed and limit), as one tensor."""
    source, indices = split_for_anchor(data, "train", anchor, val_fraction=0.1, seed=0, limit=images)
    dataset = ImageDataset(source, indices, input_size=anchor.input_size, mean=anchor.mean, std=anchor.std)
    return torch.stack([dataset[k][0] for k in range(len(dataset))])


def bare(anchors, x: torch.Tensor, batch_size: int) -> None:
    with torch.inference_mode():
        for anchor in anchors:
            for start in range(0, len(x), batch_size):
                anchor(x[start:start + batch_size])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--anchors", default="cifar-resnet:20?pretrained=false,cifar-resnet:56?pretrained=false")
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    data = args.data or default_data()
    specs = args.anchors.split(",")
    anchors = [load_anchor(s).eval() for s in specs]
    x = decoded(data, anchors[0], args.images)
    bare(anchors, x[:args.batch_size], args.batch_size)  # warm-up (first-call allocations)
    times = {"bare": [], "klas": []}
    for _ in range(args.repeats):
        t = time.perf_counter()
        bare(anchors, x, args.batch_size)
        times["bare"].append(time.perf_counter() - t)
        out = Path(tempfile.mkdtemp(prefix="klas-bench-extract-"))
        try:
            t = time.perf_counter()
            extract(anchors, data, out, splits=("train",), batch_size=args.batch_size, limit=args.images,
                    progress=False)
            times["klas"].append(time.perf_counter() - t)
        finally:
            shutil.rmtree(out, ignore_errors=True)
    best = {k: min(v) for k, v in times.items()}
    n = len(x)
    lines = [
        f"{len(anchors)} anchors ({', '.join(specs)}), {n} train images of {data}, batch {args.batch_size}, "
        f"{torch.get_num_threads()} torch threads; interleaved, best of {args.repeats}.",
        "",
        "| peer | s | images/s per anchor | vs bare |",
        "|---|---:|---:|---:|",
        f"| bare: inference_mode forwards over decoded tensors | {best['bare']:.2f} | "
        f"{n * len(anchors) / best['bare']:.0f} | 1.00x |",
        f"| klas: extract (decode, pool, check, write shards) | {best['klas']:.2f} | "
        f"{n * len(anchors) / best['klas']:.0f} | {best['bare'] / best['klas']:.2f}x |",
        "",
        f"Command: `python bench/bench_extract.py --images {args.images} --batch-size {args.batch_size}`"
        + (f" (data {data})" if args.data else ""),
    ]
    append_results("Extraction: klas.extract vs bare forwards", lines)


if __name__ == "__main__":
    os.environ.setdefault("KLAS_SHARED", str(ROOT.parent / "shared"))
    main()
