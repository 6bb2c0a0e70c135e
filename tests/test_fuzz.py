"""Fuzzing the cache readers: no file content may crash the process.

Every input is a small valid cache with damage applied (flipped bytes, truncation, junk appended
to a shard; manifest fields replaced by other numbers, strings or types). Reading it must either
deliver batches or raise CacheError: never a segfault, a hang, or another exception. The example
counts (default 3,000 shard inputs + 2,000 manifest inputs against the native reader, so that the
whole suite stays within its time) can be raised with KLAS_FUZZ_EXAMPLES (10,000 doubles them) for
longer runs, e.g. on a build with KLAS_SANITIZE=1 (README).
"""
from __future__ import annotations

import json
import os
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from klas.cache import CacheReader
from klas.errors import CacheError
from test_cache import write_cache

SCALE = float(os.environ.get("KLAS_FUZZ_EXAMPLES", "5000")) / 10000


def fuzz(examples: int) -> settings:
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "cache"
    write_cache(path, 40, shard_rows=16, widths=(3, 2), num_classes=3)
    return path


def _read_everything(path, backend: str, verify: bool) -> None:
    try:
        reader = CacheReader(path, backend=backend, verify=verify)
        for batch in reader.batches(7, shuffle=True, seed=1, epoch=0):
            batch.torch()
        for batch in reader.batches(16):
            pass
    except CacheError:
        pass  # the one allowed failure


shard_damage = st.fixed_dictionaries({
    "shard": st.integers(0, 2),
    "flips": st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=6),
    "truncate": st.one_of(st.none(), st.integers(0, 2_000)),
    "append": st.binary(max_size=64),
    "verify": st.booleans(),
})


@fuzz(6000)
@given(damage=shard_damage)
def test_damaged_shards_never_crash_the_reader(pristine, tmp_path_factory, damage):
    path = tmp_path_factory.mktemp("case") / "c"
    shutil.copytree(pristine, path)
    shard = sorted(path.glob("shard-*.bin"))[damage["shard"]]
    data = bytearray(shard.read_bytes())
    for pos, xor in damage["flips"]:
        data[pos % len(data)] ^= xor
    if damage["truncate"] is not None:
        data = data[:damage["truncate"]]
    shard.write_bytes(bytes(data) + damage["append"])
    _read_everything(path, "native", damage["verify"])
    shutil.rmtree(path.parent)


values = st.one_of(st.integers(-2**63, 2**64), st.integers(-3, 300), st.text(max_size=8), st.none(),
                   st.floats(allow_nan=True), st.lists(st.integers(-5, 50), max_size=3), st.booleans())
FIELDS = ["num_samples", "row_width", "num_classes", "dtype", "version", "format",
          "shards.rows", "shards.bytes", "shards.checksum", "shards.file", "shards",
          "blocks.width", "blocks.offset", "blocks.index", "blocks.grid", "blocks"]


@fuzz(4000)
@given(edits=st.lists(st.tuples(st.sampled_from(FIELDS), st.integers(0, 5), values), min_size=1, max_size=4),
       verify=st.booleans())
def test_lying_manifests_never_crash_the_reader(pristine, tmp_path_factory, edits, verify):
    path = tmp_path_factory.mktemp("case") / "c"
    shutil.copytree(pristine, path)
    manifest = json.loads((path / "manifest.json").read_text())
    for field, k, value in edits:
        if "." in field:
            group, key = field.split(".")
            items = manifest.get(group)
            if isinstance(items, list) and items:
                item = items[k % len(items)]
                if isinstance(item, dict):
                    item[key] = value
        else:
            manifest[field] = value
    (path / "manifest.json").write_text(json.dumps(manifest))
    _read_everything(path, "native", verify)
    shutil.rmtree(path.parent)
