"""Supernet finetuning benchmark: `klas.stitching.finetune` against a bare training loop.

    python bench/bench_finetune.py [--steps 60] [--batch-size 64] [--stitches 12]

One supernet (two CIFAR ResNets with random weights, ResNet-20 -> ResNet-56, --stitches stitches
spread over the valid configurations, least-squares initialised) and one route schedule:
- bare: for each step of the schedule, the route's forward, cross-entropy, backward, AdamW step and
  learning-rate step, on images decoded beforehand (not timed);
- klas: `finetune` of the same supernet for the same steps: route sampling, batches decoded from the
  data set each step, BatchNorm freezing, checkpoints every 100 steps, the training curve, the
  progress bar (off).
Both protocols (SN-Net's: anchors train; stitches-only: anchors frozen), interleaved, best of
--repeats. The ratio is klas's steps per second over the bare loop's (target ≥ 0.9). Appended to
bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import copy
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_extract import default_data  # noqa: E402
from common import append_results  # noqa: E402

from klas.anchors import load_anchor  # noqa: E402
from klas.extraction.data import ImageDataset, split_for_anchor  # noqa: E402
from klas.stitching.finetune import FinetuneSettings, _StepBatches, finetune, training_plan  # noqa: E402
from klas.stitching.stitch import StitchedSupernet  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def supernet(stitches: int) -> StitchedSupernet:
    f = load_anchor("cifar-resnet:20?pretrained=false")
    g = load_anchor("cifar-resnet:56?pretrained=false&seed=1")
    valid = [(i, j) for i in range(1, f.depth) for j in range(1, g.depth)
             if f.block_info[i - 1].grid == g.block_info[j - 1].grid]
    picks = [valid[k * len(valid) // stitches] for k in range(stitches)]
    net = StitchedSupernet([f, g], [(f.name, g.name, i, j) for i, j in picks])
    net.init_stitches(torch.rand(64, 3, 32, 32))
    return net


def bare(net: StitchedSupernet, data: ImageDataset, settings: FinetuneSettings, predecoded: bool = True) -> float:
    """Seconds of the training steps alone: same routes, batches, optimiser and schedule as
    `finetune`; the batches decoded beforehand (`predecoded`) or by a plain DataLoader in the loop."""
    opt, sched, schedule = training_plan(net, settings)
    batches = list(_StepBatches(len(data), settings.batch_size, settings.seed, 0, settings.steps))
    if predecoded:
        decoded = list(zip([torch.stack([data[i][0] for i in b]) for b in batches],
                           [torch.tensor([data[i][1] for i in b]) for b in batches]))
    net.train()
    if settings.stitches_only:
        for a in net.anchors.values():
            a.eval()
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    began = time.perf_counter()
    loader = decoded if predecoded else torch.utils.data.DataLoader(data, batch_sampler=batches)
    for step, (x, y) in enumerate(loader):
        loss = torch.nn.functional.cross_entropy(net(x, int(schedule[step])), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return time.perf_counter() - began


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--stitches", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    data_root = args.data or default_data()
    net0 = supernet(args.stitches)
    source, indices = split_for_anchor(data_root, "train", net0.anchor(net0.anchor_names[0]), limit=4000)
    first = net0.anchor(net0.anchor_names[0])
    data = ImageDataset(source, indices, input_size=first.input_size, mean=first.mean, std=first.std)
    rows = []
    for protocol, stitches_only in (("snnet", False), ("stitches-only", True)):
        settings = FinetuneSettings(steps=args.steps, batch_size=args.batch_size, stitches_only=stitches_only)
        best = {"bare": float("inf"), "loader": float("inf"), "klas": float("inf")}
        for _ in range(args.repeats):
            best["bare"] = min(best["bare"], bare(copy.deepcopy(net0), data, settings))
            best["loader"] = min(best["loader"], bare(copy.deepcopy(net0), data, settings, predecoded=False))
            out = Path(tempfile.mkdtemp(prefix="klas-bench-finetune-"))
            try:
                t = time.perf_counter()
                finetune(copy.deepcopy(net0), data, settings, out, progress=False)
                best["klas"] = min(best["klas"], time.perf_counter() - t)
            finally:
                shutil.rmtree(out, ignore_errors=True)
        rows.append(f"| {protocol} | {args.steps / best['bare']:.2f} | {args.steps / best['loader']:.2f} | "
                    f"{args.steps / best['klas']:.2f} | {best['bare'] / best['klas']:.2f}x | "
                    f"{best['loader'] / best['klas']:.2f}x |")
    lines = [
        f"ResNet-20 -> ResNet-56 supernet, {len(net0) - 2} stitches + 2 anchors, batch {args.batch_size}, "
        f"{args.steps} steps, AdamW + cosine, {torch.get_num_threads()} torch threads, images of {data_root}; "
        f"interleaved, best of {args.repeats}. klas decodes each step's batch from the data set (on a background "
        "thread); the bare loop takes batches decoded beforehand, or from a plain DataLoader in the loop.",
        "",
        "| protocol | bare steps/s (decoded) | bare steps/s (DataLoader) | klas steps/s | klas vs bare (decoded) | "
        "klas vs bare (DataLoader) |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"Command: `python bench/bench_finetune.py --steps {args.steps} --batch-size {args.batch_size}`",
    ]
    append_results("Supernet finetuning: klas.finetune vs a bare training loop", lines)


if __name__ == "__main__":
    os.environ.setdefault("KLAS_SHARED", str(ROOT.parent / "shared"))
    main()
