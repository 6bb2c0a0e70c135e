"""Probe training benchmark: all probes together vs one training loop per probe, per epoch.

    python bench/bench_probes.py [--cache RUNS/cifar] [--rows 45000]

With --cache (an extraction output holding train caches, e.g. of the four shared CIFAR ResNets:
84 blocks) both peers read those caches; without it, synthetic caches with the same layout (four
anchors of 9/15/21/27 blocks, widths 16/32/64, 10 classes, fp16, --rows rows) are written first.
- joint: klas.train_probes, one pass over every anchor's cache per epoch, all probes at once;
- naive: for every block of every anchor its own nn.Linear + AdamW loop over a full pass of its
  anchor's cache (reading its own columns), i.e. one pass per probe.
Same batch size, optimizer and learning rate; one epoch each, best of three runs. Appended to
bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import append_results  # noqa: E402

from klas.cache import BlockEntry, CacheReader, CacheWriter  # noqa: E402
from klas.extraction.extract import cached_anchors  # noqa: E402
from klas.scoring.probes import train_probes  # noqa: E402


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
                        num_classes=10, num_samples=rows, shard_rows=4096, source={})
        for s in range(0, rows, 8192):
            m = min(8192, rows - s)
            w.append(rng.standard_normal((m, off + 10), dtype=np.float32).astype(np.float16), labels[s:s + m])
        w.finish()
        paths.append(path)
    return paths


def naive_epoch(paths, batch_size, lr):
    for path in paths:
        reader = CacheReader(path)
        for e in reader.manifest.block_entries:
            probe = torch.nn.Linear(e.width, reader.manifest.num_classes)
            opt = torch.optim.AdamW(probe.parameters(), lr=lr)
            for batch in reader.batches(batch_size, shuffle=True, seed=0):
                rows, y = batch.torch()
                loss = F.cross_entropy(probe(rows[:, e.offset:e.offset + e.width].float()), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", help="extraction output with train caches (default: synthetic)")
    ap.add_argument("--rows", type=int, default=45_000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-2)
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        if args.cache:
            paths = [Path(args.cache) / n / "train" for n in cached_anchors(args.cache, "train")]
            what = f"caches under {args.cache}"
        else:
            paths = synthetic_caches(Path(tmp), args.rows)
            what = f"synthetic caches, {args.rows} rows"
        blocks = sum(len(CacheReader(p).manifest.block_entries) for p in paths)
        rows = CacheReader(paths[0]).num_samples
        def best_of(fn, repeats=3):
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            return min(times)

        joint = best_of(lambda: train_probes(paths, epochs=1, batch_size=args.batch_size, lr=args.lr,
                                             progress=False, evaluate=False))
        naive = best_of(lambda: naive_epoch(paths, args.batch_size, args.lr))
    lines = [f"{len(paths)} anchors, {blocks} probes, {rows} rows per cache ({what}); batch {args.batch_size}, "
             "AdamW; one epoch each, best of 3.", "",
             "| peer | epoch s | vs naive |", "|---|---:|---:|",
             f"| naive: one loop per probe | {naive:.2f} | 1.0x |",
             f"| joint: klas.train_probes | {joint:.2f} | {naive / joint:.1f}x |", "",
             "Command: `python bench/bench_probes.py" + (f" --cache {args.cache}`" if args.cache else "`")]
    append_results("Probe training: joint vs one loop per probe", lines)


if __name__ == "__main__":
    main()
