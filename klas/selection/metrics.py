"""Other similarity metrics in Γ's numerator (the paper's ablations), on pooled block features.

Each metric is a distance (0 for identical representations, lower = more alike) between the
pooled features A ``[n, d_f]`` of a source block and B ``[n, d_g]`` of a target block on the same
n samples:

- `cka_distance`: 1 − linear CKA of the centred features (invariant to rotation and scale);
- `lstsq_error`: residual of the least-squares stitch A·M + c ≈ B, relative to B's variance;
- `distance_matrix_gap`: mean absolute difference of the samples' pairwise-distance matrices, each
  divided by its mean distance;
- `cross_entropy`: mean over samples of −Σ_c p log q for the probe distributions (the "ce" metric),
  from logits ``[n, C]``.
"""
from __future__ import annotations

import torch

__all__ = ["cka_distance", "lstsq_error", "distance_matrix_gap", "cross_entropy", "FEATURE_METRICS"]


def _centred(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x - x.mean(dim=0, keepdim=True)


def cka_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """1 − linear CKA(A, B); A ``[n, d_f]``, B ``[n, d_g]``."""
    a, b = _centred(a), _centred(b)
    cross = (a.T @ b).square().sum()
    norm = (a.T @ a).square().sum().sqrt() * (b.T @ b).square().sum().sqrt()
    return float(1.0 - cross / norm) if norm > 0 else 1.0


def lstsq_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖A·M + c − B‖² / ‖B − mean(B)‖² for the least-squares M, c."""
    a, b = _centred(a), _centred(b)
    solution = torch.linalg.lstsq(a, b).solution  # the centring absorbs the bias c
    residual = (a @ solution - b).square().sum()
    total = b.square().sum()
    return float(residual / total) if total > 0 else 0.0


def distance_matrix_gap(a: torch.Tensor, b: torch.Tensor, max_samples: int = 1000) -> float:
    """Mean |D_A − D_B| of the mean-normalised pairwise-distance matrices (first `max_samples` samples)."""
    a, b = a[:max_samples].double(), b[:max_samples].double()
    da, db = torch.cdist(a, a), torch.cdist(b, b)
    da, db = da / da.mean().clamp_min(1e-12), db / db.mean().clamp_min(1e-12)
    return float((da - db).abs().mean())


def cross_entropy(logits_p: torch.Tensor, logits_q: torch.Tensor, *, temperature: float = 1.0) -> float:
    """mean_x −Σ_c softmax(p/τ) log softmax(q/τ); logits ``[n, C]``, τ the temperature Θ is measured at."""
    log_p = torch.log_softmax(logits_p.double() / temperature, dim=-1)
    log_q = torch.log_softmax(logits_q.double() / temperature, dim=-1)
    return float(-(log_p.exp() * log_q).sum(dim=-1).mean())


FEATURE_METRICS = {"cka": cka_distance, "mse": lstsq_error, "dm": distance_matrix_gap}
