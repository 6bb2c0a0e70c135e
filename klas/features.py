"""Per-block feature streams over an activation cache, for streaming Θ computations."""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

from klas.cache import CacheReader
from klas.errors import UsageError

__all__ = ["CacheFeatures"]


class CacheFeatures:
    """Chunks of selected column groups of a cache: a list of ``[n, d_k]`` tensors per chunk.

    Args:
        reader: the cache (one anchor, one split).
        blocks: 1-indexed blocks to read, in order; 0 stands for the anchor's logits.
            Default: every block, then the logits.
        device: where the chunks go.
        rank, world_size: read only this rank's share of the rows (every world_size-th chunk).
    """

    def __init__(self, reader: CacheReader, blocks: Sequence[int] | None = None, *, device="cpu", rank: int = 0,
                 world_size: int = 1):
        m = reader.manifest
        by_index = {b.index: b for b in m.blocks}
        if blocks is None:
            blocks = [b.index for b in m.block_entries] + [0]
        missing = [k for k in blocks if k not in by_index]
        if missing:
            raise UsageError(f"cache {reader.dir} has no block(s) {missing} (blocks 1..{len(m.block_entries)}, 0 = logits)")
        self.reader = reader
        self.entries = [by_index[k] for k in blocks]
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
