"""Scores from tensors: for stitching code that already has each anchor's per-block features.

    from klas import AnchorFeatures, scores_from_tensors, select, select_snnet_nearest

    feats = [AnchorFeatures("small", flops={"stem": 1e6, "blocks": [...], "head": 1e3}, grids=[(8, 8), ...],
                            train_blocks=[...], train_logits=..., val_blocks=[...], val_logits=...), ...]
    scores = scores_from_tensors(feats, train_labels, val_labels)
    scores.theta("small", "large"), scores.sigma("large"), scores.gamma("small", "large")
    selection = select(scores)

The probes are trained with exactly the recipe of `klas probes` (the same function, on the features
held in memory: klas.cache.memory.MemoryCache) and the scores computed by the same code as
`klas score`, so the numbers equal those of the disk path on the same data. Defaults are the run
config's `probes` and `score` sections (klas.pipeline.config), the settings objects themselves.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from klas.errors import UsageError
from klas.pipeline.config import ProbesSection, ScoreSection

__all__ = ["AnchorFeatures", "scores_from_tensors"]


@dataclass
class AnchorFeatures:
    """One anchor's features on D_t and D_v, as a user's own forward hooks give them.

    train_blocks / val_blocks: the pooled output of every block 1..m, ``[N, d_k]`` each (pool a
    feature map ``[N, C, H, W]`` over H, W first); train_logits / val_logits: the anchor's own
    logits ``[N, C]``; flops: FLOPs of one image per part, {"stem": int, "blocks": [m ints],
    "head": int}; grids: the spatial grid (H, W) of each block's output.
    """

    name: str
    flops: dict
    grids: Sequence
    train_blocks: list
    train_logits: object
    val_blocks: list
    val_logits: object
    class_names: Sequence[str] | None = field(default=None)


def scores_from_tensors(anchors: Sequence[AnchorFeatures], train_labels, val_labels, *,
                        probes: ProbesSection | None = None, score: ScoreSection | None = None, seed: int = 0,
                        device: str = "cpu", progress: bool = False):
    """Θ, Σ and Γ (klas.scoring.scores.Scores) for every pair of `anchors`: probes trained on
    D_t (`train_labels` ``[N_t]``), scored on D_v (`val_labels` ``[N_v]``), anchors ordered by FLOPs.

    probes, score: the settings (default: `klas probes` and `klas score`'s); seed: the probes'.
    """
    from klas.cache.memory import MemoryCache
    from klas.scoring.probes import train_probes
    from klas.scoring.scores import score_sets

    probes, score = probes or ProbesSection(), score or ScoreSection()
    names = [a.name for a in anchors]
    if len(anchors) < 2 or len(set(names)) != len(names):
        raise UsageError(f"scores need two or more anchors with distinct names, got {names}")
    train = [MemoryCache(a.name, "train", a.train_blocks, a.train_logits, train_labels, flops=a.flops, grids=a.grids,
                         class_names=a.class_names) for a in anchors]
    val = [MemoryCache(a.name, "val", a.val_blocks, a.val_logits, val_labels, flops=a.flops, grids=a.grids,
                       class_names=a.class_names) for a in anchors]
    sets = train_probes(train, val, epochs=probes.epochs, batch_size=probes.batch_size, lr=probes.lr,
                        weight_decay=probes.weight_decay, labels=probes.labels, seed=seed, device=device,
                        progress=progress, standardise=probes.standardise)
    readers = {a.name: (v, ps) for a, v, ps in zip(anchors, val, sets)}
    return score_sets(readers, split="val", temperature=score.temperature, floor=score.floor, backend=score.backend,
                      device=device, probes_where="<memory>")
