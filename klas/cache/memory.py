"""A cache held in memory: per-block features and logits that a caller already has, behind the same
reader interface as an extracted cache, so that probes and scores computed from tensors run the
very code (and give the very numbers) of `klas probes` and `klas score`.

    cache = MemoryCache("mine", "train", [f1, f2, f3], logits, labels, flops=..., grids=[...])
    train_probes([cache, ...], [val_cache, ...])
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np

from klas.anchors.base import PartCounts
from klas.cache.format import DTYPES, LOGITS_INDEX, AnchorFacts, BlockEntry, Manifest, ShardEntry
from klas.cache.reader import CacheReader
from klas.errors import UsageError

__all__ = ["MemoryCache", "labels_digest"]


def labels_digest(labels: np.ndarray) -> str:
    """The identity of a split held in memory: a digest of its labels in order (caches of several
    anchors over the same samples share it, as extracted caches share their samples digest)."""
    return "memory:" + hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()[:32]


class MemoryCache(CacheReader):
    """One anchor's features on one split, in memory (float32 rows ``[N, Σ d_k + C]``).

    Args:
        name: the anchor's name (an identifier: nothing is loaded by it).
        split: "train" (D_t) or "val" (D_v).
        blocks: the pooled output of every block 1..m, ``[N, d_k]`` each.
        logits: the anchor's own logits ``[N, C]``.
        labels: int64 class labels ``[N]`` in 0..C−1.
        flops: FLOPs of one image per part (klas.anchors.base.PartCounts, or {stem, blocks, head}).
        grids: the spatial grid of each block's output (stitches join equal grids only).
        class_names: C names (default "0".."C−1").
    """

    def __init__(self, name: str, split: str, blocks: Sequence, logits, labels, *, flops, grids: Sequence,
                 class_names: Sequence[str] | None = None):
        import torch

        feats = [torch.as_tensor(b).detach().float().cpu() for b in blocks]
        z = torch.as_tensor(logits).detach().float().cpu()
        y = torch.as_tensor(labels).detach().cpu()
        n = len(y)
        if y.dim() != 1 or y.dtype.is_floating_point or n < 2:
            raise UsageError(f"{name} {split}: labels must be an integer tensor [N] with N >= 2, got "
                             f"{list(y.shape)} {y.dtype}")
        if not feats or any(f.dim() != 2 or f.shape[0] != n for f in feats) or z.dim() != 2 or z.shape[0] != n:
            raise UsageError(f"{name} {split}: every block's features must be [N, d_k] and the logits [N, C] over "
                             f"the N = {n} labelled samples, got {[list(f.shape) for f in feats]} and {list(z.shape)}")
        c = z.shape[1]
        if len(grids) != len(feats):
            raise UsageError(f"{name}: {len(feats)} blocks but {len(grids)} grids (one spatial grid per block)")
        if int(y.min()) < 0 or int(y.max()) >= c:
            raise UsageError(f"{name} {split}: labels must lie in 0..{c - 1} (the logits' classes)")
        flops = flops if isinstance(flops, PartCounts) else PartCounts.from_json(flops)
        if len(flops.blocks) != len(feats):
            raise UsageError(f"{name}: {len(feats)} blocks but FLOPs for {len(flops.blocks)}")
        entries, offset = [], 0
        for k, f in enumerate(feats, start=1):
            entries.append(BlockEntry(name=f"block{k}", index=k, width=f.shape[1], offset=offset,
                                      grid=tuple(int(g) for g in grids[k - 1])))
            offset += f.shape[1]
        entries.append(BlockEntry(name="logits", index=LOGITS_INDEX, width=c, offset=offset, kind="logits"))
        rows = torch.cat([*feats, z], dim=1).numpy()
        names = [str(k) for k in range(c)] if class_names is None else [str(x) for x in class_names]
        facts = AnchorFacts(flops=flops, weights=f"memory:{name}")
        self.dir = Path(f"<memory>/{name}/{split}")
        self.manifest = Manifest(anchor=f"memory:{name}", split=split, dtype="float32", num_samples=n,
                                 row_width=rows.shape[1], num_classes=c, blocks=tuple(entries),
                                 shards=(ShardEntry(file="memory", rows=n, crc32c=0),),
                                 source={"samples": labels_digest(y.numpy()), "classes": names},
                                 anchor_info=facts.to_json())
        self.backend, self.verify = "python", False
        self._dtype_code, self._storage = DTYPES["float32"]
        self._shards = _MemoryRows(np.ascontiguousarray(rows), y.numpy().astype(np.int64))
        self._fingerprint = hashlib.sha256(rows.tobytes()).hexdigest()[:16]

    def fingerprint(self) -> str:
        return self._fingerprint


class _MemoryRows:
    """The rows of a MemoryCache as the Python reader reads shards: raw bytes and labels."""

    def __init__(self, rows: np.ndarray, labels: np.ndarray):
        self.rows, self.labels = rows, labels

    def check_all(self) -> None:
        """Nothing to verify: no file."""

    def read(self, start: int, count: int):
        yield self.rows[start:start + count].view(np.uint8).copy(), self.labels[start:start + count].copy()
