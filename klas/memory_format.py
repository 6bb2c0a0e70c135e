"""The memory format of the models while a stage runs: the `memory_format` setting
(auto | channels_last | contiguous).

Convolutions run faster on some devices when their weights and feature maps are stored channels
last (``[B, C, H, W]`` tensors whose C varies fastest): `channels_last_models(modules, device)`
stores every 4-D weight of the modules so for the length of a `with` block, and contiguous again
after it, so that whatever a stage saves or hands on looks as before. A convolution whose weight is
channels last gives a channels-last output, so the feature maps follow without converting the
images; shapes, names and every tensor's values stay what they were (the sums of a convolution
run in another order: values equal within float rounding, tests/test_memory_format.py).

When the models are stored channels last (`uses_channels_last`):
- ``contiguous``: never;
- ``channels_last``: on every device;
- ``auto`` (the default): on the CPU, where bench/bench_memory_format.py measured it on a 2-core
  AMD EPYC (bench/RESULTS.md): ResNet-56 ran 1.26x the contiguous speed in eager inference, 1.08x
  compiled, 1.14x in training steps, and a finetuning stage 1.23x; on CUDA contiguous, until a
  GPU run of bench/gpu_check.sh measures it there.

The mode is set for a block of code with `memory_format_mode("contiguous")` (klas run sets the
config's `memory_format`), or per process with the environment variable KLAS_MEMORY_FORMAT.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

from klas.modes import ProcessMode

__all__ = ["MEMORY_FORMATS", "memory_format_mode", "current_memory_format", "uses_channels_last",
           "channels_last_models"]

MEMORY_FORMATS = ("auto", "channels_last", "contiguous")

_MODE = ProcessMode(MEMORY_FORMATS, what="memory format", setting="memory_format", env="KLAS_MEMORY_FORMAT")


def current_memory_format() -> str:
    """The mode in force: the innermost `memory_format_mode`, else $KLAS_MEMORY_FORMAT, else auto."""
    return _MODE.current()


def memory_format_mode(mode: str):
    """Sets the memory format mode (auto | channels_last | contiguous) inside the `with` block."""
    return _MODE.set(mode)


def uses_channels_last(device) -> bool:
    """Whether models on `device` (a torch.device or its name) are stored channels last under the
    current mode."""
    import torch

    mode = current_memory_format()
    if mode != "auto":
        return mode == "channels_last"
    return torch.device(device).type == "cpu"


def _store(modules: list, memory_format) -> None:
    import torch

    with torch.inference_mode(False):  # under inference mode the new storage would be an inference tensor
        for module in modules:
            for t in [*module.parameters(), *module.buffers()]:
                if t.dim() == 4 and not t.is_contiguous(memory_format=memory_format):
                    t.data = t.data.contiguous(memory_format=memory_format)


@contextlib.contextmanager
def channels_last_models(modules: Iterable, device) -> Iterator[bool]:
    """Inside the block, every 4-D parameter and buffer of `modules` (torch modules) is stored
    channels last when `uses_channels_last(device)`; contiguous again after it. The tensors stay
    the same objects (an optimizer holding them keeps working); yields whether it converted."""
    import torch

    modules = list(dict.fromkeys(modules))
    enabled = uses_channels_last(device)
    if enabled:
        _store(modules, torch.channels_last)
    try:
        yield enabled
    finally:
        if enabled:
            _store(modules, torch.contiguous_format)
