"""On-disk format of the activation cache: shard header, manifest, checksum.

A cache is one directory per (anchor, split)::

    manifest.json         written last; its presence means the cache is complete
    progress*.json        while extraction runs: each rank's finished shards (for resume)
    shard-00000.bin ...   fixed-layout binary shards (layout below, same as csrc/shard.h)

Shard layout (little-endian): a 64-byte header (magic ``KLASSHRD``, u32 version, u32 dtype code,
u64 rows, u64 row_bytes, u64 labels_offset, u64 shard index, u64 first row, zero padding), then the
features ``[rows, row_bytes]``
(every block's pooled output side by side, then the anchor's logits), then the int64 labels
``[rows]`` at ``labels_offset`` (64 + rows * row_bytes rounded up to a multiple of 64). The
manifest's CRC-32C covers the whole file; the shard's own index and first row let the reader check
that the manifest lists it in its place (a shard listed twice or two swapped are refused).
"""
from __future__ import annotations

import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from klas.anchors.base import FLOPS_UNIT, MAX_PREFIX_TOKENS, PartCounts
from klas.errors import CacheError, UsageError
from klas.files import fsync_dir, write_json_atomic  # noqa: F401  (part of this module's API)

__all__ = [
    "AnchorFacts",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "SHARD_VERSION",
    "HEADER_FORMAT",
    "HEADER_BYTES",
    "DTYPES",
    "BlockEntry",
    "ShardEntry",
    "Manifest",
    "checksum",
    "labels_offset",
    "shard_file_bytes",
    "pack_header",
    "read_manifest",
    "write_json_atomic",
]

FORMAT_NAME = "klas-activation-cache"
FORMAT_VERSION = 1
SHARD_MAGIC = b"KLASSHRD"
SHARD_VERSION = 2  # 2: the header carries the shard's index and first row
HEADER_BYTES = 64

# Cache dtype name -> (code stored in the shard header, NumPy storage dtype). bfloat16 is kept as
# its raw 16 bits (NumPy has no bfloat16); Batch.torch() views them as torch.bfloat16.
DTYPES: dict[str, tuple[int, np.dtype]] = {
    "float16": (1, np.dtype(np.float16)),
    "bfloat16": (2, np.dtype(np.uint16)),
    "float32": (3, np.dtype(np.float32)),
}


def checksum(data, crc: int = 0) -> int:
    """CRC-32C of a contiguous buffer (bytes, memoryview, C-contiguous ndarray), continuing `crc`."""
    try:
        from klas import _C

        return _C.crc32c(data, crc)
    except ImportError:
        import crc32c as _crc32c

        return _crc32c.crc32c(memoryview(data).cast("B"), crc)


def labels_offset(rows: int, row_bytes: int) -> int:
    """Byte offset of the labels in a shard of `rows` rows."""
    end = HEADER_BYTES + rows * row_bytes
    return (end + 63) // 64 * 64


def shard_file_bytes(rows: int, row_bytes: int) -> int:
    """Exact size of a complete shard file."""
    return labels_offset(rows, row_bytes) + 8 * rows


HEADER_FORMAT = "<IIQQQQQ"  # after the magic: version, dtype, rows, row_bytes, labels_offset, index, first_row


def pack_header(dtype_code: int, rows: int, row_bytes: int, index: int, first_row: int) -> bytes:
    """The 64-byte header of shard `index`, which holds rows ``[first_row, first_row + rows)``."""
    head = SHARD_MAGIC + struct.pack(
        HEADER_FORMAT, SHARD_VERSION, dtype_code, rows, row_bytes, labels_offset(rows, row_bytes), index, first_row
    )
    return head + b"\0" * (HEADER_BYTES - len(head))


LOGITS_INDEX = 0  # the logits' `index` in a manifest file (format version 1)


@dataclass(frozen=True)
class BlockEntry:
    """One column group of a row: a block's pooled output, or the anchor's logits.

    `index` is the 1-indexed block number (KLAS notation). The logits' entry (kind "logits") is
    stored with index LOGITS_INDEX (0) in the manifest; code reaches it as `Manifest.logits_entry`
    or by the name klas.anchors.base.LOGITS, never by number.
    """

    name: str
    index: int
    width: int
    offset: int  # first column of this group in a row
    grid: tuple[int, ...] = ()  # spatial / token grid of the unpooled output
    kind: str = "block"  # "block" or "logits"


@dataclass(frozen=True)
class ShardEntry:
    file: str
    rows: int
    crc32c: int


@dataclass(frozen=True)
class Manifest:
    """What a complete cache holds. Everything a reader needs to check the shards."""

    anchor: str  # the anchor spec string
    split: str
    dtype: str
    num_samples: int
    row_width: int  # columns per row (Σ block widths + num_classes)
    num_classes: int
    blocks: tuple[BlockEntry, ...]
    shards: tuple[ShardEntry, ...]
    source: dict[str, Any] = field(default_factory=dict)  # dataset and extraction settings
    anchor_info: dict[str, Any] = field(default_factory=dict)  # input size, FLOPs per part

    @property
    def row_bytes(self) -> int:
        return self.row_width * DTYPES[self.dtype][1].itemsize

    @property
    def block_entries(self) -> tuple[BlockEntry, ...]:
        return tuple(b for b in self.blocks if b.kind == "block")

    @property
    def samples_digest(self) -> str | None:
        """Identity of the cached samples in order (`klas.extraction.data.samples_digest`); None if not recorded."""
        return self.source.get("samples")

    @property
    def class_names(self) -> tuple[str, ...] | None:
        names = self.source.get("classes")
        return tuple(names) if names is not None else None

    @property
    def weights_digest(self) -> str | None:
        """Digest of the anchor's weights at extraction (`Anchor.weights_digest`); None if not recorded."""
        return self.anchor_info.get("weights")

    def anchor_facts(self, where: str | os.PathLike = "manifest") -> "AnchorFacts":
        """The anchor's facts recorded at extraction (`AnchorFacts.from_json`); CacheError naming
        `where` when they are missing or malformed."""
        return AnchorFacts.from_json(self.anchor_info, len(self.block_entries), where)

    @property
    def logits_entry(self) -> BlockEntry:
        return next(b for b in self.blocks if b.kind == "logits")

    def to_json(self) -> dict[str, Any]:
        out = {"format": FORMAT_NAME, "version": FORMAT_VERSION}
        out.update(asdict(self))
        return out

    @staticmethod
    def from_json(data: Any, where: str) -> "Manifest":
        """Validates a parsed manifest; raises CacheError naming `where` and the bad field."""
        try:
            if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
                raise UsageError(f"not a {FORMAT_NAME} manifest")
            if data.get("version") != FORMAT_VERSION:
                raise UsageError(f"format version {data.get('version')!r}, this klas reads {FORMAT_VERSION}")
            dtype = data["dtype"]
            if dtype not in DTYPES:
                raise UsageError(f"unknown dtype {dtype!r}")
            blocks = tuple(
                BlockEntry(
                    name=str(b["name"]), index=_int(b["index"]), width=_int(b["width"]),
                    offset=_int(b["offset"]), grid=tuple(_int(g) for g in b.get("grid", ())),
                    kind=str(b.get("kind", "block")),
                )
                for b in data["blocks"]
            )
            shards = tuple(
                ShardEntry(file=str(s["file"]), rows=_int(s["rows"]), crc32c=_int(s["crc32c"]))
                for s in data["shards"]
            )
            m = Manifest(
                anchor=str(data["anchor"]), split=str(data["split"]), dtype=dtype,
                num_samples=_int(data["num_samples"]), row_width=_int(data["row_width"]),
                num_classes=_int(data["num_classes"]), blocks=blocks, shards=shards,
                source=dict(data.get("source", {})), anchor_info=dict(data.get("anchor_info", {})),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise CacheError(f"{where}: invalid manifest ({e}); re-run extraction") from None
        m.check(where)
        return m

    def check(self, where: str) -> None:
        """Internal consistency: widths tile the row, shard rows add up, files stay inside."""
        problems = []
        if sum(b.width for b in self.blocks) != self.row_width:
            problems.append("block widths do not add up to row_width")
        col = 0
        for b in self.blocks:
            if b.offset != col or b.width <= 0:
                problems.append(f"block {b.name!r} has offset {b.offset}, width {b.width}")
                break
            col += b.width
        if sum(1 for b in self.blocks if b.kind == "logits") != 1:
            problems.append("needs exactly one logits entry")
        if sum(s.rows for s in self.shards) != self.num_samples:
            problems.append("shard rows do not add up to num_samples")
        for s in self.shards:
            if s.rows <= 0 or not (0 <= s.crc32c < 2**32):
                problems.append(f"shard {s.file!r} has rows={s.rows}, crc32c={s.crc32c}")
            if Path(s.file).name != s.file or s.file in (".", "..") or not s.file.isprintable() or len(s.file) > 255:
                problems.append(f"shard file {s.file!r} is not a plain name inside the cache directory")
        if not self.shards:
            problems.append("lists no shards")
        problems += self._recorded_facts_problems()
        if problems:
            raise CacheError(f"{where}: manifest does not add up: " + "; ".join(problems) + "; re-run extraction")


    def _recorded_facts_problems(self) -> list[str]:
        """Type checks of what extraction recorded for later stages (FLOPs, identities, classes)."""
        problems = []
        for name, value in (("source.samples", self.samples_digest), ("anchor_info.weights", self.weights_digest)):
            if value is not None and not isinstance(value, str):
                problems.append(f"{name} is not a string")
        names = self.source.get("classes")
        if names is not None and (not isinstance(names, list) or len(names) != self.num_classes
                                  or not all(isinstance(n, str) for n in names)):
            problems.append(f"source.classes is not a list of {self.num_classes} class names")
        flops = self.anchor_info.get("flops")
        problem = None if flops is None else _flops_problem(flops, len(self.block_entries))
        if problem:
            problems.append(problem)
        return problems


# what an AnchorFacts holds beyond the FLOPs, only where an anchor has it (older caches stay valid):
# key -> (value when absent, lowest, highest + 1, what it is)
_OPTIONAL_FACTS = {"prefix_tokens": (0, 0, MAX_PREFIX_TOKENS, "a count"), "stem_width": (None, 1, 2**31, "a width")}


@dataclass(frozen=True)
class AnchorFacts:
    """What extraction records of an anchor for the stages after it, so that no later stage loads
    the anchor again (its spec is an identifier, never loaded from a file): the FLOPs of one image
    per part, a digest of its weights, its input size and block layouts, and, only where the anchor
    has them, its prefix (class) tokens and its stem's output width where it differs from block 1's
    (what a stitch at j = 0 maps to). The manifest's ``anchor_info`` is `to_json`; `from_json`, the
    one reader, checks every field."""

    flops: PartCounts
    weights: str | None = None
    input_size: tuple[int, ...] = ()
    layouts: tuple[str, ...] = ()
    prefix_tokens: int = 0
    stem_width: int | None = None

    @classmethod
    def of(cls, anchor) -> "AnchorFacts":
        """The facts of a loaded Anchor."""
        return cls(flops=anchor.flops, weights=anchor.weights_digest(), input_size=tuple(anchor.input_size),
                   layouts=tuple(anchor.layouts), prefix_tokens=anchor.prefix_tokens, stem_width=anchor.stem_width)

    def to_json(self) -> dict:
        info = {"input_size": list(self.input_size), "layouts": list(self.layouts), "flops": self.flops.to_json(),
                "flops_unit": FLOPS_UNIT, "weights": self.weights}
        if self.prefix_tokens:  # recorded only where there are some
            info["prefix_tokens"] = self.prefix_tokens
        if self.stem_width is not None:  # likewise: only where a stitch at j = 0 needs it
            info["stem_width"] = self.stem_width
        return info

    @classmethod
    def from_json(cls, info: dict, depth: int, where: str | os.PathLike = "manifest") -> "AnchorFacts":
        """The facts recorded in a manifest's ``anchor_info`` for an anchor of `depth` blocks;
        CacheError "<where>: ...; extract this cache again" when any is missing or malformed."""
        fix = "extract this cache again"
        flops = info.get("flops")
        if not flops:
            raise CacheError(f"{where} records no FLOPs for its anchor (written by an older klas, or edited); {fix}")
        problem = _flops_problem(flops, depth)
        if problem:
            raise CacheError(f"{where}: {problem}; {fix}")
        counts = _recorded_macs(PartCounts.from_json(flops), info.get("flops_unit"), where)
        values = {}
        for key, (absent, low, high, what) in _OPTIONAL_FACTS.items():
            n = info.get(key, absent)
            if key in info and (isinstance(n, bool) or not isinstance(n, int) or not low <= n < high):
                raise CacheError(f"{where}: anchor_info.{key} is {n!r}, not {what}; {fix}")
            values[key] = n
        weights = info.get("weights")
        return cls(flops=counts, weights=weights if isinstance(weights, str) else None,
                   input_size=tuple(info.get("input_size") or ()), layouts=tuple(info.get("layouts") or ()), **values)


def _recorded_macs(counts: PartCounts, unit: Any, where) -> PartCounts:
    """The recorded counts as multiply-accumulates. A manifest without `flops_unit` was written by an
    older klas, which recorded torch.utils.flop_counter's counts (two per multiply-accumulate, so
    always even): those are halved, exactly; any other unit is refused."""
    if unit == FLOPS_UNIT:
        return counts
    parts = (counts.stem, *counts.blocks, counts.head)
    if unit is not None or any(n % 2 for n in parts):
        raise CacheError(f"{where}: anchor_info.flops_unit is {unit!r} (with counts {counts.to_json()}); this klas "
                         f"records {FLOPS_UNIT!r} (multiply-accumulates); extract this cache again")
    return PartCounts(counts.stem // 2, tuple(n // 2 for n in counts.blocks), counts.head // 2)


def _flops_problem(flops: Any, depth: int) -> str | None:
    """What is wrong with a recorded {stem, blocks, head} of FLOPs for `depth` blocks (None: nothing)."""
    try:
        ok = (isinstance(flops, dict) and _int(flops["stem"]) >= 0 and _int(flops["head"]) >= 0
              and isinstance(flops["blocks"], list) and len(flops["blocks"]) == depth
              and all(_int(f) >= 0 for f in flops["blocks"]))
    except (KeyError, TypeError, ValueError):
        ok = False
    return None if ok else (f"anchor_info.flops is not {{stem, blocks: [{depth} counts], head}} of non-negative "
                            "integers")


def _int(value: Any) -> int:
    """A manifest integer: a JSON integer (not a float, bool or string) of sane size."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"expected an integer, got {value!r}")
    if not -(2**62) < value < 2**62:
        raise UsageError(f"integer {value} is out of range")
    return value


def read_manifest(cache_dir: str | os.PathLike) -> Manifest:
    """Reads and validates `cache_dir/manifest.json`; CacheError if missing or malformed."""
    from klas.reading import read_json

    path = Path(cache_dir) / "manifest.json"
    if not os.path.lexists(path):
        hint = " (extraction was interrupted: run it again to resume)" if any(Path(cache_dir).glob("progress*.json")) else ""
        raise CacheError(f"{path}: no manifest, so no complete cache here{hint}")
    data = read_json(path, what="cache manifest", fix="re-run extraction", error=CacheError, inside=cache_dir)
    return Manifest.from_json(data, str(path))
