"""Tables of the baseline distances over (i, j) for an anchor pair, from the caches and probes.

`metric_numerators(...)` gives a `numerators(source, target)` callable for klas.selection.select.select: a
``[m_f − 1, m_g − 1]`` table of the chosen distance between source block i and target block j (NaN
where the grids differ, which selection never uses).

- "cka", "mse", "dm": klas.selection.metrics on the pooled D_v features;
- "ce": cross-entropy between the probe distributions on D_v;
- "kl-ls": Θ measured through a least-squares stitch. For each source block i one solve on D_t maps
  f's pooled block-i features onto every target block j at once (klas.stitches.fit_linear); since probe and
  stitch are both linear, probe_j(M·a + c) is the composite probe (W_j M, W_j c + b_j), and
  Θ(P^g_j(stitched f_i) ‖ P^g_j) on D_v comes from kl_matrix_from_features (on CUDA the fused
  projection + softmax + KL kernel) with the composite weights. Pooling commutes with a linear
  stitch, so the pooled fit is the stitch of the pooled features exactly.
"""
from __future__ import annotations

import math
import os
from functools import cache
from pathlib import Path

import torch

from klas.anchors.base import stitch_sources
from klas.cache import CacheReader
from klas.errors import UsageError
from klas.scoring.features import CacheFeatures
from klas.scoring.kl import kl_matrix_from_features, probe_logits
from klas.selection.metrics import FEATURE_METRICS, cross_entropy
from klas.selection.select import grid_valid_pairs
from klas.stitches import fit_linear
from klas.scoring.probes import load_probes
from klas.scoring.scores import Scores

__all__ = ["metric_numerators", "NUMERATOR_METRICS"]

NUMERATOR_METRICS = (*FEATURE_METRICS, "ce", "kl-ls")


def metric_numerators(scores: Scores, metric: str, cache_root: str | os.PathLike, probes_dir: str | os.PathLike | None = None,
                      split: str = "val", fit_split: str = "train", backend: str = "auto"):
    """A `numerators(source, target)` callable for klas.selection.select.select with `metric` in Γ's numerator."""
    if metric not in NUMERATOR_METRICS:
        raise UsageError(f"metric must be one of {sorted(NUMERATOR_METRICS)}, got {metric!r}")
    cache_root = Path(cache_root)
    probes_dir = Path(probes_dir) if probes_dir else cache_root / "probes"

    @cache
    def blocks(name: str, which: str) -> list[torch.Tensor]:
        """Pooled features [n, d_k] of blocks 1..m-1 of anchor `name` on split `which`."""
        reader = CacheReader(cache_root / name / which)
        m = reader.manifest
        if m.anchor != scores.anchor(name).spec:
            raise UsageError(f"{reader.dir} caches {m.anchor!r}, the scores were made for {scores.anchor(name).spec!r}")
        if which == scores.split and scores.caches.get(name) not in (None, reader.fingerprint()):
            raise UsageError(f"the scores were computed on another cache than {reader.dir} (its manifest changed "
                             "since `klas score`); re-run `klas score` or name the cache that was scored")
        feats = next(CacheFeatures(reader, stitch_sources(len(m.block_entries))).chunks(reader.num_samples))
        return [f.float() for f in feats]

    @cache
    def probes(name: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return load_probes(probes_dir, name).probes()[:-1]

    def numerators(source: str, target: str) -> torch.Tensor:
        f, g = scores.anchor(source), scores.anchor(target)
        valid = [(i - 1, j - 1) for i, j in grid_valid_pairs(f, g)]  # 0-indexed rows and columns
        out = torch.full((f.depth - 1, g.depth - 1), math.nan, dtype=torch.float32)
        if metric == "kl-ls":
            values = kl_through_stitch(blocks(source, fit_split), blocks(target, fit_split), blocks(source, split),
                                       blocks(target, split), probes(target), valid, temperature=scores.temperature,
                                       backend=backend)
            for (i, j), v in zip(valid, values.tolist()):
                out[i, j] = v
            return out
        fs, gs = blocks(source, split), blocks(target, split)
        if metric == "ce":
            fs, gs = list(probe_logits(fs, probes(source))), list(probe_logits(gs, probes(target)))
        for i, j in valid:
            out[i, j] = (cross_entropy(fs[i], gs[j], temperature=scores.temperature) if metric == "ce"
                         else FEATURE_METRICS[metric](fs[i], gs[j]))
        return out

    return numerators


def kl_through_stitch(fit_src: list[torch.Tensor], fit_tgt: list[torch.Tensor], val_src: list[torch.Tensor],
                      val_tgt: list[torch.Tensor], probes_tgt: list, pairs: list[tuple[int, int]], *,
                      temperature: float = 1.0, backend: str = "auto") -> torch.Tensor:
    """Θ(P^g_j(M_ij·f_i + c_ij) ‖ P^g_j) ``[len(pairs)]`` for 0-indexed block pairs (i, j).

    fit_src / fit_tgt: pooled features ``[n_t, d]`` per block on which the stitches are fitted;
    val_src / val_tgt: ``[n_v, d]`` per block on which Θ is measured; probes_tgt: (W ``[C, d_j]``, b) per
    target block. One least-squares solve per source block covers all its target blocks.
    """
    composite: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
    for i in sorted({i for i, _ in pairs}):
        js = [j for a, j in pairs if a == i]
        weight, bias = fit_linear(fit_src[i], torch.cat([fit_tgt[j] for j in js], dim=1))
        start = 0
        for j in js:
            d = fit_tgt[j].shape[1]
            w_j, b_j = probes_tgt[j]
            m, c = weight[start:start + d], bias[start:start + d]  # [d_g, d_f], [d_g]
            composite[(i, j)] = (w_j.float() @ m, w_j.float() @ c + b_j.float())
            start += d
    theta = kl_matrix_from_features([val_src[i] for i, _ in pairs], [composite[p] for p in pairs],
                                    val_tgt, probes_tgt, temperature=temperature, backend=backend)
    return theta[torch.arange(len(pairs)), torch.tensor([j for _, j in pairs])]
