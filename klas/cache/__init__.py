"""The activation cache: pooled block outputs of one anchor on one split, in checksummed shards."""
from klas.cache.format import BlockEntry, Manifest, ShardEntry, checksum, read_manifest
from klas.cache.reader import Batch, CacheReader, native_available, row_ranges
from klas.cache.writer import CacheWriter

__all__ = [
    "Batch", "BlockEntry", "CacheReader", "CacheWriter", "Manifest", "ShardEntry",
    "checksum", "native_available", "read_manifest", "row_ranges",
]
