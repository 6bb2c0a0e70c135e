"""Fused probe projection + softmax + KL: pooled features and probe weights in, partial Θ out.

For a chunk of n samples, source probes a (features f_a ``[n, d_a]``, weights W_a ``[C, d_a]``, bias
β_a) and target probes b, this computes Σ_x Σ_c p_a log p_a ``[Ks]`` and Σ_x Σ_c p_a log q_b
``[Ks, Kt]`` with z = f·Wᵀ + β formed tile by tile in registers: the logits are never written to
memory. PyTorch twin: klas.scoring.kl.probe_logits followed by klas.scoring.kl.ThetaAccumulator.

Layout: every probe's features are columns of one matrix ``[n, Σ d]`` (a cache row has this layout
already); the weights are packed once into ``[K, C, D]``, zero-padded to the widest probe D. A
probe given as None reads its columns as logits, as an identity projection.

Kernels:
1. `_probe_row_stats_kernel`, per (probe, block of samples): the projection tile by tile with an
   online log-sum-exp over the classes -> lse ``[K, n]`` and Σ_c p log p ``[K, n]``.
2. `_probe_cross_kernel`, per (source tile, target tile, slice of samples): batched projections of
   the tiles' probes (3-D dots), p and log q in registers, then one dot over (sample, class)
   accumulated with Kahan compensation; slices are summed in float64 on the host.

Cost model (n samples, C classes, widths d, Ks + Kt = K probes, tiles of BA x BB probes):
- projections: 2·n·C·Σd FLOPs in pass 1, and again ceil(Kt/BB) times for the sources plus
  ceil(Ks/BA) times for the targets in pass 2 (recomputed rather than stored);
- cross product: 2·Ks·Kt·n·C FLOPs; bytes: the features ``n·Σd·s`` per recomputation plus the
  packed weights. With d ~ C (ImageNet probes) the projections dominate: compute-bound; the saving
  is the logits traffic 2·K·n·C·4 bytes and their memory.
"""
from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl

from klas.kernels.common import (check_tensors, inverse_temperature, kahan_add, launch_config, online_softmax_step,
                                 row_stats_end, sample_slices)

__all__ = ["ProbePack", "probe_kl_partial"]


@triton.jit
def _probe_row_stats_kernel(
    x_ptr,  # [n, W] features of every probe side by side (row stride stride_x)
    off_ptr,  # [K] int32: first column of each probe's features
    wid_ptr,  # [K] int32: width of each probe's features
    w_ptr,  # [K, C, D] fp32 packed weights, zero beyond the width
    b_ptr,  # [K, C] fp32 bias
    lse_ptr,  # [K, n] fp32 out
    plogp_ptr,  # [K, n] fp32 out
    n, C, D, stride_x, inv_t,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
):
    k = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < n
    col0 = tl.load(off_ptr + k)
    width = tl.load(wid_ptr + k)
    w_base = w_ptr + k.to(tl.int64) * C * D
    m = tl.full([BLOCK_N], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_N], tl.float32)
    t = tl.zeros([BLOCK_N], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        z = tl.zeros([BLOCK_N, BLOCK_C], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            f = tl.load(x_ptr + offs_n.to(tl.int64)[:, None] * stride_x + col0 + offs_d[None, :],
                        mask=mask_n[:, None] & (offs_d < width)[None, :], other=0.0).to(tl.float32)
            w = tl.load(w_base + offs_c[None, :] * D + offs_d[:, None],
                        mask=mask_c[None, :] & (offs_d < D)[:, None], other=0.0)
            z += tl.dot(f, w, input_precision="ieee")
        z = (z + tl.load(b_ptr + k * C + offs_c, mask=mask_c, other=0.0)[None, :]) * inv_t
        mask = mask_n[:, None] & mask_c[None, :]
        z = tl.where(mask, z, float("-inf"))
        m, s, t = online_softmax_step(m, s, t, z, mask, mask_n)
    lse, plogp = row_stats_end(m, s, t, mask_n)
    tl.store(lse_ptr + k * n + offs_n, lse, mask=mask_n)
    tl.store(plogp_ptr + k * n + offs_n, plogp, mask=mask_n)


@triton.jit
def _project_tile(x_ptr, off_ptr, wid_ptr, w_ptr, b_ptr, probes, mask_k, offs_n, mask_n, offs_c, mask_c,
                  C, D, stride_x, inv_t,
                  BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr):
    """Logits/T ``[BLOCK_K, BLOCK_N, BLOCK_C]`` of a tile of probes on a tile of (samples, classes)."""
    col0 = tl.load(off_ptr + probes, mask=mask_k, other=0)
    width = tl.load(wid_ptr + probes, mask=mask_k, other=0)
    z = tl.zeros([BLOCK_K, BLOCK_N, BLOCK_C], tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        f = tl.load(x_ptr + offs_n.to(tl.int64)[None, :, None] * stride_x + col0[:, None, None] + offs_d[None, None, :],
                    mask=(mask_k[:, None, None] & mask_n[None, :, None] & (offs_d[None, None, :] < width[:, None, None])),
                    other=0.0).to(tl.float32)
        w = tl.load(w_ptr + probes.to(tl.int64)[:, None, None] * C * D + offs_c[None, None, :] * D + offs_d[None, :, None],
                    mask=mask_k[:, None, None] & mask_c[None, None, :] & (offs_d < D)[None, :, None], other=0.0)
        z += tl.dot(f, w, input_precision="ieee")
    bias = tl.load(b_ptr + probes[:, None] * C + offs_c[None, :], mask=mask_k[:, None] & mask_c[None, :], other=0.0)
    return (z + bias[:, None, :]) * inv_t


@triton.jit
def _probe_cross_kernel(
    xs_ptr, offs_ptr, wids_ptr, ws_ptr, bs_ptr, lse_s_ptr,  # source side (see the row-stats kernel)
    xt_ptr, offt_ptr, widt_ptr, wt_ptr, bt_ptr, lse_t_ptr,  # target side
    out_ptr,  # [S, Ks, Kt] fp32 partial Σ p_a log q_b
    Ks, Kt, n, C, Ds, Dt, stride_s, stride_t, inv_t, samples_per_slice,
    BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_s = tl.program_id(2)
    src = tl.program_id(0) * BLOCK_A + tl.arange(0, BLOCK_A)
    tgt = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_a = src < Ks
    mask_b = tgt < Kt
    acc = tl.zeros([BLOCK_A, BLOCK_B], tl.float32)
    comp = tl.zeros([BLOCK_A, BLOCK_B], tl.float32)  # Kahan compensation
    x_start = pid_s * samples_per_slice
    x_end = tl.minimum(x_start + samples_per_slice, n)
    for x0 in range(x_start, x_end, BLOCK_N):
        offs_n = x0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < x_end
        ls = tl.load(lse_s_ptr + src[:, None] * n + offs_n[None, :], mask=mask_a[:, None] & mask_n[None, :], other=0.0)
        lt = tl.load(lse_t_ptr + tgt[:, None] * n + offs_n[None, :], mask=mask_b[:, None] & mask_n[None, :], other=0.0)
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            mask_c = offs_c < C
            zs = _project_tile(xs_ptr, offs_ptr, wids_ptr, ws_ptr, bs_ptr, src, mask_a, offs_n, mask_n, offs_c, mask_c,
                               C, Ds, stride_s, inv_t, BLOCK_A, BLOCK_N, BLOCK_C, BLOCK_D)
            ma = mask_a[:, None, None] & mask_n[None, :, None] & mask_c[None, None, :]
            p = tl.where(ma, tl.exp(zs - ls[:, :, None]), 0.0)
            zt = _project_tile(xt_ptr, offt_ptr, widt_ptr, wt_ptr, bt_ptr, tgt, mask_b, offs_n, mask_n, offs_c, mask_c,
                               C, Dt, stride_t, inv_t, BLOCK_B, BLOCK_N, BLOCK_C, BLOCK_D)
            mb = mask_b[:, None, None] & mask_n[None, :, None] & mask_c[None, None, :]
            log_q = tl.where(mb, zt - lt[:, :, None], 0.0)
            acc, comp = kahan_add(acc, comp, tl.dot(tl.reshape(p, (BLOCK_A, BLOCK_N * BLOCK_C)),
                                                    tl.trans(tl.reshape(log_q, (BLOCK_B, BLOCK_N * BLOCK_C))),
                                                    input_precision="ieee"))
    out = out_ptr + pid_s.to(tl.int64) * Ks * Kt + src[:, None] * Kt + tgt[None, :]
    tl.store(out, acc, mask=mask_a[:, None] & mask_b[None, :])


class ProbePack:
    """One side's probes packed for the kernels: weights ``[K, C, D]``, bias ``[K, C]``, and where each
    probe's features sit in the concatenated feature matrix. Built once, used for every chunk."""

    def __init__(self, probes: Sequence, widths: Sequence[int], num_classes: int, device):
        self.k = len(probes)
        self.c = num_classes
        self.d = max(widths)
        self.widths = torch.tensor(list(widths), dtype=torch.int32, device=device)
        self.offsets = torch.tensor([sum(widths[:i]) for i in range(len(widths))], dtype=torch.int32, device=device)
        self.weight = torch.zeros(self.k, num_classes, self.d, dtype=torch.float32, device=device)
        self.bias = torch.zeros(self.k, num_classes, dtype=torch.float32, device=device)
        for i, (probe, w) in enumerate(zip(probes, widths)):
            if probe is None:  # the features are logits: identity projection
                if w != num_classes:
                    raise ValueError(f"probe {i} is None but its features have width {w}, not C={num_classes}")
                self.weight[i, :, :w] = torch.eye(num_classes, device=device)
            else:
                weight, bias = probe
                if tuple(weight.shape) != (num_classes, w):
                    raise ValueError(f"probe {i}: weight {list(weight.shape)} does not match [C={num_classes}, d={w}]")
                self.weight[i, :, :w] = weight.float()
                self.bias[i] = bias.float()
        if not (torch.isfinite(self.weight).all() and torch.isfinite(self.bias).all()):
            raise ValueError("probe weights hold NaN or Inf values")
        self.total_width = sum(widths)


def _launch_probe_row_stats(pack: ProbePack, x: torch.Tensor, inv_t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """lse and Σ_c p log p ``[K, n]`` fp32 of `pack`'s probes on features x ``[n, Σ d]``."""
    n = x.shape[0]
    lse = torch.empty(pack.k, n, dtype=torch.float32, device=x.device)
    plogp = torch.empty_like(lse)
    cfg = launch_config(BLOCK_N=16, BLOCK_C=pack.c, BLOCK_D=pack.d)
    grid = (pack.k, triton.cdiv(n, cfg.blocks["BLOCK_N"]))
    _probe_row_stats_kernel[grid](x, pack.offsets, pack.widths, pack.weight, pack.bias, lse, plogp,
                                  n, pack.c, pack.d, x.stride(0), inv_t, num_warps=cfg.num_warps, **cfg.blocks)
    return lse, plogp


def _launch_probe_cross(xs: torch.Tensor, pack_src: ProbePack, lse_s: torch.Tensor, xt: torch.Tensor,
                        pack_tgt: ProbePack, lse_t: torch.Tensor, inv_t: float,
                        num_slices: int | None) -> torch.Tensor:
    """Partial Σ p_a log q_b ``[S, Ks, Kt]`` fp32, one per slice of samples."""
    n = xs.shape[0]
    cfg = launch_config(BLOCK_A=16, BLOCK_B=16, BLOCK_N=16, BLOCK_C=pack_src.c, BLOCK_D=max(pack_src.d, pack_tgt.d),
                        high=32)
    b = cfg.blocks
    tiles = triton.cdiv(pack_src.k, b["BLOCK_A"]) * triton.cdiv(pack_tgt.k, b["BLOCK_B"])
    slices, per_slice = sample_slices(n, tiles, xs.device, per_sm=2, min_samples=b["BLOCK_N"], num_slices=num_slices)
    partial = torch.empty(slices, pack_src.k, pack_tgt.k, dtype=torch.float32, device=xs.device)
    grid = (triton.cdiv(pack_src.k, b["BLOCK_A"]), triton.cdiv(pack_tgt.k, b["BLOCK_B"]), slices)
    _probe_cross_kernel[grid](
        xs, pack_src.offsets, pack_src.widths, pack_src.weight, pack_src.bias, lse_s,
        xt, pack_tgt.offsets, pack_tgt.widths, pack_tgt.weight, pack_tgt.bias, lse_t,
        partial, pack_src.k, pack_tgt.k, n, pack_src.c, pack_src.d, pack_tgt.d, xs.stride(0), xt.stride(0), inv_t,
        per_slice, num_warps=cfg.num_warps, **b,
    )
    return partial


def _features_matrix(features: Sequence[torch.Tensor], pack: ProbePack, side: str) -> torch.Tensor:
    """The probes' features side by side ``[n, Σ d]``, checked against the pack."""
    features = list(features)
    check_tensors(f"probe_kl_partial ({side})", float_inputs={f"features[{k}]": f for k, f in enumerate(features)},
                  other={"weights": pack.weight}, ndim={f"features[{k}]": 2 for k in range(len(features))})
    if len(features) != pack.k or [f.shape[1] for f in features] != pack.widths.tolist():
        raise ValueError(f"probe_kl_partial ({side}): features of widths {[f.shape[1] for f in features]} for probes "
                         f"of widths {pack.widths.tolist()}")
    x = torch.cat(features, dim=1)  # features only: the logits are never materialised
    if not torch.isfinite(x).all():
        raise ValueError("features hold NaN or Inf values")
    return x


def probe_kl_partial(feats_src: Sequence[torch.Tensor], pack_src: ProbePack, feats_tgt: Sequence[torch.Tensor] | None,
                     pack_tgt: ProbePack, *, temperature: float = 1.0,
                     num_slices: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ p_a log p_a ``[Ks]`` and Σ p_a log q_b ``[Ks, Kt]`` (float64) over one chunk of samples.

    feats_*: one ``[n, d_k]`` tensor per probe; feats_tgt None means the same features as the source.
    """
    xs = _features_matrix(feats_src, pack_src, "source")
    xt = xs if feats_tgt is None else _features_matrix(feats_tgt, pack_tgt, "target")
    if pack_src.c != pack_tgt.c or xt.shape[0] != xs.shape[0]:
        raise ValueError(f"probe_kl_partial: {pack_src.c} and {pack_tgt.c} classes, {xs.shape[0]} and {xt.shape[0]} "
                         "samples; both sides need the same")
    inv_t = inverse_temperature("probe_kl_partial", temperature)
    lse_s, plogp_s = _launch_probe_row_stats(pack_src, xs, inv_t)
    lse_t = lse_s if (feats_tgt is None and pack_tgt is pack_src) else _launch_probe_row_stats(pack_tgt, xt, inv_t)[0]
    partial = _launch_probe_cross(xs, pack_src, lse_s, xt, pack_tgt, lse_t, inv_t, num_slices)
    return plogp_s.sum(dim=1, dtype=torch.float64), partial.sum(dim=0, dtype=torch.float64)
