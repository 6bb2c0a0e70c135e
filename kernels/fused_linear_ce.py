"""Fused linear + softmax cross-entropy, forward and backward, for training many probes at once.

For a group of n probes of one width w (klas.scoring.probes.JointProbes): features x ``[b, n, w]``, weights
W ``[n, C, w]``, bias β ``[n, C]``, targets y ``[b, n]``. One program per (probe, block of samples)
forms its logits tile in registers, takes the log-sum-exp, adds its share of each probe's mean
cross-entropy, and, in the same pass, the gradients ``dW = (softmax − onehot)ᵀ x / b`` and
``dβ``, accumulated with atomic adds. The logits never reach memory and no second pass over the
features is needed for the backward (the loss is linear in what backward multiplies it by).
PyTorch twin: klas.scoring.probes.probe_losses on ``einsum("bnw,ncw->bnc", x, W) + β``.

Cost model (b samples, n probes, C classes, w width): 4·b·n·C·w FLOPs (logits and dW), reads x
twice per program (b·n·w·s bytes each) and writes dW, dβ (n·C·(w+1)·4 bytes, atomically): for
probe widths in the hundreds it is compute-bound; the saving over the unfused path is the logits
and their gradient, 2·b·n·C·4 bytes written and read back.
C is held in one tile (C ≤ 4096).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from klas.kernels.common import check_tensors, launch_config

__all__ = ["linear_cross_entropy", "MAX_CLASSES"]

MAX_CLASSES = 4096


@triton.jit
def _linear_ce_kernel(
    x_ptr,  # [b, n, w] features (strides stride_xb, stride_xn, 1)
    w_ptr,  # [n, C, w] fp32 weights, contiguous
    bias_ptr,  # [n, C] fp32
    y_ptr,  # [b, n] int64 targets (strides stride_yb, stride_yn)
    loss_ptr,  # [n] fp32 out (atomic): Σ_batch CE / b
    dw_ptr,  # [n, C, w] fp32 out (atomic)
    db_ptr,  # [n, C] fp32 out (atomic)
    B, C, W, stride_xb, stride_xn, stride_yb, stride_yn, inv_b, smoothing,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr,
):
    probe = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_b = rows < B
    offs_c = tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xb + probe * stride_xn
    w_base = w_ptr + probe * C * W
    z = tl.zeros([BLOCK_B, BLOCK_C], tl.float32)
    for w0 in range(0, W, BLOCK_W):
        offs_w = w0 + tl.arange(0, BLOCK_W)
        mask_w = offs_w < W
        x = tl.load(x_rows + offs_w[None, :], mask=mask_b[:, None] & mask_w[None, :], other=0.0).to(tl.float32)
        wt = tl.load(w_base + offs_c[None, :] * W + offs_w[:, None], mask=mask_c[None, :] & mask_w[:, None], other=0.0)
        z += tl.dot(x, wt, input_precision="ieee")
    z += tl.load(bias_ptr + probe * C + offs_c, mask=mask_c, other=0.0)[None, :]
    mask = mask_b[:, None] & mask_c[None, :]
    z = tl.where(mask, z, float("-inf"))
    m = tl.where(mask_b, tl.max(z, axis=1), 0.0)
    e = tl.where(mask, tl.exp(z - m[:, None]), 0.0)
    s = tl.where(mask_b, tl.sum(e, axis=1), 1.0)
    lse = m + tl.log(s)
    y = tl.load(y_ptr + rows.to(tl.int64) * stride_yb + probe * stride_yn, mask=mask_b, other=0)
    onehot = offs_c[None, :] == y[:, None]
    z_y = tl.sum(tl.where(onehot & mask, z, 0.0), axis=1)
    z_mean = tl.sum(tl.where(mask, z, 0.0), axis=1) / C
    nll = (1.0 - smoothing) * (lse - z_y) + smoothing * (lse - z_mean)
    tl.atomic_add(loss_ptr + probe, tl.sum(tl.where(mask_b, nll, 0.0), axis=0) * inv_b)
    # d(loss)/dz = (softmax − (1 − ε)·onehot − ε/C) / b, zero outside the batch and the classes
    target = (1.0 - smoothing) * onehot.to(tl.float32) + smoothing / C
    grad = tl.where(mask, (e / s[:, None] - target) * inv_b, 0.0)
    tl.atomic_add(db_ptr + probe * C + offs_c, tl.sum(grad, axis=0), mask=mask_c)
    for w0 in range(0, W, BLOCK_W):
        offs_w = w0 + tl.arange(0, BLOCK_W)
        mask_w = offs_w < W
        x = tl.load(x_rows + offs_w[None, :], mask=mask_b[:, None] & mask_w[None, :], other=0.0).to(tl.float32)
        dw = tl.dot(tl.trans(grad), x, input_precision="ieee")  # [BLOCK_C, BLOCK_W]
        tl.atomic_add(dw_ptr + probe * C * W + offs_c[:, None] * W + offs_w[None, :], dw,
                      mask=mask_c[:, None] & mask_w[None, :])


def _launch_linear_ce(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, target: torch.Tensor,
                      smoothing: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-probe mean cross-entropy ``[n]`` and the gradients dW ``[n, C, w]``, dβ ``[n, C]`` (fp32)."""
    b, n, w = x.shape
    c = weight.shape[1]
    x = x if x.stride(2) == 1 else x.contiguous()
    loss = torch.zeros(n, dtype=torch.float32, device=x.device)
    dw = torch.zeros(n, c, w, dtype=torch.float32, device=x.device)
    db = torch.zeros(n, c, dtype=torch.float32, device=x.device)
    cfg = launch_config(BLOCK_B=16, BLOCK_C=c, BLOCK_W=w, high=64)
    blocks = {**cfg.blocks, "BLOCK_C": max(16, triton.next_power_of_2(c))}  # C in one tile (≤ MAX_CLASSES)
    grid = (n, triton.cdiv(b, blocks["BLOCK_B"]))
    _linear_ce_kernel[grid](x, weight.detach().float().contiguous(), bias.detach().float().contiguous(), target,
                            loss, dw, db, b, c, w, x.stride(0), x.stride(1), target.stride(0), target.stride(1),
                            1.0 / b, float(smoothing), num_warps=cfg.num_warps, **blocks)
    return loss, dw, db


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward runs the fused kernel, which leaves the gradients too; backward scales them."""

    @staticmethod
    def forward(ctx, x, weight, bias, target, smoothing):
        loss, dw, db = _launch_linear_ce(x, weight, bias, target, smoothing)
        ctx.save_for_backward(dw, db)
        ctx.dtypes = (weight.dtype, bias.dtype)
        return loss.sum()

    @staticmethod
    def backward(ctx, grad_loss):
        dw, db = ctx.saved_tensors
        return None, (dw * grad_loss).to(ctx.dtypes[0]), (db * grad_loss).to(ctx.dtypes[1]), None, None


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, target: torch.Tensor,
                         label_smoothing: float = 0.0) -> torch.Tensor:
    """Σ over probes of each probe's mean cross-entropy, with gradients for weight and bias.

    x ``[b, n, w]`` (features, no gradient), weight ``[n, C, w]``, bias ``[n, C]``, target ``[b, n]``.
    """
    check_tensors("linear_cross_entropy", float_inputs={"x": x, "weight": weight, "bias": bias},
                  other={"target": target}, ndim={"x": 3, "weight": 3, "bias": 2, "target": 2})
    b, n, w = x.shape
    if tuple(weight.shape[::2]) != (n, w) or tuple(bias.shape) != tuple(weight.shape[:2]) or tuple(target.shape) != (b, n):
        raise ValueError(f"linear_cross_entropy: x {list(x.shape)}, weight {list(weight.shape)}, bias "
                         f"{list(bias.shape)}, target {list(target.shape)} do not fit [b, n, w], [n, C, w], [n, C], "
                         "[b, n]")
    if weight.shape[1] > MAX_CLASSES:
        raise ValueError(f"the fused probe loss holds C in one tile; C={weight.shape[1]} > {MAX_CLASSES}")
    return _LinearCrossEntropy.apply(x, weight, bias, target.long(), label_smoothing)
