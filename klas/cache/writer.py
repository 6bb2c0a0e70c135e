"""Crash-safe writer of one activation cache (one anchor, one split).

Rows arrive in order; every `shard_rows` rows become one shard, written under a temporary name,
fsynced, renamed, and recorded in `progress.json`. `finish()` writes `manifest.json` last. A writer
opened on a directory with a matching `progress.json` resumes after the last complete shard, so
an interrupted extraction ends with the same bytes as an uninterrupted one (provided the rows fed
after resuming are the same, which extraction guarantees by starting at `rows_done`).
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
    checksum,
    fsync_dir,
    labels_offset,
    pack_header,
    shard_file_bytes,
    write_json_atomic,
)
from klas.errors import CacheError

__all__ = ["CacheWriter", "shard_name"]


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.bin"


class CacheWriter:
    """Streams rows ``[n, row_width]`` and labels ``[n]`` into shards; resumable.

    Args:
        cache_dir: the (anchor, split) directory; created if needed.
        anchor, split, dtype, blocks, num_classes, num_samples: what the manifest will say.
        shard_rows: rows per shard (the last shard may be shorter).
        source: dataset and extraction settings; a resume only continues matching settings.
        anchor_info: facts about the anchor kept with the cache (input size, FLOPs per part).
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
    ):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if shard_rows <= 0:
            raise ValueError(f"shard_rows must be positive, got {shard_rows}")
        if num_samples <= 0:
            raise CacheError(f"{cache_dir}: nothing to write (0 samples in split {split!r})")
        self.dir = Path(cache_dir)
        self.dtype = dtype
        self.storage = DTYPES[dtype][1]
        self.row_width = sum(b.width for b in blocks)
        self.row_bytes = self.row_width * self.storage.itemsize
        self.shard_rows = shard_rows
        self._header_fields = dict(
            anchor=anchor, split=split, dtype=dtype, num_samples=num_samples,
            row_width=self.row_width, num_classes=num_classes, blocks=blocks, source=source,
            anchor_info=anchor_info or {},
        )
        self._settings = {
            "manifest": Manifest(shards=(), **self._header_fields).to_json(),
            "shard_rows": shard_rows,
        }
        self._make_dir_writable()
        self.shards: list[ShardEntry] = self._resume()
        self.rows_done = sum(s.rows for s in self.shards)
        self._buf = np.empty((min(shard_rows, num_samples), self.row_width), dtype=self.storage)
        self._labels = np.empty(len(self._buf), dtype=np.int64)
        self._fill = 0

    # -- setup ------------------------------------------------------------------------------
    def _make_dir_writable(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise CacheError(
                f"output directory {self.dir} is not writable ({e.strerror or e}); "
                "choose another --out or fix its permissions"
            ) from None

    def _resume(self) -> list[ShardEntry]:
        """Shards kept from an interrupted run with the same settings (checked on disk)."""
        import json

        progress = self.dir / "progress.json"
        kept: list[ShardEntry] = []
        if progress.exists():
            try:
                state = json.loads(progress.read_text())
            except (OSError, ValueError):
                state = None
            if state is not None and state.get("settings") == _jsonable(self._settings):
                for i, s in enumerate(state.get("shards", [])):
                    entry = ShardEntry(file=s["file"], rows=int(s["rows"]), crc32c=int(s["crc32c"]))
                    path = self.dir / entry.file
                    if (entry.file != shard_name(i) or not path.is_file()
                            or path.stat().st_size != shard_file_bytes(entry.rows, self.row_bytes)
                            or _file_crc(path) != entry.crc32c):
                        break  # keep only the intact prefix
                    kept.append(entry)
            else:
                warnings.warn(f"{self.dir}: an interrupted extraction with other settings is discarded", stacklevel=3)
        # Anything beyond the kept prefix is stale: remove it so no reader can mistake it.
        keep = {s.file for s in kept}
        for stale in self.dir.glob("shard-*"):
            if stale.name not in keep:
                stale.unlink()
        (self.dir / "manifest.json").unlink(missing_ok=True)
        return kept

    # -- writing ----------------------------------------------------------------------------
    def append(self, features: np.ndarray, labels: np.ndarray) -> None:
        """Adds rows. features: ``[n, row_width]`` (cast to the cache dtype), labels: ``[n]``."""
        if features.ndim != 2 or features.shape[1] != self.row_width:
            raise ValueError(f"features must be [n, {self.row_width}], got {list(features.shape)}")
        if labels.shape != (features.shape[0],):
            raise ValueError(f"labels must be [{features.shape[0]}], got {list(labels.shape)}")
        if len(labels) and (labels.min() < 0 or labels.max() >= self._header_fields["num_classes"]):
            classes = self._header_fields["num_classes"]
            bad = labels[(labels < 0) | (labels >= classes)]
            raise ValueError(f"labels must lie in 0..{classes - 1} (the anchor's classes), got {bad[:5].tolist()}; "
                             "check that the dataset's classes are the anchor's")
        start = 0
        while start < len(features):
            take = min(len(features) - start, len(self._buf) - self._fill)
            self._buf[self._fill:self._fill + take] = features[start:start + take]
            self._labels[self._fill:self._fill + take] = labels[start:start + take]
            self._fill += take
            start += take
            if self._fill == len(self._buf):
                self._flush()
        if self.rows_done + self._fill > self._header_fields["num_samples"]:
            raise ValueError("more rows appended than num_samples")

    def _flush(self) -> None:
        if self._fill == 0:
            return
        rows = self._fill
        feats = np.ascontiguousarray(self._buf[:rows]).view(np.uint8).reshape(-1)
        pad = labels_offset(rows, self.row_bytes) - (64 + feats.nbytes)
        parts = [pack_header(DTYPES[self.dtype][0], rows, self.row_bytes), feats, b"\0" * pad,
                 np.ascontiguousarray(self._labels[:rows]).view(np.uint8)]
        crc = 0
        for part in parts:
            crc = checksum(part, crc)
        name = shard_name(len(self.shards))
        tmp = self.dir / (name + ".tmp")
        with open(tmp, "wb") as f:
            for part in parts:
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / name)
        fsync_dir(self.dir)
        self.shards.append(ShardEntry(file=name, rows=rows, crc32c=crc))
        self.rows_done += rows
        self._fill = 0
        write_json_atomic(self.dir / "progress.json", {
            "settings": self._settings, "shards": [s.__dict__ for s in self.shards],
        })

    def finish(self) -> Manifest:
        """Writes the last shard and the manifest; returns the manifest."""
        self._flush()
        if self.rows_done != self._header_fields["num_samples"]:
            raise CacheError(
                f"{self.dir}: {self.rows_done} rows written, {self._header_fields['num_samples']} expected"
            )
        manifest = Manifest(shards=tuple(self.shards), **self._header_fields)
        manifest.check(str(self.dir))
        write_json_atomic(self.dir / "manifest.json", manifest.to_json())
        (self.dir / "progress.json").unlink(missing_ok=True)
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
