"""Supernet finetuning benchmark: `klas.stitching.finetune` against a bare training loop.

    pytest bench/bench_finetune.py [--bench-data ROOT] --benchmark-json=RUN.json

One supernet (two CIFAR ResNets with random weights, ResNet-20 -> ResNet-56, 12 stitches spread over
the valid configurations, least-squares initialised) and one route schedule, per protocol (SN-Net's:
anchors train; stitches-only: anchors frozen), one group each:
- bare, decoded (the baseline): for each step of the schedule, the route's forward, cross-entropy,
  backward, AdamW step and learning-rate step, on batches decoded beforehand (not timed);
- bare, DataLoader: the same loop taking its batches from a plain DataLoader;
- klas: `finetune` of the same supernet for the same steps: route sampling, batches decoded from the
  data set each step (on a background thread), BatchNorm freezing, checkpoints every 100 steps, the
  training curve, the progress bar (off).
Best of 3 rounds each, no warm-up round. The ratio is klas's speed over the bare loop's (target ≥ 0.9). 60 steps at batch 64 over 4,000
images (smoke: 4 steps at batch 16, 3 stitches).
"""
from __future__ import annotations

import copy
import math
import shutil
import tempfile
from functools import cache
from pathlib import Path

import pytest
import torch
from common import run_peer

from klas.anchors import load_anchor
from klas.extraction.data import ImageDataset, split_for_anchor
from klas.memory_format import channels_last_models
from klas.stitching.finetune import FinetuneSettings, StepBatches, finetune, training_plan
from klas.stitching.settings import PROTOCOLS
from klas.stitching.stitch import StitchedSupernet
BASELINE = "bare, decoded"


def sizes(smoke: bool) -> tuple[int, int, int, int]:
    """(steps, batch size, stitches, timed rounds)."""
    return (4, 16, 3, 1) if smoke else (60, 64, 12, 3)


@cache
def supernet(stitches: int) -> StitchedSupernet:
    f = load_anchor("cifar-resnet:20?pretrained=false")
    g = load_anchor("cifar-resnet:56?pretrained=false&seed=1")
    valid = [(i, j) for i in range(1, f.depth) for j in range(1, g.depth)
             if f.block_info[i - 1].grid == g.block_info[j - 1].grid]
    picks = [valid[k * len(valid) // stitches] for k in range(stitches)]
    net = StitchedSupernet([f, g], [(f.name, g.name, i, j) for i, j in picks])
    net.init_stitches(torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    return net


@cache
def dataset(root: Path, stitches: int) -> ImageDataset:
    """The first 4,000 train images, prepared for the supernet's first anchor."""
    net = supernet(stitches)
    first = net.anchor(net.anchor_names[0])
    source, indices = split_for_anchor(root, "train", first, limit=4000)
    return ImageDataset(source, indices, input_size=first.input_size, mean=first.mean, std=first.std)


def bare_setup(net, data, settings, predecoded):
    """Untimed: a fresh copy of the supernet, its optimiser and schedule, the batches (decoded or a loader)."""
    net = copy.deepcopy(net)
    opt, sched, schedule = training_plan(net, settings)
    batches = list(StepBatches(len(data), settings.batch_size, settings.seed, 0, settings.steps))
    if predecoded:
        loader = [(torch.stack([data[i][0] for i in b]), torch.tensor([data[i][1] for i in b])) for b in batches]
    else:
        loader = torch.utils.data.DataLoader(data, batch_sampler=batches)
    net.train()
    if settings.stitches_only:
        for a in net.anchors.values():
            a.eval()
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    return (net, opt, sched, schedule, loader), {}


def bare_steps(net, opt, sched, schedule, loader) -> float:
    """The training steps alone: same routes, batches, optimiser, schedule and model layout
    (klas.memory_format) as `finetune`; the last loss."""
    with channels_last_models([net], "cpu"):
        for step, (x, y) in enumerate(loader):
            loss = torch.nn.functional.cross_entropy(net(x, int(schedule[step])), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return loss.item()


@pytest.mark.parametrize("peer", [BASELINE, "bare, DataLoader", "klas"], ids=["bare", "bare-loader", "klas"])
@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_finetune(benchmark, protocol, peer, image_root, smoke):
    steps, batch_size, stitches, rounds = sizes(smoke)
    net, data = supernet(stitches), dataset(image_root, stitches)
    settings = FinetuneSettings(steps=steps, batch_size=batch_size, stitches_only=PROTOCOLS[protocol])
    info = {"group": f"finetune {protocol}", "peer": peer, "baseline": BASELINE, "rounds": rounds, "warmup": False,
            "work": steps,
            "work_unit": "steps", "stitches": len(net) - 2, "batch": batch_size, "images": len(data)}
    if peer == "klas":
        def setup():
            return (copy.deepcopy(net), Path(tempfile.mkdtemp(prefix="klas-bench-finetune-"))), {}

        def run(model, out):
            finetune(model, data, settings, out, progress=False)
            return model

        trained = run_peer(benchmark, run, setup=setup, teardown=lambda m, out: shutil.rmtree(out, ignore_errors=True),
                           **info)
        changed = any(not torch.equal(p, q) for p, q in zip(trained.parameters(), net.parameters()))
        assert changed, "finetune changed no parameter"
    else:
        loss = run_peer(benchmark, bare_steps, setup=lambda: bare_setup(net, data, settings, peer == BASELINE), **info)
        assert math.isfinite(loss), f"the bare loop's loss is {loss}"
