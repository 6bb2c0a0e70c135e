"""Reading an activation cache in batches: the native streaming reader, or a NumPy fallback.

`CacheReader(cache_dir).batches(batch_size, shuffle=..., seed=..., epoch=...)` yields `Batch`es:
features ``[b, row_width]`` in the cache dtype and labels ``[b]``. The native reader (klas._C)
memory-maps the shards, reads ahead on a background thread without the GIL and hands out
zero-copy arrays; the pure-Python reader gives identical bytes and exists for a missing build.

Sample order is one function, `row_ranges`, shared by both readers: sequential, or chunks of
`chunk_rows` contiguous rows in a seeded random order (per epoch), optionally one rank's share.
`batch_share` cuts one rank's slice out of every batch of such an order (data-parallel training
whose steps are the one-process steps, split across the ranks).
"""
from __future__ import annotations

import os
import stat
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from klas.cache.format import (
    DTYPES,
    HEADER_BYTES,
    HEADER_FORMAT,
    SHARD_MAGIC,
    SHARD_VERSION,
    Manifest,
    checksum,
    labels_offset,
    read_manifest,
    shard_file_bytes,
)
from klas.errors import CacheError, UsageError
from klas.reading import regular_file

__all__ = ["Batch", "CacheReader", "row_ranges", "batch_share", "native_available"]

try:
    from klas import _C
except ImportError as _e:  # pragma: no cover - exercised only on a broken build
    _C = None
    _IMPORT_ERROR = _e
else:
    # the shard layout is defined here (format.py) and in csrc/shard.h: a build of other sources is not used
    if (_C.SHARD_HEADER_BYTES, _C.SHARD_VERSION) != (HEADER_BYTES, SHARD_VERSION):  # pragma: no cover
        warnings.warn(f"klas._C was built for shard version {_C.SHARD_VERSION} ({_C.SHARD_HEADER_BYTES}-byte "
                      f"headers), this klas writes version {SHARD_VERSION}: the native reader is off; rebuild it "
                      "with `python setup.py build_ext --inplace`", stacklevel=1)
        _C = None


def native_available() -> bool:
    return _C is not None


def row_ranges(
    num_rows: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    chunk_rows: int = 256,
    rank: int = 0,
    world_size: int = 1,
) -> list[tuple[int, int]]:
    """The order in which rows are read, as ``(start, count)`` runs of contiguous rows.

    Chunks of `chunk_rows` rows are permuted by `np.random.default_rng((seed, epoch))` when
    `shuffle`; rank `rank` of `world_size` takes every `world_size`-th chunk of that order.
    """
    if chunk_rows <= 0:
        raise UsageError(f"chunk_rows must be positive, got {chunk_rows}")
    if not 0 <= rank < world_size:
        raise UsageError(f"rank {rank} is outside world_size {world_size}")
    starts = np.arange(0, num_rows, chunk_rows, dtype=np.int64)
    if shuffle:
        starts = starts[np.random.default_rng((seed, epoch)).permutation(len(starts))]
    starts = starts[rank::world_size]
    return [(int(s), int(min(chunk_rows, num_rows - s))) for s in starts]


def batch_share(ranges: list[tuple[int, int]], batch_size: int, rank: int, world_size: int) -> list[tuple[int, int]]:
    """Rank `rank`'s slice of every batch read in the order of `ranges`, as row runs.

    The stream of rows that `ranges` describes is cut into batches of `batch_size`; rank r takes
    positions ``[r * b, (r + 1) * b)`` of each, b = batch_size // world_size (so of a short last
    batch a rank may get fewer rows, or none). Read in batches of b, a rank's steps are the
    one-process steps, split.
    """
    if batch_size % world_size:
        raise UsageError(f"the batch size {batch_size} must be a multiple of the number of ranks {world_size}")
    if not 0 <= rank < world_size:
        raise UsageError(f"rank {rank} is outside world_size {world_size}")
    if world_size == 1:
        return list(ranges)
    share = batch_size // world_size
    out: list[tuple[int, int]] = []
    pos = 0  # stream position of the current run's first row
    for start, count in ranges:
        end = pos + count
        # wanted windows [t*B + r*b, t*B + (r+1)*b) that meet [pos, end)
        t = pos // batch_size
        while t * batch_size + rank * share < end:
            lo = max(pos, t * batch_size + rank * share)
            hi = min(end, t * batch_size + (rank + 1) * share)
            if lo < hi:
                if out and out[-1][0] + out[-1][1] == start + lo - pos:
                    out[-1] = (out[-1][0], out[-1][1] + hi - lo)
                else:
                    out.append((start + lo - pos, hi - lo))
            t += 1
        pos = end
    return out


@dataclass
class Batch:
    """One batch. features: ``[b, row_width]`` (float16/float32, or uint16 bits for bfloat16);
    labels: int64 ``[b]``. With the native reader both view the reader's buffer, which is
    recycled once they are freed."""

    features: np.ndarray
    labels: np.ndarray
    dtype: str

    def torch(self):
        """``(features, labels)`` as torch tensors sharing this batch's memory."""
        import torch

        feats = torch.from_numpy(self.features)
        if self.dtype == "bfloat16":
            feats = feats.view(torch.bfloat16)
        return feats, torch.from_numpy(self.labels)


class CacheReader:
    """A complete cache directory, ready to stream.

    Args:
        cache_dir: directory holding manifest.json and the shards.
        verify: check each shard's CRC-32C the first time it is read (once per reader).
        backend: "auto" (native when built), "native" or "python".
    """

    def __init__(self, cache_dir: str | os.PathLike, *, verify: bool = True, backend: str = "auto"):
        self.dir = Path(cache_dir)
        self.manifest: Manifest = read_manifest(self.dir)
        if backend not in ("auto", "native", "python"):
            raise UsageError(f"backend must be 'auto', 'native' or 'python', got {backend!r}")
        if backend == "auto":
            if _C is None:
                warnings.warn(
                    f"klas._C is not built ({_IMPORT_ERROR}); reading the cache with the slower "
                    "pure-Python reader. Reinstall with `pip install -e .` to build it.",
                    RuntimeWarning, stacklevel=2,
                )
            backend = "native" if _C is not None else "python"
        if backend == "native" and _C is None:
            raise ImportError("klas._C is not built; reinstall with `pip install -e .`")
        self.backend = backend
        self.verify = verify
        m = self.manifest
        self._dtype_code, self._storage = DTYPES[m.dtype]
        paths = [str(self.dir / s.file) for s in m.shards]
        for p in paths:
            _check_shard_file(p, self.dir)
        if backend == "native":
            starts = np.cumsum([0] + [s.rows for s in m.shards]).tolist()
            specs = [_C.ShardSpec(p, s.rows, s.crc32c, k, starts[k]) for k, (p, s) in enumerate(zip(paths, m.shards))]
            self._shards = _C.ShardSet(specs, m.row_bytes, self._dtype_code, verify)
        else:
            self._shards = _PythonShards(paths, m, self._dtype_code, verify)

    @property
    def num_samples(self) -> int:
        return self.manifest.num_samples

    def fingerprint(self) -> str:
        """A digest of the manifest (what scores record of the caches they were computed on)."""
        import hashlib

        return hashlib.sha256((self.dir / "manifest.json").read_bytes()).hexdigest()[:16]

    def check(self) -> None:
        """Opens and verifies every shard now; CacheError names the first bad one."""
        self._shards.check_all()

    def check_values(self, features, labels=None) -> None:
        """CacheError unless a batch read from this cache (torch tensors) holds finite features and
        labels within the classes. The checksum cannot catch these: they were written so."""
        import math

        import torch

        # One float64 sum: NaN or ±Inf anywhere makes it non-finite, and finite 16- or 32-bit values
        # cannot overflow it (several times faster than isfinite().all() on a batch).
        if not math.isfinite(float(features.sum(dtype=torch.float64))):
            raise CacheError(f"cache {self.dir} holds NaN/Inf activations; extract it again (and check the "
                             "anchor's checkpoint and input normalisation if it comes back)")
        c = self.manifest.num_classes
        if labels is not None and len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= c):
            raise CacheError(f"cache {self.dir} holds labels outside 0..{c - 1}; extract it again from a dataset "
                             "of the anchor's classes")

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
        chunk_rows: int = 256,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        num_buffers: int = 4,
    ) -> Iterator[Batch]:
        """Yields batches in the order of `row_ranges` (same arguments)."""
        ranges = row_ranges(self.num_samples, shuffle=shuffle, seed=seed, epoch=epoch,
                            chunk_rows=chunk_rows, rank=rank, world_size=world_size)
        return self.batches_over(ranges, batch_size, drop_last=drop_last, num_buffers=num_buffers)

    def batches_over(self, ranges: list[tuple[int, int]], batch_size: int, *, drop_last: bool = False,
                     num_buffers: int = 4) -> Iterator[Batch]:
        """Yields batches over explicit ``(start, count)`` row runs."""
        if batch_size <= 0:
            raise UsageError(f"batch_size must be positive, got {batch_size}")
        if self.backend == "native":
            stream = _C.StreamReader(self._shards, ranges, batch_size, drop_last, num_buffers)
            return self._native_iter(stream)
        return self._python_iter(ranges, batch_size, drop_last)

    def _native_iter(self, stream) -> Iterator[Batch]:
        while (item := stream.next()) is not None:
            raw, labels = item
            yield Batch(raw.view(self._storage), labels, self.manifest.dtype)

    def _python_iter(self, ranges, batch_size, drop_last) -> Iterator[Batch]:
        feats, labels, have = [], [], 0
        for start, count in ranges:
            for f, l in self._shards.read(start, count):
                feats.append(f)
                labels.append(l)
                have += len(l)
                while have >= batch_size:
                    yield self._cut(feats, labels, batch_size)
                    have -= batch_size
        if have and not drop_last:
            yield self._cut(feats, labels, have)

    def _cut(self, feats: list, labels: list, n: int) -> Batch:
        f = np.concatenate(feats)
        l = np.concatenate(labels)
        feats[:] = [f[n:]]
        labels[:] = [l[n:]]
        return Batch(np.ascontiguousarray(f[:n]).view(self._storage), l[:n].copy(), self.manifest.dtype)


def _check_shard_file(path: str, cache_dir: Path) -> None:
    """CacheError if a shard that exists is not a regular file inside the cache (a link out of it, a
    FIFO, a device). A missing shard is left to the reader, which names it when its turn comes."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return
    except OSError:
        pass
    regular_file(path, inside=cache_dir, error=CacheError, fix="re-run extraction for this anchor and split")


class _PythonShards:
    """The fallback: np.memmap per shard, with the same checks and messages as csrc/shard.cpp."""

    def __init__(self, paths: list[str], manifest: Manifest, dtype_code: int, verify: bool):
        self.paths = paths
        self.m = manifest
        self.dtype_code = dtype_code
        self.verify = verify
        self.starts = np.cumsum([0] + [s.rows for s in manifest.shards])
        self._open: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def check_all(self) -> None:
        for i in range(len(self.paths)):
            self._shard(i)

    def _shard(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i in self._open:
            return self._open[i]
        path, spec, rb = self.paths[i], self.m.shards[i], self.m.row_bytes

        def fail(what: str):
            raise CacheError(f"cache shard {path}: {what}")

        expected = shard_file_bytes(spec.rows, rb)
        try:
            st = os.stat(path)
        except OSError as e:
            fail(f"cannot open ({e.strerror})")
        if not stat.S_ISREG(st.st_mode):
            fail("not a regular file (a FIFO, device or directory); re-run extraction for this anchor and split")
        actual = st.st_size
        if actual != expected:
            fail(f"{'truncated' if actual < expected else 'too long'}: {actual} bytes on disk, "
                 f"the manifest implies {expected}; re-run extraction for this anchor and split")
        data = np.memmap(path, dtype=np.uint8, mode="r")
        if bytes(data[:8]) != SHARD_MAGIC:
            fail("not a klas shard (bad magic bytes)")
        version, dtype, rows, row_bytes, lo, index, first_row = struct.unpack(HEADER_FORMAT, bytes(data[8:56]))
        if version != SHARD_VERSION:
            fail(f"shard format version {version}, this reader reads {SHARD_VERSION}")
        if (dtype, rows, row_bytes, lo) != (self.dtype_code, spec.rows, rb, labels_offset(spec.rows, rb)):
            fail(f"header does not match the manifest (header: dtype {dtype}, {rows} rows of {row_bytes} bytes; "
                 f"manifest: dtype {self.dtype_code}, {spec.rows} rows of {rb} bytes)")
        if (index, first_row) != (i, int(self.starts[i])):
            fail(f"is shard {index} (rows from {first_row}) but the manifest lists it as shard {i} (rows from "
                 f"{int(self.starts[i])}): the manifest lists shards out of place; re-run extraction for this anchor "
                 "and split")
        if self.verify:
            crc = checksum(np.ascontiguousarray(data))
            if crc != spec.crc32c:
                fail(f"checksum mismatch (crc32c on disk 0x{crc:x}, manifest 0x{spec.crc32c:x}): the file is "
                     "corrupted; re-run extraction for this anchor and split")
        feats = data[HEADER_BYTES:HEADER_BYTES + spec.rows * rb].reshape(spec.rows, rb)
        labels = data[lo:lo + 8 * spec.rows].view(np.int64)
        self._open[i] = (feats, labels)
        return self._open[i]

    def read(self, start: int, count: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yields (raw rows uint8 [n, row_bytes], labels [n]) covering rows [start, start+count)."""
        end = start + count
        while start < end:
            i = int(np.searchsorted(self.starts, start, side="right")) - 1
            feats, labels = self._shard(i)
            lo = start - int(self.starts[i])
            hi = min(end, int(self.starts[i + 1])) - int(self.starts[i])
            yield np.array(feats[lo:hi]), np.array(labels[lo:hi])
            start += hi - lo
