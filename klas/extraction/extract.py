"""Extraction: one forward pass per anchor and split, every block's pooled output into the cache.

For each anchor and split the cache row of an image is ``[pool(block_1) | … | pool(block_m) |
logits]`` (the anchor's own head output serves as its last-block distribution). Rows are written
in dataset order through `CacheWriter`, so a killed extraction resumes after its last complete
shard and ends with the same bytes.

Under torchrun each rank extracts the shards it owns (shard k goes to rank k % world_size) and
rank 0 writes the one manifest once all have finished: the cache's bytes do not depend on the
number of ranks, because shards hold whole batches and every batch is the same on any rank.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from klas import distributed as dist
from klas.anchors import Anchor, load_anchor
from klas.anchors.base import LOGITS
from klas.cache import BlockEntry, CacheWriter, Manifest, read_manifest
from klas.cache.format import DTYPES, LOGITS_INDEX
from klas.extraction.data import make_loader, samples_digest, split_for_anchor
from klas.errors import CacheError, UsageError
from klas.progress import progress_bar

__all__ = ["extract", "anchor_info", "cache_dir_for", "cache_layout", "cached_anchors"]

DEFAULT_SHARD_ROWS = 4096


def cache_dir_for(out: str | os.PathLike, anchor: Anchor, split: str) -> Path:
    """Where the cache of `anchor` on `split` lives under `out`."""
    return Path(out) / anchor.name / split


def cache_layout(anchor: Anchor) -> tuple[BlockEntry, ...]:
    """Column groups of a cache row: every block's pooled output, then the logits."""
    entries, offset = [], 0
    for info in anchor.block_info:
        entries.append(BlockEntry(name=info.name, index=info.index, width=info.width, offset=offset, grid=info.grid))
        offset += info.width
    entries.append(BlockEntry(name=LOGITS, index=LOGITS_INDEX, width=anchor.num_classes, offset=offset, kind=LOGITS))
    return tuple(entries)


def anchor_info(anchor: Anchor) -> dict:
    """What later stages need to know of the anchor without loading it again (its spec is never
    loaded from a file), and the digest of its weights (a changed checkpoint is noticed)."""
    f = anchor.flops
    return {"input_size": list(anchor.input_size), "layouts": anchor.layouts,
            "flops": {"stem": f.stem, "blocks": list(f.blocks), "head": f.head},
            "weights": anchor.weights_digest()}


def _to_storage(x: torch.Tensor, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return x.to(getattr(torch, dtype)).numpy()


@torch.inference_mode()
def _extract_one(anchor: Anchor, cache_dir: Path, *, info: dict, data, split, batch_size, dtype, device,
                 shard_rows, val_fraction, seed, limit, num_workers, progress) -> Manifest:
    """One (anchor, split) cache; `info` is `anchor_info(anchor)`, measured once per anchor."""
    source, indices = split_for_anchor(data, split, anchor, val_fraction=val_fraction, seed=seed, limit=limit)
    settings = {
        "data": str(Path(data).resolve()), "split_of": str(source.path.name), "val_fraction": val_fraction,
        "seed": seed, "limit": limit, "num_images": len(source), "batch_size": batch_size,
        "samples": samples_digest(source, indices), "classes": list(source.classes),
    }
    if (cache_dir / "manifest.json").exists():
        try:
            existing = read_manifest(cache_dir)
        except CacheError:
            existing = None
        if existing is not None:
            if existing.anchor != anchor.spec:
                raise CacheError(
                    f"{cache_dir} holds the cache of anchor {existing.anchor!r}, not {anchor.spec!r}; "
                    "choose another --out (two specs with one name cannot share a folder)"
                )
            if (existing.dtype == dtype and existing.source == settings
                    and existing.weights_digest == info["weights"]):
                return existing  # complete and matching (data, settings and weights): nothing to do
            if dist.is_main():
                warnings.warn(f"{cache_dir}: cache made with other settings is replaced", stacklevel=3)
    dist.barrier()  # every rank has read the old manifest before rank 0's writer removes it

    # shards must hold whole batches so a resumed run (or another rank) sees the same batches
    shard_rows = max(batch_size, shard_rows // batch_size * batch_size)
    ctx = dist.context()
    writer = CacheWriter(
        cache_dir, anchor=anchor.spec, split=split, dtype=dtype, blocks=cache_layout(anchor),
        num_classes=anchor.num_classes, num_samples=len(indices), shard_rows=shard_rows, source=settings,
        anchor_info=info, rank=ctx.rank, world_size=ctx.world_size,
    )
    try:
        pending = writer.pending_rows()
        todo = np.concatenate([indices[s:s + n] for s, n in pending]) if pending else indices[:0]
        loader = make_loader(source, todo, anchor, batch_size=batch_size, num_workers=num_workers)
        mine = sum(writer.shard_rows_of(k)[1] for k in writer.mine)
        bar = progress_bar(total=mine, initial=mine - len(todo), unit="img", disable=not progress or not dist.is_main(),
                   desc=f"extract {anchor.name}/{split}" + (f" (rank 0 of {ctx.world_size})" if ctx.distributed else ""))
        for images, labels in loader:
            pooled = [h if k == LOGITS else anchor.pool(h, k) for k, h in anchor.block_outputs(images.to(device))]
            row = torch.cat(pooled, dim=1).float().cpu()
            if not torch.isfinite(row).all():
                raise CacheError(
                    f"anchor {anchor.spec} produced NaN/Inf activations on split {split} (a batch of shard "
                    f"{writer.mine[len(writer.shards)]}); "
                    "check the checkpoint and the input normalisation"
                )
            stored = _to_storage(row, dtype)
            if dtype == "float16" and np.isinf(stored).any():
                raise CacheError(
                    f"anchor {anchor.spec} has activations beyond float16's range (±65504) on split {split}, which "
                    "would be stored as Inf; extract with --dtype bfloat16 or --dtype float32 (config: "
                    "extract.dtype)"
                )
            writer.append(stored, labels.numpy())
            bar.update(len(labels))
        bar.close()
        manifest = writer.finish()
    finally:
        writer.release()
    if ctx.distributed:
        dist.barrier()  # every rank's shards are on disk
        if dist.is_main():
            writer.write_manifest()
        dist.barrier()
        manifest = read_manifest(cache_dir)
    return manifest


def extract(
    anchors: Sequence[str | Anchor],
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    splits: Sequence[str] = ("train", "val"),
    batch_size: int = 128,
    dtype: str = "float16",
    device: str = "cpu",
    shard_rows: int = DEFAULT_SHARD_ROWS,
    val_fraction: float = 0.1,
    seed: int = 0,
    limit: int | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[tuple[str, str], Path]:
    """Fills the activation cache of every anchor on every split; skips complete caches.

    Args:
        anchors: spec strings or Anchor objects.
        data: data root (see klas.extraction.data).
        out: cache root; caches go to ``out/<anchor name>/<split>``.
        splits: any of "train" (D_t), "val" (D_v), "test".
        dtype: storage dtype of the cache, one of float16, bfloat16, float32.
        limit: use `limit` images of each split, a seeded random draw (quick runs).

    Returns:
        ``{(anchor name, split): cache directory}``.
    """
    if dtype not in DTYPES:
        raise UsageError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if batch_size <= 0:
        raise UsageError(f"batch_size must be positive, got {batch_size}")
    done = {}
    for spec in anchors:
        anchor = load_anchor(spec) if isinstance(spec, str) else spec
        anchor = anchor.to(device).eval()
        info = anchor_info(anchor)  # FLOPs and the weights digest: once per anchor, not per split
        for split in splits:
            cache_dir = cache_dir_for(out, anchor, split)
            _extract_one(anchor, cache_dir, info=info, data=data, split=split, batch_size=batch_size, dtype=dtype,
                         device=device, shard_rows=shard_rows, val_fraction=val_fraction, seed=seed,
                         limit=limit, num_workers=num_workers, progress=progress)
            done[(anchor.name, split)] = cache_dir
    return done


def cached_anchors(out: str | os.PathLike, split: str) -> list[str]:
    """Names of the anchors with a complete `split` cache under `out`."""
    return sorted(p.parent.parent.name for p in Path(out).glob(f"*/{split}/manifest.json"))
