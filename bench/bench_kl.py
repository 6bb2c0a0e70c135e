"""Θ benchmark: naive per-pair KL vs our torch path (and, on a GPU, the Triton kernels and Liger-Kernel).

    python bench/bench_kl.py [--shapes cifar,imagenet,zoo] [--device cpu|cuda]

Θ of K probes against the same K probes (what `klas score` computes in one pass), on the same
random logits for every peer:
- naive: log-softmax per probe, one F.kl_div per (a, b) pair in Python loops;
- torch: klas.kl_matrix(backend="torch") (chunked matrix form), eager and with KLAS_TORCH_COMPILE=1
  (its elementwise passes fused by torch.compile; the compile happens in the untimed warm-up);
- native (CPU only): klas.kl_matrix(backend="native"), the fused C++ kernel csrc/theta_cpu.cpp and
  the default on CPU (backend="auto"), on torch.get_num_threads() threads;
- triton (CUDA only): klas.kl_matrix(backend="triton");
- liger (CUDA, if installed): Liger-Kernel's KL divergence, once per pair.
Every peer's Θ is checked against a float64 computation (max |error| and the 1e-4 abs + rel test).
Floors: the logits read once over the measured copy bandwidth, and 2·K²·N·C FLOPs over the measured
fp32 matmul rate; each time is reported as a ratio to naive and as the fraction of the floor.
Results are appended to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import append_results  # noqa: E402

from klas.scoring.kl import kl_matrix, native_available  # noqa: E402

SHAPES = {  # name -> (K, N on CPU, N on GPU, C)
    "cifar": (84, 10_000, 10_000, 10),
    "imagenet": (36, 2_000, 50_000, 1000),
    "zoo": (120, 2_000, 10_000, 1000),
}
ZOO_K_GPU = 240


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats):
    """(seconds, output) of fn: on a GPU Triton's `do_bench` (warm-up, cache flush, median of runs),
    on the CPU the best of `repeats` wall-clock runs."""
    if device.type == "cuda":
        from triton.testing import do_bench

        out = fn()
        return do_bench(fn, warmup=max(25, repeats), rep=max(100, 20 * repeats), return_mode="median") / 1e3, out
    best = float("inf")
    out = None
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best, out


def naive(logits):
    log_p = [torch.log_softmax(z.float(), dim=-1) for z in logits]
    n = logits.shape[1]
    out = torch.empty(len(log_p), len(log_p), device=logits.device)
    for a in range(len(log_p)):
        for b in range(len(log_p)):
            out[a, b] = F.kl_div(log_p[b], log_p[a], log_target=True, reduction="sum") / n
    return out


def liger(logits):
    from liger_kernel.transformers import LigerKLDIVLoss

    loss = LigerKLDIVLoss(reduction="sum", log_target=True)
    log_p = [torch.log_softmax(z.float(), dim=-1) for z in logits]
    n = logits.shape[1]
    out = torch.empty(len(log_p), len(log_p), device=logits.device)
    for a in range(len(log_p)):
        for b in range(len(log_p)):
            out[a, b] = loss(log_p[b], log_p[a]) / n
    return out


def compiled(logits):
    os.environ["KLAS_TORCH_COMPILE"] = "1"
    try:
        return kl_matrix(logits, logits, backend="torch")
    finally:
        os.environ["KLAS_TORCH_COMPILE"] = "0"


def float64_theta(logits, chunk=256):
    """Independent float64 oracle, chunked over samples."""
    k, n, c = logits.shape
    self_term = torch.zeros(k, dtype=torch.float64, device=logits.device)
    cross = torch.zeros(k, k, dtype=torch.float64, device=logits.device)
    for s in range(0, n, chunk):
        lp = torch.log_softmax(logits[:, s:s + chunk].double(), dim=-1)
        p = lp.exp()
        self_term += (p * lp).sum(dim=(1, 2))
        flat_p, flat_lp = p.reshape(k, -1), lp.reshape(k, -1)
        cross += flat_p @ flat_lp.T
    return (self_term[:, None] - cross) / n


def measure_bandwidth(device) -> float:
    x = torch.empty(1 << 28, dtype=torch.uint8, device=device)  # 256 MiB
    y = torch.empty_like(x)
    t, _ = timed(lambda: y.copy_(x), device, 5)
    return 2 * x.numel() / t  # read + write bytes per second


def measure_matmul(device) -> float:
    a = torch.randn(2048, 2048, device=device)
    t, _ = timed(lambda: a @ a, device, 5)
    return 2 * 2048 ** 3 / t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="cifar,imagenet,zoo")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    device = torch.device(args.device)
    bandwidth, flop_rate = measure_bandwidth(device), measure_matmul(device)
    lines = [f"Device {device}; measured copy bandwidth {bandwidth / 1e9:.1f} GB/s, fp32 matmul "
             f"{flop_rate / 1e12:.3f} TFLOP/s. Θ of K probes against themselves, fp32 logits, best of "
             f"{args.repeats} (naive: 1 run). Error: max |Θ − float64 Θ|; pass: within 1e-4 abs + 1e-4 rel.", "",
             "| shape | K | N | C | peer | time s | vs naive | floor s | of floor | max error | pass |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|"]
    # Our peers on every shape first, then the float64 oracle and the naive peer: on the shared VM,
    # work that ran after the naive peer's gigabytes of freed tensors was measured up to 2x slower
    # (fresh memory is slow to fault back in there), which would flatter the ratios.
    cases = []
    for name in args.shapes.split(","):
        k, n_cpu, n_gpu, c = SHAPES[name]
        n = n_gpu if device.type == "cuda" else n_cpu
        if name == "zoo" and device.type == "cuda":
            k = ZOO_K_GPU
        gen = torch.Generator(device="cpu").manual_seed(0)
        logits = (torch.randn(k, n, c, generator=gen) * 3).to(device)
        peers = {"torch": (lambda z=logits: kl_matrix(z, z, backend="torch"), args.repeats),
                 "torch, KLAS_TORCH_COMPILE=1": (lambda z=logits: compiled(z), args.repeats)}
        if device.type == "cpu" and native_available():
            peers["native"] = (lambda z=logits: kl_matrix(z, z, backend="native"), args.repeats)
        if device.type == "cuda":
            peers["triton"] = (lambda z=logits: kl_matrix(z, z, backend="triton"), args.repeats)
            try:
                import liger_kernel  # noqa: F401

                peers["liger (per pair)"] = (lambda z=logits: liger(z), 1)
            except ImportError:
                pass
        measured = {}
        for peer, (fn, reps) in peers.items():
            fn()  # warm-up (compilation, caches)
            measured[peer] = timed(fn, device, reps)
        cases.append((name, logits, measured))
    for name, logits, measured in cases:
        k, n, c = logits.shape
        measured = {"naive": timed(lambda: naive(logits), device, 1), **measured}
        want = float64_theta(logits)
        floor = max(logits.numel() * 4 / bandwidth, 2 * k * k * n * c / flop_rate)
        t_naive = measured["naive"][0]
        for peer, (t, theta) in measured.items():
            err = (theta.double() - want).abs()
            ok = bool((err <= 1e-4 + 1e-4 * want.abs()).all())
            lines.append(f"| {name} | {k} | {n} | {c} | {peer} | {t:.4f} | {t_naive / t:.1f}x | {floor:.4f} | "
                         f"{floor / t:.1%} | {err.max():.1e} | {'yes' if ok else 'NO'} |")
            print(lines[-1], flush=True)
    peers = "torch vs triton" if device.type == "cuda" else "torch vs native"
    append_results(f"Θ (kl_matrix): naive vs {peers} on {device}",
                   lines + ["", "Command: `python bench/bench_kl.py" + (f" --device {args.device}`" if args.device != "cpu" else "`")])


if __name__ == "__main__":
    main()
