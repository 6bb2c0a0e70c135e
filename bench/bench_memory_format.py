"""Channels-last against contiguous models (the `memory_format` setting, klas.memory_format), and
bfloat16 training steps against float32 ones (the `precision` setting, klas.precision).

    pytest bench/bench_memory_format.py --benchmark-json=RUN.json

ResNet-56 with random weights, stored contiguous (the baseline) or channels last through
`channels_last_models` (what klas's stages do), on random images (the pixels do not change the work):
- inference (extraction, evaluation, the predictions, the recovery test's evaluations): 2,000 images
  in batches of 500 under inference mode, eager, and compiled (`compiled_parts`, what `compile: auto`
  picks for a long inference stage; the first call, the compile, is the untimed warm-up);
- training (adaptation, finetuning, the recovery test's steps): 10 steps at batch 64, forward,
  cross-entropy, backward and AdamW, BatchNorm statistics frozen as in finetuning; a third peer
  runs each forward under bfloat16 autocast, channels last (`precision: bfloat16`);
- finetuning, the whole stage: `finetune` of bench_finetune's supernet (ResNet-20 -> ResNet-56, 12
  stitches) for 60 steps at batch 64 on decoded images, under SN-Net's protocol; the same three peers.
Best of 3 rounds each. The channels-last values are checked against the contiguous ones (logits
within 1e-3); the bfloat16 peer's first loss against float32's within 0.05. (smoke: ResNet-8, 16 images in batches of 8, 2 training steps at batch 8, compiled
with dynamo's "eager" backend; the stage: bench_finetune's smoke supernet, 4 steps at batch 16.)
With `--bench-device cuda` (bench/gpu_check.sh) the inference and training groups run on the GPU
with more work per round (20,000 images in batches of 1,000; 50 steps at batch 256); the stage group
runs on the CPU only and skips there.
"""
from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from bench_compile import anchor, inference_pass, sizes, synchronize, training_setup
from common import run_peer

from klas.compiling import compiled_parts
from klas.memory_format import channels_last_models, memory_format_mode
from klas.precision import training_autocast

BASELINE = "contiguous"
FORMATS = {BASELINE: "contiguous", "channels last": "channels_last"}
BFLOAT16 = "channels last, bfloat16 steps"
TRAINING_PEERS = {**{peer: (layout, "float32") for peer, layout in FORMATS.items()},
                  BFLOAT16: ("channels_last", "bfloat16")}  # peer: (memory format, precision)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("peer", list(FORMATS))
def test_inference(benchmark, peer, compiled, smoke, device):
    z = sizes(smoke, device)
    a = copy.deepcopy(anchor(z["depth"])).to(device)
    forward = inference_pass(a, z, device)

    reference = forward()
    with memory_format_mode(FORMATS[peer]), channels_last_models([a], device), \
            compiled_parts(a.blocks, enabled=compiled, backend=z["backend"]):
        out = run_peer(benchmark, forward, group=f"memory format, inference, {'compiled' if compiled else 'eager'}",
                       peer=peer, baseline=BASELINE, rounds=z["rounds"], warmup=True, work=z["images"],
                       work_unit="img")
    torch.testing.assert_close(out, reference, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("peer", list(TRAINING_PEERS))
def test_training(benchmark, peer, smoke, device):
    z = sizes(smoke, device)
    net, opt, x, y = training_setup(z, device)
    layout, precision = TRAINING_PEERS[peer]
    with torch.no_grad():
        reference = torch.nn.functional.cross_entropy(net(x), y).item()

    def steps():
        losses = []
        for _ in range(z["steps"]):
            with training_autocast(precision, device):
                loss = torch.nn.functional.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        synchronize(device)
        return [float(v) for v in losses]

    with memory_format_mode(layout), channels_last_models([net], device):
        with torch.no_grad(), training_autocast(precision, device):
            first = torch.nn.functional.cross_entropy(net(x), y).item()
        assert abs(first - reference) <= (1e-3 if precision == "float32" else 0.05), (first, reference)
        losses = run_peer(benchmark, steps, group="memory format, training", peer=peer, baseline=BASELINE,
                          rounds=z["rounds"], warmup=True, work=z["steps"], work_unit="step")
    assert all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.parametrize("peer", list(TRAINING_PEERS))
def test_finetune_stage(benchmark, peer, smoke, device, image_root):
    if device.type != "cpu":
        pytest.skip("the finetuning stage group runs on the CPU (--bench-device cpu)")
    from bench_finetune import dataset, supernet
    from bench_finetune import sizes as finetune_sizes

    from klas.stitching.finetune import FinetuneSettings, finetune

    steps, batch_size, stitches, rounds = finetune_sizes(smoke)
    net, data = supernet(stitches), dataset(image_root, stitches)
    decoded = torch.utils.data.TensorDataset(torch.stack([data[i][0] for i in range(len(data))]),
                                             torch.tensor([data[i][1] for i in range(len(data))]))
    layout, precision = TRAINING_PEERS[peer]
    settings = FinetuneSettings(steps=steps, batch_size=batch_size, precision=precision)

    def setup():
        return (copy.deepcopy(net), Path(tempfile.mkdtemp(prefix="klas-bench-memory-format-"))), {}

    def run(model, out):
        with memory_format_mode(layout):
            finetune(model, decoded, settings, out, progress=False)
        return model

    trained = run_peer(benchmark, run, setup=setup, teardown=lambda m, out: shutil.rmtree(out, ignore_errors=True),
                       group="memory format, finetune stage", peer=peer, baseline=BASELINE, rounds=rounds,
                       warmup=False, work=steps, work_unit="step", stitches=len(net) - 2, batch=batch_size)
    assert all(p.is_contiguous() for p in trained.parameters())  # contiguous again after the stage
    assert any(not torch.equal(p, q) for p, q in zip(trained.parameters(), net.parameters())), "nothing trained"
