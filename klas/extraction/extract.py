"""Extraction: one forward pass per anchor and split, every block's pooled output into the cache.

For each split, anchors that take the same input share one decoded batch, and shards are written
on a background thread while the next batch runs. For each anchor and split the cache row of an image is ``[pool(block_1) | … | pool(block_m) |
logits]`` (the anchor's own head output serves as its last-block distribution). Rows are written
in dataset order through `CacheWriter`, so a killed extraction resumes after its last complete
shard and ends with the same bytes.

Under torchrun each rank extracts the shards it owns (shard k goes to rank k % world_size) and
rank 0 writes the one manifest once all have finished: the cache's bytes do not depend on the
number of ranks, because shards hold whole batches and every batch is the same on any rank.
"""
from __future__ import annotations

import os
import queue
import threading
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from klas import distributed as dist
from klas.compiling import compiled_parts, should_compile
from klas.memory_format import channels_last_models
from klas.anchors import Anchor, load_anchor
from klas.anchors.registry import check_distinct_names
from klas.anchors.base import LOGITS
from klas.cache import BlockEntry, CacheWriter, Manifest, read_manifest
from klas.cache.format import DTYPES, LOGITS_INDEX, AnchorFacts
from klas.extraction.data import check_classes, make_loader, prefetched, samples_digest, split_for_anchor
from klas.errors import CacheError, DataError, UsageError
from klas.reading import resolved
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
    loaded from a file), and the digest of its weights (a changed checkpoint is noticed): the
    manifest form of klas.cache.format.AnchorFacts."""
    return AnchorFacts.of(anchor).to_json()


def _to_storage(x: torch.Tensor, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return x.to(getattr(torch, dtype)).numpy()


def _settings(source, indices, data, val_fraction, seed, limit, batch_size) -> dict:
    """What a cache records of its images and how they were read (compared on resume)."""
    return {
        "data": str(resolved(data, error=DataError)), "split_of": str(source.path.name), "val_fraction": val_fraction,
        "seed": seed, "limit": limit, "num_images": len(source), "batch_size": batch_size,
        "samples": samples_digest(source, indices), "classes": list(source.classes),
    }


def _complete(anchor: Anchor, cache_dir: Path, info: dict, settings: dict, dtype: str) -> Manifest | None:
    """The cache's manifest when it is complete and made from these images, settings and weights;
    None when it must be (re)made (a cache of other settings is replaced, with a warning)."""
    if not (cache_dir / "manifest.json").exists():
        return None
    try:
        existing = read_manifest(cache_dir)
    except CacheError:
        return None
    if existing.anchor != anchor.spec:
        raise CacheError(
            f"{cache_dir} holds the cache of anchor {existing.anchor!r}, not {anchor.spec!r}; "
            "choose another --out (two specs with one name cannot share a folder)"
        )
    # a cache whose recorded facts differ (made before one was recorded, or of other weights) is made again
    same = existing.dtype == dtype and existing.source == settings and existing.anchor_info == info
    if same:
        return existing  # complete and matching (data, settings, weights, recorded facts): nothing to do
    if dist.is_main():
        warnings.warn(f"{cache_dir}: cache made with other settings is replaced", stacklevel=5)  # extract's caller
    return None


def _stored_rows(anchor: Anchor, images: torch.Tensor, dtype: str, split: str, shard: int) -> np.ndarray:
    """One batch's cache rows ``[b, Σ widths + C]`` in the storage dtype, checked finite."""
    pooled = [h if k == LOGITS else anchor.pool(h, k) for k, h in anchor.block_outputs(images)]
    row = torch.cat(pooled, dim=1).float().cpu()
    if not torch.isfinite(row).all():
        raise CacheError(
            f"anchor {anchor.spec} produced NaN/Inf activations on split {split} (a batch of shard {shard}); "
            "check the checkpoint and the input normalisation"
        )
    stored = _to_storage(row, dtype)
    if dtype == "float16" and np.isinf(stored).any():
        raise CacheError(
            f"anchor {anchor.spec} has activations beyond float16's range (±65504) on split {split}, which "
            "would be stored as Inf; extract with --dtype bfloat16 or --dtype float32 (config: extract.dtype)"
        )
    return stored


class _BackgroundWriter:
    """Appends batches to their CacheWriters on one thread, so that checksums and file writes
    overlap the next forward; at most `depth` batches wait. Errors surface on the next call."""

    def __init__(self, depth: int = 4):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="klas-cache-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is None:
                writer, rows, labels = item
                try:
                    writer.append(rows, labels)
                except BaseException as e:  # handed to the caller's thread
                    self._error = e

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def put(self, writer: CacheWriter, rows: np.ndarray, labels: np.ndarray) -> None:
        self._raise()
        self._queue.put((writer, rows, labels))

    def close(self, raise_error: bool = True) -> None:
        """Waits for every queued batch; raises the first error (unless another one is on its way)."""
        self._queue.put(None)
        self._thread.join()
        if raise_error:
            self._raise()


@torch.inference_mode()
def _extract_split(anchors: list[Anchor], infos: dict, out, *, data, split, batch_size, dtype, device, shard_rows,
                   val_fraction, seed, limit, num_workers, progress) -> None:
    """The `split` caches of anchors that take the same input (size and normalisation): each batch
    is decoded once and runs through every anchor whose cache needs it."""
    source, indices = split_for_anchor(data, split, anchors[0], val_fraction=val_fraction, seed=seed, limit=limit)
    for a in anchors[1:]:
        check_classes(source, a)
    settings = _settings(source, indices, data, val_fraction, seed, limit, batch_size)
    todo_anchors = [a for a in anchors if _complete(a, cache_dir_for(out, a, split), infos[a.name], settings, dtype)
                    is None]
    dist.barrier()  # every rank has read the old manifests before rank 0's writers remove them
    if not todo_anchors:
        return
    # shards must hold whole batches so a resumed run (or another rank) sees the same batches
    shard_rows = max(batch_size, shard_rows // batch_size * batch_size)
    ctx = dist.context()
    writers = {a.name: CacheWriter(
        cache_dir_for(out, a, split), anchor=a.spec, split=split, dtype=dtype, blocks=cache_layout(a),
        num_classes=a.num_classes, num_samples=len(indices), shard_rows=shard_rows, source=settings,
        anchor_info=infos[a.name], rank=ctx.rank, world_size=ctx.world_size) for a in todo_anchors}
    try:
        # anchors at the same point (a fresh run, or one resumed after a kill) share every batch
        by_pending: dict[tuple, list[Anchor]] = {}
        for a in todo_anchors:
            by_pending.setdefault(tuple(writers[a.name].pending_rows()), []).append(a)
        for pending, group in by_pending.items():
            _fill(group, writers, source, indices, list(pending), split=split, batch_size=batch_size, dtype=dtype,
                  device=device, num_workers=num_workers, progress=progress)
        for a in todo_anchors:
            writers[a.name].finish()
    finally:
        for w in writers.values():
            w.release()
    if ctx.distributed:
        dist.barrier()  # every rank's shards are on disk
        if dist.is_main():
            for a in todo_anchors:
                writers[a.name].write_manifest()
        dist.barrier()


def _fill(group: list[Anchor], writers: dict, source, indices, pending, *, split, batch_size, dtype, device,
          num_workers, progress) -> None:
    """Runs the pending rows of `group`'s caches: one decoded batch through every anchor of the group."""
    todo = np.concatenate([indices[s:s + n] for s, n in pending]) if pending else indices[:0]
    loader = make_loader(source, todo, group[0], batch_size=batch_size, num_workers=num_workers)
    first = writers[group[0].name]
    mine = sum(first.shard_rows_of(k)[1] for k in first.mine)
    ctx = dist.context()
    names = ", ".join(a.name for a in group)
    bar = progress_bar(total=mine, initial=mine - len(todo), unit="img", disable=not progress or not dist.is_main(),
                       desc=f"extract {names} / {split}" + (f" (rank 0 of {ctx.world_size})" if ctx.distributed else ""))
    background = _BackgroundWriter()
    done = mine - len(todo)
    compiled = should_compile(training=False, image_passes=len(todo) * len(group))
    try:
        with channels_last_models(group, device), compiled_parts([b for a in group for b in a.blocks], compiled):
            for images, labels in (prefetched(loader) if num_workers == 0 else loader):
                images, labels = images.to(device), labels.numpy()
                shard = first.mine[min(done // first.shard_rows, len(first.mine) - 1)] if first.mine else 0
                for a in group:
                    background.put(writers[a.name], _stored_rows(a, images, dtype, split, shard), labels)
                done += len(labels)
                bar.update(len(labels))
    except BaseException:
        background.close(raise_error=False)  # the batches before the failure are still written
        raise
    finally:
        bar.close()
    background.close()


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
    """Fills the activation cache of every anchor on every split; skips complete caches. Anchors
    that take the same input share each decoded batch; shards are written on a background thread.

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
    loaded = [(load_anchor(spec) if isinstance(spec, str) else spec).to(device).eval() for spec in anchors]
    check_distinct_names(loaded)
    infos = {a.name: anchor_info(a) for a in loaded}  # FLOPs and the weights digest: once per anchor
    same_input: dict[tuple, list[Anchor]] = {}
    for a in loaded:
        same_input.setdefault((tuple(a.input_size), tuple(a.mean), tuple(a.std)), []).append(a)
    for split in splits:
        for group in same_input.values():
            _extract_split(group, infos, out, data=data, split=split, batch_size=batch_size, dtype=dtype,
                           device=device, shard_rows=shard_rows, val_fraction=val_fraction, seed=seed, limit=limit,
                           num_workers=num_workers, progress=progress)
    return {(a.name, split): cache_dir_for(out, a, split) for a in loaded for split in splits}


def cached_anchors(out: str | os.PathLike, split: str) -> list[str]:
    """Names of the anchors with a complete `split` cache under `out`."""
    return sorted(p.parent.parent.name for p in Path(out).glob(f"*/{split}/manifest.json"))
