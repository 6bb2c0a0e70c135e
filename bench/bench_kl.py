"""Θ benchmark: naive per-pair KL against the torch path, the native kernel (CPU) and Triton (GPU).

    pytest bench/bench_kl.py [-k cifar] [--bench-device cuda] --benchmark-json=RUN.json
    python bench/report.py RUN.json

Θ of K probes against the same K probes (what `klas score` computes in one pass), on the same random
logits for every peer of a shape (one group per shape):
- naive (the baseline): log-softmax per probe, one F.kl_div per (a, b) pair in Python loops;
- torch: klas.kl_matrix(backend="torch") (chunked matrix form), eager and with KLAS_TORCH_COMPILE=1
  (its elementwise passes fused by torch.compile; compiled in the untimed warm-up);
- native (CPU only): the fused C++ kernel csrc/theta_cpu.cpp, the default on CPU;
- triton (CUDA only): klas.kl_matrix(backend="triton");
- liger (CUDA, where Liger-Kernel is installed): its KL divergence, once per pair.
Every peer's Θ is checked against a float64 computation: max |error| is recorded and the test fails
beyond 1e-4 abs + 1e-4 rel. `floor_s` is the larger of the logits read once at the measured copy
bandwidth and 2·K²·N·C FLOPs at the measured fp32 matmul rate; the report gives each time's
fraction of it, and `bare_gemm_of_floor` the same fraction for the cross product alone as one
BLAS matrix product with its operands ready (no softmax, no sums), the most a kernel's product part
reaches at that shape on the machine. The naive peers run after every other peer: on a shared VM, work that ran right
after the naive peer's gigabytes of freed tensors was measured up to 2x slower.
"""
from __future__ import annotations

import os
from functools import cache

import pytest
import torch
import torch.nn.functional as F
from common import best_seconds, run_peer

from klas.scoring.kl import kl_matrix, native_available

SHAPES = {  # name -> (K, N on CPU, N on GPU, C)
    "cifar": (84, 10_000, 10_000, 10),
    "imagenet": (36, 2_000, 50_000, 1000),
    "zoo": (120, 2_000, 10_000, 1000),
}
ZOO_K_GPU = 240
SMOKE_K, SMOKE_N = 12, 300
ROUNDS = 5
TOL = 1e-4  # abs and rel, against float64


@cache
def case(name: str, device: str, smoke: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [K, N, C] on `device`, float64 Θ [K, K]) of one shape; the same for every peer."""
    k, n_cpu, n_gpu, c = SHAPES[name]
    n = n_gpu if device.startswith("cuda") else n_cpu
    if name == "zoo" and device.startswith("cuda"):
        k = ZOO_K_GPU
    if smoke:
        k, n = min(k, SMOKE_K), SMOKE_N
    gen = torch.Generator(device="cpu").manual_seed(0)
    logits = (torch.randn(k, n, c, generator=gen) * 3).to(device)
    return logits, float64_theta(logits)


def float64_theta(logits: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Independent float64 oracle [K, K], chunked over samples."""
    k, n, _ = logits.shape
    self_term = torch.zeros(k, dtype=torch.float64, device=logits.device)
    cross = torch.zeros(k, k, dtype=torch.float64, device=logits.device)
    for s in range(0, n, chunk):
        lp = torch.log_softmax(logits[:, s:s + chunk].double(), dim=-1)
        p = lp.exp()
        self_term += (p * lp).sum(dim=(1, 2))
        cross += p.reshape(k, -1) @ lp.reshape(k, -1).T
    return (self_term[:, None] - cross) / n


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@pytest.fixture(scope="session")
def rates(device) -> tuple[float, float]:
    """(copy bandwidth in bytes/s, fp32 matmul FLOP/s) measured on `device`."""
    x = torch.empty(1 << 28, dtype=torch.uint8, device=device)  # 256 MiB
    y = torch.empty_like(x)
    bandwidth = 2 * x.numel() / best_seconds(lambda: y.copy_(x), 5, lambda: sync(device))
    a = torch.randn(2048, 2048, device=device)
    return bandwidth, 2 * 2048 ** 3 / best_seconds(lambda: a @ a, 5, lambda: sync(device))


@cache
def bare_cross_product_s(name: str, device: str, smoke: bool) -> float:
    """Best seconds of the cross product alone, [K, N·C] @ [N·C, K] in fp32 by torch's BLAS with its
    operands ready (no softmax, no sums): the most any Θ kernel's product part can hope for."""
    logits, _ = case(name, device, smoke)
    k = logits.shape[0]
    p = torch.softmax(logits, dim=-1).reshape(k, -1)
    u = torch.log_softmax(logits, dim=-1).reshape(k, -1)
    return best_seconds(lambda: p @ u.T, ROUNDS, lambda: sync(torch.device(device)))


def per_pair(logits: torch.Tensor, kl_sum) -> torch.Tensor:
    """Θ one pair of blocks at a time: `kl_sum(log_q, log_p)` is Σ p (log p − log q) over a pair's
    samples (torch's and Liger's KL-divergence losses in their `log_target`, sum form)."""
    log_p = [torch.log_softmax(z.float(), dim=-1) for z in logits]
    n = logits.shape[1]
    out = torch.empty(len(log_p), len(log_p), device=logits.device)
    for a in range(len(log_p)):
        for b in range(len(log_p)):
            out[a, b] = kl_sum(log_p[b], log_p[a]) / n
    return out


def naive(logits: torch.Tensor) -> torch.Tensor:
    return per_pair(logits, lambda log_q, log_p: F.kl_div(log_q, log_p, log_target=True, reduction="sum"))


def liger(logits: torch.Tensor) -> torch.Tensor:
    from liger_kernel.transformers import LigerKLDIVLoss

    return per_pair(logits, LigerKLDIVLoss(reduction="sum", log_target=True))


def compiled(logits: torch.Tensor) -> torch.Tensor:
    os.environ["KLAS_TORCH_COMPILE"] = "1"
    try:
        return kl_matrix(logits, logits, backend="torch")
    finally:
        os.environ["KLAS_TORCH_COMPILE"] = "0"


def synced(fn, device):
    def run(z):
        out = fn(z)
        sync(device)
        return out
    return run


PEERS = {  # name -> (function of the logits, where it runs, timed rounds)
    "torch": (lambda z: kl_matrix(z, z, backend="torch"), "any", ROUNDS),
    "torch, KLAS_TORCH_COMPILE=1": (compiled, "any", ROUNDS),
    "native": (lambda z: kl_matrix(z, z, backend="native"), "cpu", ROUNDS),
    "triton": (lambda z: kl_matrix(z, z, backend="triton"), "cuda", ROUNDS),
    "liger (per pair)": (liger, "cuda", 1),
    "naive": (naive, "any", 1),
}


def measure(benchmark, shape, peer, device, smoke, rates):
    fn, where, rounds = PEERS[peer]
    if where != "any" and where != device.type:
        pytest.skip(f"{peer} runs on {where} only")
    if peer == "native" and not native_available():
        pytest.skip("the native extension is not built")
    if peer.startswith("liger"):
        pytest.importorskip("liger_kernel")
    logits, want = case(shape, str(device), smoke)
    k, n, c = logits.shape
    bandwidth, flop_rate = rates
    floor = max(logits.numel() * 4 / bandwidth, 2 * k * k * n * c / flop_rate)
    theta = run_peer(benchmark, synced(fn, device), setup=lambda: ((logits,), {}), group=f"theta {shape} ({device.type})",
                     peer=peer, baseline="naive", rounds=1 if smoke else rounds, K=k, N=n, C=c, floor_s=floor)
    err = (theta.double() - want).abs()
    benchmark.extra_info["max_error"] = float(err.max())
    # the same fraction for the bare matrix product: how near the floor BLAS itself gets at this shape
    benchmark.extra_info["bare_gemm_of_floor"] = round(floor / bare_cross_product_s(shape, str(device), smoke), 3)
    assert bool((err <= TOL + TOL * want.abs()).all()), f"{peer}: max |Θ - float64 Θ| = {err.max():.2e}"


@pytest.mark.parametrize("peer", [p for p in PEERS if p != "naive"],
                         ids=["torch", "torch-compiled", "native", "triton", "liger"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_theta(benchmark, shape, peer, device, smoke, rates):
    measure(benchmark, shape, peer, device, smoke, rates)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_theta_naive(benchmark, shape, device, smoke, rates):
    measure(benchmark, shape, "naive", device, smoke, rates)
