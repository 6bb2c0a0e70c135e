"""Per-block feature streams over an activation cache, for streaming Θ computations."""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

from klas.anchors.base import LOGITS, take_blocks
from klas.cache import CacheReader

__all__ = ["CacheFeatures"]


class CacheFeatures:
    """Chunks of selected column groups of a cache: a list of ``[n, d_k]`` tensors per chunk.

    Args:
        reader: the cache (one anchor, one split).
        blocks: blocks to read, in order: 1..m, negative from the end, or LOGITS for the
            anchor's logits (klas.anchors.base.take_blocks). Default: every block, then the logits.
        device: where the chunks go.
        rank, world_size: read only this rank's share of the rows (every world_size-th chunk).
    """

    def __init__(self, reader: CacheReader, blocks: Sequence[int] | None = None, *, device="cpu", rank: int = 0,
                 world_size: int = 1):
        m = reader.manifest
        depth = len(m.block_entries)
        if blocks is None:
            blocks = [*range(1, depth + 1), LOGITS]
        numbered = iter(take_blocks(depth, [k for k in blocks if k != LOGITS], name=f"the cache {reader.dir}"))
        by_index = {b.index: b for b in m.block_entries}
        self.reader = reader
        self.entries = [m.logits_entry if k == LOGITS else by_index[next(numbered)] for k in blocks]
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size

    @property
    def num_blocks(self) -> int:
        return len(self.entries)

    @property
    def widths(self) -> list[int]:
        return [e.width for e in self.entries]

    @property
    def num_samples(self) -> int:
        return self.reader.num_samples

    def chunks(self, chunk: int) -> Iterator[list[torch.Tensor]]:
        for batch in self.reader.batches(chunk, rank=self.rank, world_size=self.world_size, chunk_rows=chunk):
            rows, labels = batch.torch()
            rows = rows.to(self.device, non_blocking=True)
            self.reader.check_values(rows, labels)
            yield [rows[:, e.offset:e.offset + e.width] for e in self.entries]
