"""Crash-safe writer of one activation cache (one anchor, one split).

Shard k holds rows ``[k * shard_rows, (k + 1) * shard_rows)`` (the last one may be shorter). With
several ranks, rank r writes the shards k with ``k % world_size == r``; alone, it writes them all.
Rows arrive in order of the writer's shards (`pending_rows` says which); each shard is written
under a temporary name, fsynced, renamed, and recorded in the rank's progress file
(`progress.json`, or ``progress-<rank>-of-<world_size>.json``). `finish()` writes `manifest.json`
last: at once when alone, else `write_manifest()` on rank 0 once every rank has finished. A writer
opened on a directory with a matching progress file resumes after its last complete shard, so an
interrupted extraction ends with the same bytes as an uninterrupted one, on any number of ranks
(provided the rows fed are the same, which extraction guarantees by reading `pending_rows`).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from klas.cache.format import (
    DTYPES,
    BlockEntry,
    Manifest,
    ShardEntry,
    _int,  # the manifest's strict integer, for progress files too
    checksum,
    labels_offset,
    pack_header,
    shard_file_bytes,
    write_json_atomic,
)
from klas.errors import CacheError, UsageError
from klas.files import atomic_path

__all__ = ["CacheWriter", "shard_name", "progress_name"]


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.bin"


def progress_name(rank: int = 0, world_size: int = 1) -> str:
    """The progress file of one rank of an unfinished extraction."""
    return "progress.json" if world_size == 1 else f"progress-{rank}-of-{world_size}.json"


def _shard_index(file_name: str) -> int | None:
    stem = file_name.split(".", 1)[0]  # shard-00012.bin or shard-00012.bin.tmp
    digits = stem[len("shard-"):]
    return int(digits) if stem.startswith("shard-") and digits.isdigit() else None


class CacheWriter:
    """Streams rows ``[n, row_width]`` and labels ``[n]`` into shards; resumable.

    Args:
        cache_dir: the (anchor, split) directory; created if needed.
        anchor, split, dtype, blocks, num_classes, num_samples: what the manifest will say.
        shard_rows: rows per shard (the last shard may be shorter).
        source: dataset and extraction settings; a resume only continues matching settings.
        anchor_info: facts about the anchor kept with the cache (input size, FLOPs per part).
        rank, world_size: this writer writes the shards k with ``k % world_size == rank``.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        *,
        anchor: str,
        split: str,
        dtype: str,
        blocks: tuple[BlockEntry, ...],
        num_classes: int,
        num_samples: int,
        shard_rows: int,
        source: dict[str, Any],
        anchor_info: dict[str, Any] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        if dtype not in DTYPES:
            raise UsageError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if shard_rows <= 0:
            raise UsageError(f"shard_rows must be positive, got {shard_rows}")
        if num_samples <= 0:
            raise CacheError(f"{cache_dir}: nothing to write (0 samples in split {split!r})")
        if not 0 <= rank < world_size:
            raise UsageError(f"rank {rank} is outside world_size {world_size}")
        self.dir = Path(cache_dir)
        self.dtype = dtype
        self.storage = DTYPES[dtype][1]
        self.row_width = sum(b.width for b in blocks)
        self.row_bytes = self.row_width * self.storage.itemsize
        self.shard_rows = shard_rows
        self.num_samples = num_samples
        self.rank, self.world_size = rank, world_size
        self.num_shards = -(-num_samples // shard_rows)
        self.mine = list(range(rank, self.num_shards, world_size))  # shard indices this writer writes
        self._header_fields = dict(
            anchor=anchor, split=split, dtype=dtype, num_samples=num_samples,
            row_width=self.row_width, num_classes=num_classes, blocks=blocks, source=source,
            anchor_info=anchor_info or {},
        )
        self._settings = {
            "manifest": Manifest(shards=(), **self._header_fields).to_json(),
            "shard_rows": shard_rows,
            "world_size": world_size,
        }
        self._progress = self.dir / progress_name(rank, world_size)
        self._make_dir_writable()
        self._lock = self._take_lock()
        self.shards: list[ShardEntry] = self._resume()  # this writer's finished shards, in order
        self.rows_done = sum(s.rows for s in self.shards)
        self._buf = np.empty((min(shard_rows, num_samples), self.row_width), dtype=self.storage)
        self._labels = np.empty(len(self._buf), dtype=np.int64)
        self._fill = 0

    # -- setup ------------------------------------------------------------------------------
    def _make_dir_writable(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / f".write-test-{self.rank}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise CacheError(
                f"output directory {self.dir} is not writable ({e.strerror or e}); "
                "choose another --out or fix its permissions"
            ) from None

    def _take_lock(self) -> int | None:
        """An exclusive lock on the cache folder (rank 0), held until `finish` or the process ends:
        a second extraction into the same folder is refused instead of racing on its files."""
        from klas.locking import flock_or_busy, locks_disabled

        if self.rank != 0 or locks_disabled():
            return None  # ranks of one job share the folder; rank 0's lock keeps other jobs out
        fd = os.open(self.dir, os.O_RDONLY)
        if not flock_or_busy(fd, self.dir):
            raise CacheError(f"{self.dir} is being written by another extraction (it holds the folder's lock); wait "
                             "for it to finish, or choose another --out")
        return fd

    def release(self) -> None:
        """Gives up the folder's lock (also when the writer is garbage-collected or the process ends)."""
        if getattr(self, "_lock", None) is not None:
            os.close(self._lock)
            self._lock = None

    def __del__(self):
        self.release()

    def shard_rows_of(self, index: int) -> tuple[int, int]:
        """``(first row, rows)`` of shard `index`."""
        start = index * self.shard_rows
        return start, min(self.shard_rows, self.num_samples - start)

    def pending_rows(self) -> list[tuple[int, int]]:
        """``(first row, rows)`` of each shard this writer has still to write, in the order it wants them."""
        return [self.shard_rows_of(k) for k in self.mine[len(self.shards):]]

    def _recorded(self, progress: Path) -> list[ShardEntry] | None:
        """The shards a progress file records, if it reads back and holds these settings; else None."""
        from klas.reading import read_json

        try:
            state = read_json(progress, what="progress file", fix="", error=CacheError, inside=self.dir)
            if state.get("settings") != _jsonable(self._settings):
                return None
            return [ShardEntry(file=s["file"], rows=_int(s["rows"]), crc32c=_int(s["crc32c"])) for s in state["shards"]]
        except (CacheError, OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def _resume(self) -> list[ShardEntry]:
        """Shards kept from an interrupted run with the same settings (checked on disk)."""
        kept: list[ShardEntry] = []
        recorded = self._recorded(self._progress) if self._progress.exists() else []
        if recorded is None:
            warnings.warn(f"{self.dir}: an interrupted extraction with other settings, or an unreadable progress "
                          "file, is discarded", stacklevel=3)
            recorded = []
        for k, entry in zip(self.mine, recorded):
            path = self.dir / entry.file
            if (entry.file != shard_name(k) or entry.rows != self.shard_rows_of(k)[1] or not path.is_file()
                    or path.stat().st_size != shard_file_bytes(entry.rows, self.row_bytes)
                    or _file_crc(path) != entry.crc32c):
                break  # keep only the intact prefix
            kept.append(entry)
        # Anything of this writer's beyond the kept prefix is stale: remove it so no reader can mistake
        # it. Each shard index belongs to one rank; rank 0 also owns indices past the end, the
        # manifest, and progress files of other rank counts.
        keep = {s.file for s in kept}
        for stale in self.dir.glob("shard-*"):
            k = _shard_index(stale.name)
            ours = k is None or (k % self.world_size == self.rank if k < self.num_shards else self.rank == 0)
            if ours and stale.name not in keep:
                stale.unlink(missing_ok=True)
        if self.rank == 0:
            (self.dir / "manifest.json").unlink(missing_ok=True)
            current = {progress_name(r, self.world_size) for r in range(self.world_size)}
            for old in self.dir.glob("progress*.json"):
                if old.name not in current:
                    old.unlink(missing_ok=True)
        return kept

    # -- writing ----------------------------------------------------------------------------
    def append(self, features: np.ndarray, labels: np.ndarray) -> None:
        """Adds rows. features: ``[n, row_width]`` (cast to the cache dtype), labels: ``[n]``."""
        if features.ndim != 2 or features.shape[1] != self.row_width:
            raise UsageError(f"features must be [n, {self.row_width}], got {list(features.shape)}")
        if labels.shape != (features.shape[0],):
            raise UsageError(f"labels must be [{features.shape[0]}], got {list(labels.shape)}")
        if len(labels) and (labels.min() < 0 or labels.max() >= self._header_fields["num_classes"]):
            classes = self._header_fields["num_classes"]
            bad = labels[(labels < 0) | (labels >= classes)]
            raise UsageError(f"labels must lie in 0..{classes - 1} (the anchor's classes), got {bad[:5].tolist()}; "
                             "check that the dataset's classes are the anchor's")
        start = 0
        while start < len(features):
            if len(self.shards) == len(self.mine):
                raise UsageError(f"more rows appended than this writer's shards hold ({self.rows_done} rows)")
            capacity = self.shard_rows_of(self.mine[len(self.shards)])[1]
            take = min(len(features) - start, capacity - self._fill)
            self._buf[self._fill:self._fill + take] = features[start:start + take]
            self._labels[self._fill:self._fill + take] = labels[start:start + take]
            self._fill += take
            start += take
            if self._fill == capacity:
                self._flush()

    def _flush(self) -> None:
        if self._fill == 0:
            return
        rows = self._fill
        feats = np.ascontiguousarray(self._buf[:rows]).view(np.uint8).reshape(-1)
        pad = labels_offset(rows, self.row_bytes) - (64 + feats.nbytes)
        index = self.mine[len(self.shards)]
        header = pack_header(DTYPES[self.dtype][0], rows, self.row_bytes, index, self.shard_rows_of(index)[0])
        parts = [header, feats, b"\0" * pad,
                 np.ascontiguousarray(self._labels[:rows]).view(np.uint8)]
        crc = 0
        for part in parts:
            crc = checksum(part, crc)
        name = shard_name(index)
        with atomic_path(self.dir / name) as tmp, open(tmp, "wb") as f:
            for part in parts:
                f.write(part)
        self.shards.append(ShardEntry(file=name, rows=rows, crc32c=crc))
        self.rows_done += rows
        self._fill = 0
        write_json_atomic(self._progress, {
            "settings": self._settings, "shards": [s.__dict__ for s in self.shards],
        })

    def finish(self) -> Manifest | None:
        """Writes this writer's last shard; alone, also the manifest (returned). With several ranks,
        returns None: rank 0 calls `write_manifest` once every rank has finished."""
        self._flush()
        expected = sum(self.shard_rows_of(k)[1] for k in self.mine)
        if self.rows_done != expected:
            raise CacheError(f"{self.dir}: {self.rows_done} rows written by {self._who()}, {expected} expected")
        manifest = self.write_manifest() if self.world_size == 1 else None
        self.release()
        return manifest

    def _who(self) -> str:
        return "this writer" if self.world_size == 1 else f"rank {self.rank} of {self.world_size}"

    def write_manifest(self) -> Manifest:
        """The manifest of every rank's shards (read from their progress files), written last."""
        if self.world_size == 1:
            shards = list(self.shards)
        else:
            found: dict[str, ShardEntry] = {}
            for r in range(min(self.world_size, self.num_shards)):  # ranks past the shard count own none
                path = self.dir / progress_name(r, self.world_size)
                recorded = self._recorded(path)
                if recorded is None:
                    raise CacheError(f"{path} is missing, unreadable or from other settings: rank {r} did not "
                                     "finish its shards; run the extraction again to resume")
                found.update((e.file, e) for e in recorded)
            missing = [shard_name(k) for k in range(self.num_shards) if shard_name(k) not in found]
            if missing:
                raise CacheError(f"{self.dir}: shards {missing[:3]} are not finished; run the extraction again to resume")
            shards = [found[shard_name(k)] for k in range(self.num_shards)]
        manifest = Manifest(shards=tuple(shards), **self._header_fields)
        manifest.check(str(self.dir))
        write_json_atomic(self.dir / "manifest.json", manifest.to_json())
        for r in range(self.world_size):
            (self.dir / progress_name(r, self.world_size)).unlink(missing_ok=True)
        return manifest


def _file_crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            crc = checksum(chunk, crc)
    return crc


def _jsonable(obj: Any) -> Any:
    """`obj` as it reads back from JSON (tuples become lists)."""
    import json

    return json.loads(json.dumps(obj))
