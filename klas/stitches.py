"""The stitch, in one place: what one is, which ones exist between two anchors, what one costs, and
how its layer starts. Selection, the supernet, evaluation, the recovery test and the exports all
speak of stitches through this module, which imports none of them.

A *route* is one network: an anchor alone, or a stitch (f, i) -> (g, j) that runs f's stem and
blocks 1..i, a stitching layer, then g's blocks j+1..m_g and head (blocks 1-indexed, KLAS
notation). Two index ranges matter:

- routes: ``1 <= i <= m_f`` and ``0 <= j <= m_g - 1`` (SN-Net's j = 0, into g's first block from
  its stem's output, and i = m_f, after f's last block, are routes too);
- scored: ``1 <= i <= m_f - 1`` and ``1 <= j <= m_g - 1`` on equal spatial grids, the domain of
  KLAS's Γ (a probe after f's block i, Σ_j of g's blocks j and j + 1).

FLOPs follow from the anchors' per-part counts (stem, blocks, head) and the stitching layer's own
(`stitch_flops`): `stitched_flops` is the one sum that selection and the supernet both use.

`fit_linear` is the least-squares solver every stitching layer starts from (and the kl-ls
baseline's map between features): the weight and bias minimising ``‖A·Wᵀ + b − B‖²``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from klas.errors import UsageError

__all__ = ["Route", "route_index_problem", "scored_pairs", "stitch_positions", "stitch_flops", "stitched_flops",
           "fit_linear"]


@dataclass(frozen=True)
class Route:
    """An anchor alone (source == target, i == j == its depth) or a stitch (source, i) -> (target, j)."""

    source: str
    target: str
    i: int
    j: int

    @property
    def is_anchor(self) -> bool:
        return self.source == self.target

    @property
    def name(self) -> str:
        """The route's name in evaluations and reports: the anchor's, or ``source:i->target:j``."""
        return self.source if self.is_anchor else f"{self.source}:{self.i}->{self.target}:{self.j}"

    @classmethod
    def of(cls, stitch) -> "Route":
        """A Route from a Route, or from anything with source, target, i and j (a selected
        configuration, an evaluated route), or from a (source, target, i, j) tuple."""
        if isinstance(stitch, cls):
            return stitch
        if isinstance(stitch, tuple):
            return cls(*stitch)
        return cls(stitch.source, stitch.target, stitch.i, stitch.j)


def route_index_problem(i, j, depth_f: int, depth_g: int) -> str | None:
    """Why (i, j) is no stitch from an anchor of `depth_f` blocks into one of `depth_g` (None when
    it is one): integer indices in the routes' range ``1 <= i <= m_f``, ``0 <= j <= m_g - 1``."""
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in (i, j)):
        return f"(i, j) = ({i!r}, {j!r}) are not integers"
    if not (1 <= i <= depth_f and 0 <= j <= depth_g - 1):
        return f"(i, j) = ({i}, {j}) is outside the anchors' blocks (i in 1..{depth_f}, j in 0..{depth_g - 1})"
    return None


def scored_pairs(grids_f: Sequence[Sequence[int]], grids_g: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """The stitches KLAS scores between two anchors, given each block's spatial grid: every (i, j)
    with ``1 <= i <= m_f - 1``, ``1 <= j <= m_g - 1`` whose blocks' grids agree."""
    return [(i, j) for i in range(1, len(grids_f)) for j in range(1, len(grids_g))
            if list(grids_f[i - 1]) == list(grids_g[j - 1])]


def stitch_positions(grid: Sequence[int], prefix_in: int = 0, prefix_out: int = 0) -> int:
    """Positions a stitching layer maps: every position of the spatial grid, plus the prefix
    (class) tokens when both sides have the same number of them. Otherwise the source's prefix
    tokens are dropped and the target's are learned vectors, which cost no FLOPs; so do the
    layout conversions (permutes and reshapes) around the map."""
    return math.prod(grid) + (prefix_in if prefix_in == prefix_out else 0)


def stitch_flops(width_in: int, width_out: int, grid: Sequence[int], prefix_in: int = 0, prefix_out: int = 0) -> int:
    """FLOPs (multiply-accumulates, as the anchors' counts: the bias adds are not counted) of a
    stitching layer (Linear / 1x1 conv) at every position it maps."""
    return width_in * width_out * stitch_positions(grid, prefix_in, prefix_out)


def stitched_flops(front, i: int, stitch: int, back, j: int) -> int:
    """FLOPs of one image through a stitched route: the source's stem and blocks 1..i (`front`, an
    anchor's per-part counts), the stitching layer, the target's blocks j+1..m and head (`back`)."""
    return int(front.front(i) + stitch + back.back(j))


def fit_linear(a: torch.Tensor, b: torch.Tensor, *, ridge: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares (W ``[d_out, d_in]``, bias ``[d_out]``), float32, on a's device, for rows
    A ``[n, d_in]`` and B ``[n, d_out]``.

    B may be several targets side by side: A is factorised once for all of their columns. The
    solve runs where A lives (`torch.linalg.lstsq`) in float64 on centred data (the centring gives
    the bias); `ridge`, a Tikhonov term relative to the mean diagonal of AᵀA (0 for plain least
    squares), keeps rank-deficient features (dead channels, n < d_in) well posed.
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
