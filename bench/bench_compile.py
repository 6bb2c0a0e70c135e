"""Compiled against eager execution (the `compile` setting, klas.compiling), with the compile time.

    pytest bench/bench_compile.py --benchmark-json=RUN.json

ResNet-56 with random weights, its blocks run through `compiled_parts` (what klas's stages do) or
eagerly, on random images (the pixels do not change the work):
- inference (what extraction, evaluation, the predictions and the recovery test's evaluations run):
  2,000 images in batches of 500 under inference mode;
- training (what adaptation, finetuning and the recovery test's steps run): 10 steps at batch 64,
  forward, cross-entropy, backward and AdamW, BatchNorm statistics frozen as in finetuning;
- evaluation, the whole stage: `evaluate_routes` of a ResNet-20 -> ResNet-56 supernet with 12
  stitches (bench_finetune's) over 2,000 images in batches of 500, under `compile_mode("off")` and
  `compile_mode("on")` (what `compile: auto` picks at an evaluation of that size or more).
Best of 3 rounds each. The compiled peer records the first call's seconds in a fresh inductor cache
(`compile_s`, cold) and after `torch._dynamo.reset()` with that cache on disk (`compile_warm_s`, a
later stage or run), and the break-even work: the images (inference) or steps (training) after
which the cold compile has paid for itself (`break_even`, "never" when compiled is not faster).
The compiled values are checked against eager (logits and losses within 1e-3).
(smoke: ResNet-8, 16 images in batches of 8, 2 training steps at batch 8, dynamo's "eager"
backend, which traces without compiling: it checks the harness, not the speed; the evaluation
group: bench_finetune's small supernet of 3 stitches, 16 images, eager only.)
With `--bench-device cuda` (bench/gpu_check.sh) the inference and training groups run on the GPU
with more work per round (20,000 images in batches of 1,000; 50 steps at batch 256), synchronised
before each time is read; the evaluation group runs on the CPU only and skips there.
"""
from __future__ import annotations

import copy
import os
import tempfile
import time
from functools import cache

import pytest
import torch
from common import run_peer

from klas.anchors import load_anchor
from klas.compiling import compile_mode, compiled_parts, supernet_parts
from klas.evaluation.evaluate import evaluate_routes

BASELINE = "eager"


def sizes(smoke: bool, device: torch.device | None = None) -> dict:
    if smoke:
        return {"depth": 8, "images": 16, "eval_batch": 8, "steps": 2, "batch": 8, "backend": "eager", "rounds": 1}
    if device is not None and device.type == "cuda":  # enough work per round for a GPU to be timed
        return {"depth": 56, "images": 20000, "eval_batch": 1000, "steps": 50, "batch": 256, "backend": "inductor",
                "rounds": 3}
    return {"depth": 56, "images": 2000, "eval_batch": 500, "steps": 10, "batch": 64, "backend": "inductor",
            "rounds": 3}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@cache
def anchor(depth: int):
    return load_anchor(f"cifar-resnet:{depth}?pretrained=false&seed=3").eval()


def random_images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _first_call_seconds(fn) -> tuple[float, float]:
    """(cold, warm) seconds of fn's first call: in a fresh inductor cache, then from that cache."""
    import torch._dynamo

    previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="klas-bench-inductor-") as cache_dir:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
        try:
            times = []
            for _ in range(2):
                torch._dynamo.reset()
                began = time.perf_counter()
                fn()
                times.append(time.perf_counter() - began)
        finally:
            if previous is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous
    return times[0], times[1]


def inference_pass(model, z: dict, device: torch.device):
    """A function running `model` over the inference group's random images in batches under inference
    mode, its logits ``[images, classes]`` back once the device is done."""
    batches = random_images(z["images"], 0).to(device).split(z["eval_batch"])

    def forward():
        with torch.inference_mode():
            out = torch.cat([model(b) for b in batches])
        synchronize(device)
        return out

    return forward


def _compile_times(peer: str, parts, fn, backend: str) -> tuple[float | None, dict]:
    """For the compiled peer: the cold compile seconds, and the figures the report shows beside it."""
    if peer != "compiled":
        return None, {}
    with compiled_parts(parts, backend=backend):
        cold, warm = _first_call_seconds(fn)
    return cold, {"compile_s": round(cold, 1), "compile_warm_s": round(warm, 1)}


def _break_even(compile_s: float, eager_s: float, compiled_s: float, units: int):
    """Units of work (images, steps) after which the compile has paid: compile / saving per unit."""
    saving = (eager_s - compiled_s) / units
    return round(compile_s / saving) if saving > 0 else "never"


@pytest.mark.parametrize("peer", [BASELINE, "compiled"])
def test_inference(benchmark, peer, smoke, device):
    z = sizes(smoke, device)
    a = anchor(z["depth"]).to(device)
    forward = inference_pass(a, z, device)

    reference = forward()
    cold, extra = _compile_times(peer, a.blocks, forward, z["backend"])
    with compiled_parts(a.blocks, enabled=peer == "compiled", backend=z["backend"]):
        out = run_peer(benchmark, forward, group="compile, inference", peer=peer, baseline=BASELINE,
                       rounds=z["rounds"], warmup=True, work=z["images"], work_unit="img", **extra)
    torch.testing.assert_close(out, reference, atol=1e-3, rtol=1e-3)
    if peer == "compiled":  # the eager seconds of the same work, timed beside it, for the break-even
        eager_s = min(_timed(forward) for _ in range(z["rounds"]))
        benchmark.extra_info["break_even"] = _break_even(cold, eager_s, benchmark.stats.stats.min, z["images"])


def _timed(fn) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def training_setup(z: dict, device: torch.device):
    """(net, AdamW, images [batch, 3, 32, 32], labels [batch]): a fresh copy of the benchmark's anchor in
    training mode with BatchNorm statistics frozen, as finetuning trains it."""
    net = copy.deepcopy(anchor(z["depth"])).to(device).train()
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    x = random_images(z["batch"], 1).to(device)
    y = torch.randint(0, 10, (z["batch"],), generator=torch.Generator().manual_seed(2)).to(device)
    return net, torch.optim.AdamW(net.parameters(), lr=1e-4), x, y


@pytest.mark.parametrize("peer", [BASELINE, "compiled"])
def test_training(benchmark, peer, smoke, device):
    z = sizes(smoke, device)
    net, opt, x, y = training_setup(z, device)
    start = copy.deepcopy(net.state_dict())

    def steps():
        losses = []
        for _ in range(z["steps"]):
            loss = torch.nn.functional.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss))
        return losses

    def one_step():
        net.load_state_dict(start)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        net.zero_grad(set_to_none=True)
        return float(loss)

    reference = one_step()
    cold, extra = _compile_times(peer, net.blocks, one_step, z["backend"])
    with compiled_parts(net.blocks, enabled=peer == "compiled", backend=z["backend"]):
        assert abs(one_step() - reference) <= 1e-3
        run_peer(benchmark, steps, group="compile, training", peer=peer, baseline=BASELINE, rounds=z["rounds"],
                 warmup=True, work=z["steps"], work_unit="step", **extra)
    if peer == "compiled":
        with compiled_parts(net.blocks, enabled=False):
            eager_s = min(_timed(steps) for _ in range(z["rounds"]))
        benchmark.extra_info["break_even"] = _break_even(cold, eager_s, benchmark.stats.stats.min, z["steps"])


@pytest.mark.parametrize("peer", [BASELINE, "compiled"])
def test_evaluation(benchmark, peer, smoke, device):
    if device.type != "cpu":
        pytest.skip("the evaluation group runs on the CPU (--bench-device cpu)")
    from bench_finetune import sizes as finetune_sizes
    from bench_finetune import supernet

    net = supernet(finetune_sizes(smoke)[2])
    n, batch = (16, 8) if smoke else (2000, 500)
    images = torch.utils.data.TensorDataset(random_images(n, 4), torch.randint(0, 10, (n,), generator=torch.Generator()
                                                                         .manual_seed(5)))
    loader = torch.utils.data.DataLoader(images, batch_size=batch)
    mode = "on" if peer == "compiled" and not smoke else "off"

    def evaluate():
        with compile_mode(mode):
            return [r.correct for r in evaluate_routes(net, loader, progress=False)]

    with compile_mode("off"):
        reference = [r.correct for r in evaluate_routes(net, loader, progress=False)]
    _, extra = _compile_times(peer if mode == "on" else BASELINE, supernet_parts(net), evaluate, "inductor")
    counts = run_peer(benchmark, evaluate, group="compile, evaluation", peer=peer, baseline=BASELINE,
                      rounds=1 if smoke else 3, warmup=True, work=n * len(net), work_unit="route-img", **extra)
    # rounding may flip an image whose two best logits are within an ulp: at most 1 in 1,000 per route
    assert all(abs(a - b) <= max(1, n // 1000) for a, b in zip(counts, reference)), (counts, reference)
    if mode == "on":  # the eager seconds of the same stage, timed beside it, for the break-even
        with compile_mode("off"):
            eager_s = min(_timed(lambda: evaluate_routes(net, loader, progress=False)) for _ in range(2))
        benchmark.extra_info["break_even"] = _break_even(extra["compile_s"], eager_s, benchmark.stats.stats.min,
                                                         n * len(net))
