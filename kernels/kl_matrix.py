"""Fused softmax-KL for all probe pairs: logits in, the partial sums of Θ out.

    Θ[a, b] = (1/N) Σ_x [ Σ_c p_a log p_a  −  Σ_c p_a log q_b ],   p = softmax(z_src/T), q = softmax(z_tgt/T)

Two kernels (PyTorch twin: klas.scoring.kl.ThetaAccumulator, oracle: klas.scoring.kl.kl_matrix_reference):

1. `_row_stats_kernel`, one program per (probe, block of samples): an online log-sum-exp over the
   classes gives lse(x) and Σ_c p log p for every (probe, sample), so the log-sum-exp is computed
   once per (probe, sample), not once per pair.
2. `_cross_kernel`, one program per (source tile, target tile, slice of samples): the cross term
   Σ_{x,c} p_a(x,c) · (z_b(x,c)/T − lse_b(x)) as one matrix product over the flattened
   (sample, class) axis. Both operands are formed on the fly from the logits and the row stats
   (probabilities and log-probabilities are never written), the product accumulates in fp32 with
   Kahan compensation (the sum is about N·entropy while Θ can be ~0: cancellation), and the
   slices' sums are added in float64 on the host.

Cost model (Ks + Kt = K probes, N samples, C classes, s bytes per logit):
- pass 1 reads K·N·C·s bytes and writes 8·K·N: memory-bound.
- pass 2 does 2·Ks·Kt·N·C FLOPs and reads every logit once when Ks, Kt ≤ the tile (64), i.e.
  K·N·C·s bytes (plus the row stats): intensity ≈ 2·Ks·Kt / (K·s) FLOP/byte, about 9 for
  Ks = Kt = 36 in fp32, below an H100's fp32 ridge (~15): memory-bound.
- floor: 2·K·N·C·s bytes over the measured bandwidth (bench/bench_kl.py reports the fraction).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from klas.kernels.common import (check_tensors, inverse_temperature, kahan_add, launch_config, online_softmax_step,
                                 row_stats_end, sample_slices)

__all__ = ["kl_partial_sums", "kl_matrix_triton"]


@triton.jit
def _row_stats_kernel(
    z_ptr,  # [K, N, C] logits, any float dtype, contiguous
    lse_ptr,  # [K, N] fp32 out: log-sum-exp of z/T over classes
    plogp_ptr,  # [K, N] fp32 out: Σ_c p log p
    N, C, inv_t,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    k = tl.program_id(0).to(tl.int64)  # int64: k * N * C overflows int32 at zoo scale
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    row = z_ptr + k * N * C + offs_n.to(tl.int64)[:, None] * C
    m = tl.full([BLOCK_N], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_N], tl.float32)
    t = tl.zeros([BLOCK_N], tl.float32)  # Σ exp(z − m) · z
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask = mask_n[:, None] & (offs_c < C)[None, :]
        z = tl.load(row + offs_c[None, :], mask=mask, other=float("-inf")).to(tl.float32) * inv_t
        m, s, t = online_softmax_step(m, s, t, z, mask, mask_n)
    lse, plogp = row_stats_end(m, s, t, mask_n)
    tl.store(lse_ptr + k * N + offs_n, lse, mask=mask_n)
    tl.store(plogp_ptr + k * N + offs_n, plogp, mask=mask_n)


@triton.jit
def _cross_kernel(
    zs_ptr,  # [Ks, N*C] source logits
    zt_ptr,  # [Kt, N*C] target logits
    lse_s_ptr,  # [Ks, N] fp32
    lse_t_ptr,  # [Kt, N] fp32
    out_ptr,  # [S, Ks, Kt] fp32: one partial Σ p_a log q_b per slice of samples
    Ks, Kt, N, C, inv_t, samples_per_slice,
    BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_R: tl.constexpr,
):
    pid_a = tl.program_id(0)
    pid_b = tl.program_id(1)
    pid_s = tl.program_id(2)
    offs_a = pid_a * BLOCK_A + tl.arange(0, BLOCK_A)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_a = offs_a < Ks
    mask_b = offs_b < Kt
    R = N.to(tl.int64) * C
    r_start = pid_s.to(tl.int64) * samples_per_slice * C
    r_end = tl.minimum(r_start + samples_per_slice.to(tl.int64) * C, R)
    src_rows = offs_a.to(tl.int64)[:, None] * R
    tgt_rows = offs_b.to(tl.int64)[:, None] * R
    acc = tl.zeros([BLOCK_A, BLOCK_B], tl.float32)
    comp = tl.zeros([BLOCK_A, BLOCK_B], tl.float32)  # Kahan compensation
    for r0 in range(r_start, r_end, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        mask_r = offs_r < r_end
        x = offs_r // C  # sample of each flattened (sample, class) position
        ma = mask_a[:, None] & mask_r[None, :]
        mb = mask_b[:, None] & mask_r[None, :]
        zs = tl.load(zs_ptr + src_rows + offs_r[None, :], mask=ma, other=0.0).to(tl.float32)
        ls = tl.load(lse_s_ptr + offs_a.to(tl.int64)[:, None] * N + x[None, :], mask=ma, other=0.0)
        p = tl.where(ma, tl.exp(zs * inv_t - ls), 0.0)
        zt = tl.load(zt_ptr + tgt_rows + offs_r[None, :], mask=mb, other=0.0).to(tl.float32)
        lt = tl.load(lse_t_ptr + offs_b.to(tl.int64)[:, None] * N + x[None, :], mask=mb, other=0.0)
        log_q = tl.where(mb, zt * inv_t - lt, 0.0)
        acc, comp = kahan_add(acc, comp, tl.dot(p, tl.trans(log_q), input_precision="ieee"))
    out = out_ptr + pid_s.to(tl.int64) * Ks * Kt + offs_a[:, None] * Kt + offs_b[None, :]
    tl.store(out, acc, mask=mask_a[:, None] & mask_b[None, :])


def _launch_row_stats(z: torch.Tensor, inv_t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """lse and Σ_c p log p ``[K, N]`` fp32 of logits z ``[K, N, C]`` (contiguous)."""
    k, n, c = z.shape
    lse = torch.empty(k, n, dtype=torch.float32, device=z.device)
    plogp = torch.empty_like(lse)
    cfg = launch_config(BLOCK_N=16, BLOCK_C=c, high=128)
    grid = (k, triton.cdiv(n, cfg.blocks["BLOCK_N"]))
    _row_stats_kernel[grid](z, lse, plogp, n, c, inv_t, num_warps=cfg.num_warps, **cfg.blocks)
    return lse, plogp


def _launch_cross(src: torch.Tensor, tgt: torch.Tensor, lse_s: torch.Tensor, lse_t: torch.Tensor, inv_t: float,
                  num_slices: int | None) -> torch.Tensor:
    """Partial Σ p_a log q_b ``[S, Ks, Kt]`` fp32, one per slice of samples."""
    ks, n, c = src.shape
    kt = tgt.shape[0]
    cfg = launch_config(BLOCK_A=ks, BLOCK_B=kt, BLOCK_R=64)
    tiles = triton.cdiv(ks, cfg.blocks["BLOCK_A"]) * triton.cdiv(kt, cfg.blocks["BLOCK_B"])
    slices, per_slice = sample_slices(n, tiles, src.device, per_sm=4, min_samples=64 if num_slices is None else 1,
                                      num_slices=num_slices)
    partial = torch.empty(slices, ks, kt, dtype=torch.float32, device=src.device)
    grid = (triton.cdiv(ks, cfg.blocks["BLOCK_A"]), triton.cdiv(kt, cfg.blocks["BLOCK_B"]), slices)
    _cross_kernel[grid](src, tgt, lse_s, lse_t, partial, ks, kt, n, c, inv_t, per_slice, num_warps=cfg.num_warps,
                        **cfg.blocks)
    return partial


def kl_partial_sums(logits_src: torch.Tensor, logits_tgt: torch.Tensor, *, temperature: float = 1.0,
                    num_slices: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_x Σ_c p_a log p_a ``[Ks]`` and Σ_x Σ_c p_a log q_b ``[Ks, Kt]``, both float64.

    logits_src ``[Ks, N, C]``, logits_tgt ``[Kt, N, C]`` (fp32, fp16 or bf16), on one device.
    """
    check_tensors("kl_partial_sums", float_inputs={"logits_src": logits_src, "logits_tgt": logits_tgt},
                  ndim={"logits_src": 3, "logits_tgt": 3})
    if logits_src.shape[1:] != logits_tgt.shape[1:]:
        raise ValueError(f"kl_partial_sums: logits_src {list(logits_src.shape)} and logits_tgt "
                         f"{list(logits_tgt.shape)} differ in samples or classes")
    src, tgt = logits_src.contiguous(), logits_tgt.contiguous()
    inv_t = inverse_temperature("kl_partial_sums", temperature)
    lse_s, plogp_s = _launch_row_stats(src, inv_t)
    lse_t, _ = _launch_row_stats(tgt, inv_t)
    partial = _launch_cross(src, tgt, lse_s, lse_t, inv_t, num_slices)
    return plogp_s.sum(dim=1, dtype=torch.float64), partial.sum(dim=0, dtype=torch.float64)


def kl_matrix_triton(logits_src: torch.Tensor, logits_tgt: torch.Tensor, *, temperature: float = 1.0,
                     num_slices: int | None = None) -> torch.Tensor:
    """Θ ``[Ks, Kt]`` float32 with the fused kernels (same meaning as klas.kl_matrix)."""
    self_term, cross = kl_partial_sums(logits_src, logits_tgt, temperature=temperature, num_slices=num_slices)
    return ((self_term[:, None] - cross) / logits_src.shape[1]).float()
