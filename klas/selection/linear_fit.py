"""Least-squares linear maps between representations: the stitching layer's initialisation and the
kl-ls baseline share this one solver.

`fit_linear(A, B)` returns the weight ``[d_out, d_in]`` and bias ``[d_out]`` minimising
``‖A·Wᵀ + b − B‖²`` over the rows of A ``[n, d_in]`` and B ``[n, d_out]``. B may be several targets
side by side: the factorisation of A is done once for all of their columns (one solve per source).
The solve runs where A lives (`torch.linalg.lstsq`), in float64, on centred data (the centring gives
the bias); a small ridge keeps rank-deficient features (dead channels, n < d_in) well posed.
"""
from __future__ import annotations

import torch

from klas.errors import UsageError

__all__ = ["fit_linear"]


def fit_linear(a: torch.Tensor, b: torch.Tensor, *, ridge: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares (W ``[d_out, d_in]``, bias ``[d_out]``), float32, on a's device.

    ridge: Tikhonov term relative to the mean diagonal of AᵀA (0 for plain least squares).
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[0]:
        raise UsageError(f"fit_linear needs A [n, d_in] and B [n, d_out] over the same rows, got "
                         f"{list(a.shape)} and {list(b.shape)}")
    if a.shape[0] < 2:
        raise UsageError("fit_linear needs at least 2 samples")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise UsageError("fit_linear got non-finite features (NaN/Inf): check the cache or the anchor")
    b = b.to(a.device)
    a64, b64 = a.double(), b.double()
    mean_a, mean_b = a64.mean(dim=0), b64.mean(dim=0)
    ac, bc = a64 - mean_a, b64 - mean_b
    if ridge > 0:  # [A; sqrt(λ) I] x ≈ [B; 0]: ridge regression through the same solver
        lam = ridge * float(ac.square().sum(dim=0).mean().clamp_min(1e-30))
        eye = torch.eye(a.shape[1], dtype=torch.float64, device=a.device) * lam ** 0.5
        ac = torch.cat([ac, eye])
        bc = torch.cat([bc, torch.zeros(a.shape[1], b.shape[1], dtype=torch.float64, device=a.device)])
    solution = torch.linalg.lstsq(ac, bc).solution  # [d_in, d_out]
    weight = solution.T
    bias = mean_b - weight @ mean_a
    return weight.float().contiguous(), bias.float().contiguous()
