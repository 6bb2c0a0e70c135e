"""What the kernels share: the online softmax step, the row-statistics ending, the compensated
(Kahan) update, the checks every launcher makes on its inputs, and the launch configuration.

Every kernel file has the same shape (Liger-Kernel's): `@triton.jit` kernels -> a launcher
(`_launch_*`) that checks its inputs (`check_tensors`) and takes block sizes, `num_warps` and the
grid from `launch_config` here -> an `autograd.Function` where there is a backward -> the
functional front that klas calls.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

__all__ = ["online_softmax_step", "row_stats_end", "kahan_add", "check_tensors", "inverse_temperature", "tile", "launch_config",
           "LaunchConfig", "sample_slices"]

FLOAT_TYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def online_softmax_step(m, s, t, z, mask, mask_n):
    """Folds one tile of classes z ``[rows, classes]`` into each row's running max m, Σ exp(z − m) s
    and Σ exp(z − m)·z t; rows outside mask_n stay finite."""
    m_new = tl.where(mask_n, tl.maximum(m, tl.max(z, axis=1)), 0.0)
    alpha = tl.exp(m - m_new)
    e = tl.where(mask, tl.exp(z - m_new[:, None]), 0.0)
    s = s * alpha + tl.sum(e, axis=1)
    t = t * alpha + tl.sum(e * tl.where(mask, z, 0.0), axis=1)
    return m_new, s, t


@triton.jit
def row_stats_end(m, s, t, mask_n):
    """The end of an online softmax over classes: (lse, Σ_c p log p) of each row from its running
    max m, Σ exp(z − m) s and Σ exp(z − m)·z t; rows outside mask_n give finite values."""
    s = tl.where(mask_n, s, 1.0)
    lse = m + tl.log(s)
    return lse, t / s - lse


@triton.jit
def kahan_add(acc, comp, y):
    """acc + y with Kahan compensation `comp` (the running sum is ~N·entropy while Θ can be ~0, so
    plain fp32 accumulation would cancel); returns the new (acc, comp)."""
    y = y - comp
    total = acc + y
    comp = (total - acc) - y
    return total, comp


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def inverse_temperature(where: str, temperature) -> float:
    """1 / temperature after checking that it lies in klas.limits' range (the rule of
    klas.scoring.kl.check_temperature, so a launcher refuses what the checked API refuses)."""
    from klas.limits import MAX_TEMPERATURE, MIN_TEMPERATURE

    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE:
        raise ValueError(f"{where}: temperature must lie in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}], "
                         f"got {temperature!r}")
    return 1.0 / float(temperature)


def check_tensors(where: str, *, float_inputs: dict[str, torch.Tensor] | None = None,
                  other: dict[str, torch.Tensor] | None = None, ndim: dict[str, int] | None = None) -> torch.device:
    """The device every tensor is on, after checking: one device, CUDA (or any under the Triton
    interpreter), float inputs of a supported dtype and finite shapes of the named ranks. ValueError
    naming the launcher and the tensor otherwise."""
    tensors = {**(float_inputs or {}), **(other or {})}
    devices = {t.device for t in tensors.values()}
    if len(devices) != 1:
        raise ValueError(f"{where}: tensors on several devices {sorted(map(str, devices))}")
    (device,) = devices
    if device.type != "cuda" and not _interpreted():
        raise ValueError(f"{where}: Triton kernels run on CUDA tensors (got {device}; TRITON_INTERPRET=1 runs them "
                         "on the CPU)")
    for name, t in (float_inputs or {}).items():
        if t.dtype not in FLOAT_TYPES:
            raise ValueError(f"{where}: {name} has dtype {t.dtype}; use float32, float16 or bfloat16")
    for name, rank in (ndim or {}).items():
        if tensors[name].dim() != rank:
            raise ValueError(f"{where}: {name} must have {rank} dimensions, got shape {list(tensors[name].shape)}")
    return device


def tile(size: int, low: int = 16, high: int = 64) -> int:
    """A power-of-two block covering `size`, within [low, high] (tl.dot needs at least 16)."""
    return min(high, max(low, triton.next_power_of_2(max(1, size))))


@dataclass(frozen=True)
class LaunchConfig:
    """Block sizes by name and the warps per program of one kernel launch."""
    blocks: dict
    num_warps: int


def launch_config(*, num_warps: int = 4, high: int = 64, **sizes: int) -> LaunchConfig:
    """The blocks of one launch from the sizes they tile (`tile` of each, at most `high`), and its
    warps per program: Triton's default 4 unless a launcher has measured better on a GPU (none has
    yet; `triton.testing.do_bench` in bench/bench_kl.py is where to measure it)."""
    return LaunchConfig({name: tile(size, high=high) for name, size in sizes.items()}, num_warps)


def sample_slices(n: int, tiles: int, device: torch.device, *, per_sm: int, min_samples: int,
                  num_slices: int | None = None) -> tuple[int, int]:
    """(slices, samples per slice) that split n samples so that tiles × slices programs fill the
    device (`per_sm` programs per multiprocessor), each slice at least `min_samples` long (a
    multiple of it)."""
    if num_slices is None:
        sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 2
        num_slices = max(1, min(triton.cdiv(n, min_samples), triton.cdiv(per_sm * sms, tiles)))
    per_slice = triton.cdiv(triton.cdiv(n, num_slices), min_samples) * min_samples
    return triton.cdiv(n, per_slice), per_slice
