"""Tables of the metric baselines over (i, j) for an anchor pair, from the D_v caches and probes.

`metric_table(...)` ``[m_f − 1, m_g − 1]``: the chosen distance between source block i and target
block j (NaN where the grids differ, which selection never uses), for klas.select's `numerators`.
"""
from __future__ import annotations

import math
import os
from functools import cache
from pathlib import Path

import torch

from klas.cache import CacheReader
from klas.features import CacheFeatures
from klas.kl import probe_logits
from klas.metrics import FEATURE_METRICS, cross_entropy
from klas.probes import load_probes
from klas.scores import Scores, manifest_fingerprint

__all__ = ["metric_numerators"]


def metric_numerators(scores: Scores, metric: str, cache_root: str | os.PathLike, probes_dir: str | os.PathLike | None = None,
                      split: str = "val"):
    """A `numerators(source, target)` callable for klas.select.select with `metric` in Γ's numerator."""
    if metric not in (*FEATURE_METRICS, "ce"):
        raise ValueError(f"metric must be one of {sorted((*FEATURE_METRICS, 'ce'))}, got {metric!r}")
    cache_root = Path(cache_root)
    probes_dir = Path(probes_dir) if probes_dir else cache_root / "probes"

    @cache
    def blocks(name: str) -> list[torch.Tensor]:
        """Pooled features [n, d_k] of blocks 1..m-1 (or, for "ce", their probe logits [n, C])."""
        reader = CacheReader(cache_root / name / split)
        m = reader.manifest
        if m.anchor != scores.anchor(name).spec:
            raise ValueError(f"{reader.dir} caches {m.anchor!r}, the scores were made for {scores.anchor(name).spec!r}")
        if split == scores.split and scores.caches.get(name) not in (None, manifest_fingerprint(reader.dir)):
            raise ValueError(f"the scores were computed on another cache than {reader.dir} (its manifest changed "
                             "since `klas score`); re-run `klas score` or name the cache that was scored")
        feats = next(CacheFeatures(reader, [b.index for b in m.block_entries[:-1]]).chunks(reader.num_samples))
        feats = [f.float() for f in feats]
        if metric == "ce":
            feats = list(probe_logits(feats, load_probes(probes_dir, name).probes()[:-1]))
        return feats

    def numerators(source: str, target: str) -> torch.Tensor:
        f, g = scores.anchor(source), scores.anchor(target)
        fs, gs = blocks(source), blocks(target)
        out = torch.full((f.depth - 1, g.depth - 1), math.nan, dtype=torch.float32)
        for i in range(f.depth - 1):
            for j in range(g.depth - 1):
                if list(f.grids[i]) != list(g.grids[j]):
                    continue
                out[i, j] = cross_entropy(fs[i], gs[j]) if metric == "ce" else FEATURE_METRICS[metric](fs[i], gs[j])
        return out

    return numerators
