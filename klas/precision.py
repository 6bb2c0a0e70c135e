"""The precision of a training's steps: the `precision` setting of every training budget
(`adapt`, `finetune`, `recovery`: auto | float32 | bfloat16).

The forward of each training step (adaptation, supernet finetuning, the recovery test's stitching
layers) runs under `torch.autocast` in bfloat16 or stays float32; the weights, the optimizer and
every evaluation (extraction, the route accuracies, the predictions, the recovery test's counts)
stay float32.
- ``auto`` (the default): bfloat16 on CUDA, float32 on the CPU;
- ``float32``: float32 everywhere;
- ``bfloat16``: bfloat16 on every device, the CPU included: on a 2-core AMD EPYC with AVX512-BF16,
  ResNet-56's training steps ran 1.51x and a supernet finetuning stage 1.40x the float32 speed (both
  channels last; bench/bench_memory_format.py, bench/RESULTS.md); a CPU without bfloat16
  instructions may run it slower than float32.

Unlike the compile and memory-format settings, a precision other than auto changes the results
(bfloat16 rounds every activation to 8 significant bits): it enters the fingerprints of the stage,
checkpoint and recovery results it trains, so a result of one precision is never reused as another's.
"""
from __future__ import annotations

import contextlib

import torch

from klas.sections import PRECISIONS

__all__ = ["PRECISIONS", "training_dtype", "training_autocast"]


def training_dtype(precision: str, device) -> torch.dtype:
    """The dtype the forward of a training step runs in on `device` (a torch.device or its name)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return torch.bfloat16 if precision == "bfloat16" else torch.float32


def training_autocast(precision: str, device):
    """A context for the forward of one training step: autocast in bfloat16, or nothing (float32)."""
    device = torch.device(device)
    if training_dtype(precision, device) == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
