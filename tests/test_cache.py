"""Activation cache: writer, native and Python readers, checksums, damage detection."""
from __future__ import annotations

import json
import math
import os

import crc32c as crc32c_package
import numpy as np
import pytest
import torch

from klas.cache import BlockEntry, CacheReader, CacheWriter, checksum, read_manifest, row_ranges
from klas.cache.format import DTYPES
from klas.errors import CacheError

from helpers import feature_cache

BACKENDS = ["native", "python"]


def make_blocks(widths, num_classes):
    blocks, off = [], 0
    for i, w in enumerate(widths, start=1):
        blocks.append(BlockEntry(name=f"b{i}", index=i, width=w, offset=off, grid=(4, 4)))
        off += w
    blocks.append(BlockEntry(name="logits", index=0, width=num_classes, offset=off, kind="logits"))
    return tuple(blocks)


def write_cache(path, rows, *, dtype="float16", widths=(5, 7, 3), num_classes=4, shard_rows=64, seed=0):
    """Writes random rows; returns (features in storage dtype, labels)."""
    rng = np.random.default_rng(seed)
    blocks = make_blocks(widths, num_classes)
    width = sum(b.width for b in blocks)
    storage = DTYPES[dtype][1]
    if dtype == "bfloat16":
        feats = rng.integers(0, 2**16, size=(rows, width), dtype=np.uint16)
    else:
        feats = rng.standard_normal((rows, width)).astype(storage)
    labels = rng.integers(0, num_classes, size=rows)
    w = CacheWriter(path, anchor="test:anchor", split="val", dtype=dtype, blocks=blocks,
                    num_classes=num_classes, num_samples=rows, shard_rows=shard_rows, source={"seed": seed})
    for start in range(0, rows, 37):  # odd append size, crossing shard edges
        w.append(feats[start:start + 37], labels[start:start + 37])
    w.finish()
    return feats, labels


def collect(reader, batch_size, **kw):
    feats, labels = [], []
    for b in reader.batches(batch_size, **kw):
        feats.append(b.features.copy())
        labels.append(b.labels.copy())
    return np.concatenate(feats), np.concatenate(labels)


def test_crc32c_matches_reference_package():
    rng = np.random.default_rng()
    for n in (0, 1, 7, 8, 9, 1000, 4097):
        data = rng.integers(0, 256, size=n, dtype=np.uint8).tobytes()
        assert checksum(data) == crc32c_package.crc32c(data)
        # continuing a checksum over two parts equals one pass
        assert checksum(data[n // 3:], checksum(data[:n // 3])) == crc32c_package.crc32c(data)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_sequential_read_returns_written_rows(tmp_path, backend, dtype):
    feats, labels = write_cache(tmp_path / "c", 301, dtype=dtype)
    reader = CacheReader(tmp_path / "c", backend=backend)
    got_f, got_l = collect(reader, 50)
    assert got_f.dtype == DTYPES[dtype][1]
    np.testing.assert_array_equal(got_f.view(np.uint8), feats.view(np.uint8))
    np.testing.assert_array_equal(got_l, labels)
    m = read_manifest(tmp_path / "c")
    assert [s.rows for s in m.shards] == [64, 64, 64, 64, 45]


def test_backends_give_identical_bytes_in_shuffled_order(tmp_path):
    feats, labels = write_cache(tmp_path / "c", 517, shard_rows=100)
    native = CacheReader(tmp_path / "c", backend="native")
    python = CacheReader(tmp_path / "c", backend="python")
    for epoch in range(2):
        kw = dict(shuffle=True, seed=3, epoch=epoch, chunk_rows=33)
        a_f, a_l = collect(native, 64, **kw)
        b_f, b_l = collect(python, 64, **kw)
        np.testing.assert_array_equal(a_f.view(np.uint8), b_f.view(np.uint8))
        np.testing.assert_array_equal(a_l, b_l)
        order = np.concatenate([np.arange(s, s + c) for s, c in row_ranges(517, **kw)])
        np.testing.assert_array_equal(a_f, feats[order])
    assert not np.array_equal(collect(native, 64, shuffle=True, seed=3, epoch=0)[1],
                              collect(native, 64, shuffle=True, seed=3, epoch=1)[1])


def test_row_ranges_partition_rows_across_ranks():
    all_rows = []
    for rank in range(3):
        for s, c in row_ranges(1000, shuffle=True, seed=1, chunk_rows=64, rank=rank, world_size=3):
            all_rows.extend(range(s, s + c))
    assert sorted(all_rows) == list(range(1000))


def test_native_batches_stay_valid_while_held(tmp_path):
    """Holding more batches than the ring has buffers must neither deadlock nor alias data."""
    feats, _ = write_cache(tmp_path / "c", 400)
    reader = CacheReader(tmp_path / "c", backend="native")
    held = list(reader.batches(16, num_buffers=2))
    np.testing.assert_array_equal(np.concatenate([b.features for b in held]), feats)


@pytest.mark.parametrize("backend", BACKENDS)
def test_drop_last_and_torch_view(tmp_path, backend):
    import torch

    write_cache(tmp_path / "c", 100, dtype="bfloat16")
    batches = list(CacheReader(tmp_path / "c", backend=backend).batches(30, drop_last=True))
    assert [len(b.labels) for b in batches] == [30, 30, 30]
    f, l = batches[0].torch()
    assert f.dtype == torch.bfloat16 and f.shape == (30, 19) and l.dtype == torch.int64


def _damage_shard(path, how):
    shard = path / "shard-00002.bin"
    if how == "corrupt":
        with open(shard, "r+b") as f:
            f.seek(200)
            byte = f.read(1)
            f.seek(200)
            f.write(bytes([byte[0] ^ 0x01]))
    elif how == "truncate":
        os.truncate(shard, shard.stat().st_size - 3)
    elif how == "delete":
        shard.unlink()
    elif how == "manifest-lies":
        m = json.loads((path / "manifest.json").read_text())
        m["shards"][2]["rows"] += 1
        m["shards"][3]["rows"] -= 1
        (path / "manifest.json").write_text(json.dumps(m))
    return shard


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how,message", [
    ("corrupt", "checksum mismatch"), ("truncate", "truncated"),
    ("delete", "cannot open"), ("manifest-lies", "bytes on disk"),
])
def test_damaged_shard_is_named(tmp_path, backend, how, message):
    feats, _ = write_cache(tmp_path / "c", 300)
    shard = _damage_shard(tmp_path / "c", how)
    reader = CacheReader(tmp_path / "c", backend=backend)
    delivered = []
    with pytest.raises(CacheError, match=message) as info:
        for b in reader.batches(32):
            delivered.append(b.features.copy())
    assert str(shard) in str(info.value)
    # every batch before the bad shard (rows 0..127) came through intact
    got = np.concatenate(delivered)
    assert len(got) >= 96
    np.testing.assert_array_equal(got, feats[:len(got)])
    with pytest.raises(CacheError, match=str(shard)):
        CacheReader(tmp_path / "c", backend=backend).check()


def test_manifest_paths_cannot_escape_the_cache(tmp_path):
    write_cache(tmp_path / "c", 100)
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    m["shards"][0]["file"] = "../../etc/passwd"
    (tmp_path / "c" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CacheError, match="not a plain name"):
        CacheReader(tmp_path / "c")


def test_missing_manifest_says_resume(tmp_path):
    rng = np.random.default_rng(0)
    blocks = make_blocks((3,), 2)
    w = CacheWriter(tmp_path / "c", anchor="a", split="val", dtype="float32", blocks=blocks,
                    num_classes=2, num_samples=100, shard_rows=10, source={})
    w.append(rng.standard_normal((25, 5)).astype(np.float32), np.zeros(25, dtype=np.int64))
    with pytest.raises(CacheError, match="interrupted"):
        CacheReader(tmp_path / "c")


def test_writer_resumes_after_last_complete_shard(tmp_path):
    rows = 250
    feats, labels = write_cache(tmp_path / "whole", rows, shard_rows=64)
    blocks = make_blocks((5, 7, 3), 4)
    kw = dict(anchor="test:anchor", split="val", dtype="float16", blocks=blocks, num_classes=4,
              num_samples=rows, shard_rows=64, source={"seed": 0})
    w = CacheWriter(tmp_path / "part", **kw)
    w.append(feats[:150], labels[:150])  # two shards written, 22 rows only in memory: "killed"
    del w
    (tmp_path / "part" / "shard-00002.bin.tmp").write_bytes(b"half a shard")  # a torn write
    w = CacheWriter(tmp_path / "part", **kw)
    assert w.rows_done == 128
    assert not (tmp_path / "part" / "shard-00002.bin.tmp").exists()
    w.append(feats[128:], labels[128:])
    w.finish()
    for name in sorted(os.listdir(tmp_path / "whole")):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "part" / name).read_bytes(), name
    assert not (tmp_path / "part" / "progress.json").exists()


def _rank_writers(path, kw, world_size, feats, labels, *, stop_after=None):
    """Each rank's writer fed its pending shards; `stop_after` rows per rank simulates a kill."""
    writers = [CacheWriter(path, **kw, rank=r, world_size=world_size) for r in range(world_size)]
    for w in writers:
        rows = np.concatenate([np.arange(s, s + n) for s, n in w.pending_rows()] or [np.zeros(0, int)])
        if stop_after is not None:
            rows = rows[:stop_after]
        for start in range(0, len(rows), 29):
            w.append(feats[rows[start:start + 29]], labels[rows[start:start + 29]])
    return writers


@pytest.mark.parametrize("world_size", [2, 3, 5])
def test_rank_writers_make_the_bytes_of_one_writer(tmp_path, world_size):
    """Shard k by rank k % world_size, one manifest at the end: the same files as one writer,
    also after every rank was killed midway and resumed."""
    rows = 250
    feats, labels = write_cache(tmp_path / "whole", rows, shard_rows=64)
    kw = dict(anchor="test:anchor", split="val", dtype="float16", blocks=make_blocks((5, 7, 3), 4),
              num_classes=4, num_samples=rows, shard_rows=64, source={"seed": 0})
    part = tmp_path / "ranks"
    _rank_writers(part, kw, world_size, feats, labels, stop_after=70)  # killed: some shards done, some not
    assert not (part / "manifest.json").exists()
    writers = _rank_writers(part, kw, world_size, feats, labels)  # resumed
    assert all(w.finish() is None for w in writers)  # no rank writes the manifest on its own
    with pytest.raises(CacheError, match="no manifest"):
        CacheReader(part)
    writers[0].write_manifest()
    assert sorted(os.listdir(part)) == sorted(os.listdir(tmp_path / "whole"))
    for name in sorted(os.listdir(part)):
        assert (tmp_path / "whole" / name).read_bytes() == (part / name).read_bytes(), name


def test_manifest_waits_for_every_rank(tmp_path):
    rows = 200
    feats, labels = write_cache(tmp_path / "whole", rows, shard_rows=50)
    kw = dict(anchor="test:anchor", split="val", dtype="float16", blocks=make_blocks((5, 7, 3), 4),
              num_classes=4, num_samples=rows, shard_rows=50, source={"seed": 0})
    writers = _rank_writers(tmp_path / "r", kw, 2, feats, labels, stop_after=50)  # rank 1 wrote shard 1 only
    writers[0].append(feats[100:150], labels[100:150])
    writers[0].finish()
    with pytest.raises(CacheError, match=r"shards \['shard-00003.bin'\] are not finished"):
        writers[0].write_manifest()
    with pytest.raises(CacheError, match="rank 1 of 2, 100 expected"):
        writers[1].finish()


def test_writer_refuses_unwritable_directory(tmp_path):
    blocker = tmp_path / "a-file"  # a file where a folder should be: fails even for root
    blocker.write_text("")
    with pytest.raises(CacheError, match="not writable"):
        CacheWriter(blocker / "c", anchor="a", split="val", dtype="float32", blocks=make_blocks((3,), 2),
                    num_classes=2, num_samples=10, shard_rows=10, source={})


def test_labels_outside_the_classes_are_refused(tmp_path):
    w = CacheWriter(tmp_path / "c", anchor="test:anchor", split="val", dtype="float32", blocks=make_blocks((2,), 3),
                    num_classes=3, num_samples=4, shard_rows=4, source={})
    with pytest.raises(ValueError, match=r"labels must lie in 0..2.*\[3\]"):
        w.append(np.zeros((4, 5), dtype=np.float32), np.array([0, 1, 2, 3]))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_check_values_finds_every_kind_of_non_finite_value(tmp_path, dtype):
    feature_cache(tmp_path / "c", 64, (5, 7), 3)
    reader = CacheReader(tmp_path / "c")
    torch_dtype = getattr(torch, dtype)
    good = torch.randn(32, 15).to(torch_dtype)
    reader.check_values(good, torch.zeros(32, dtype=torch.int64))
    huge = torch.full((32, 15), torch.finfo(torch_dtype).max, dtype=torch_dtype)
    reader.check_values(huge)  # large but finite values do not pass for Inf
    for values in ([math.nan], [math.inf], [-math.inf], [math.inf, -math.inf]):
        bad = good.clone()
        for k, v in enumerate(values):
            bad[3 + k, 7] = v
        with pytest.raises(CacheError, match="NaN/Inf activations"):
            reader.check_values(bad)
    with pytest.raises(CacheError, match="labels outside 0..2"):
        reader.check_values(good, torch.full((32,), 3, dtype=torch.int64))


def test_the_native_build_agrees_with_the_python_shard_layout():
    """The shard layout is written twice (format.py and csrc/shard.h); the bound constants must agree."""
    from klas.cache import format as fmt
    from klas.cache.reader import native_available

    if not native_available():
        pytest.skip("klas._C is not built here")
    from klas import _C

    assert (_C.SHARD_HEADER_BYTES, _C.SHARD_VERSION) == (fmt.HEADER_BYTES, fmt.SHARD_VERSION)


def test_anchor_facts_are_one_record_written_and_read_in_one_place():
    """AnchorFacts: an anchor's facts round-trip through the manifest form; the optional ones are
    written only where an anchor has them (older manifests without them read as the defaults), and
    a malformed one is refused naming the field."""
    import pytest

    from klas.anchors import load_anchor
    from klas.cache.format import AnchorFacts
    from klas.errors import CacheError

    anchor = load_anchor("cifar-resnet:8?pretrained=false")
    facts = AnchorFacts.of(anchor)
    info = facts.to_json()
    assert "prefix_tokens" not in info and "stem_width" not in info
    assert AnchorFacts.from_json(info, anchor.depth) == facts
    assert AnchorFacts.from_json({**info, "stem_width": 8}, anchor.depth).stem_width == 8
    for key, value, message in (("stem_width", "wide", "anchor_info.stem_width is 'wide', not a width"),
                                ("prefix_tokens", -1, "anchor_info.prefix_tokens is -1, not a count"),
                                ("flops", {"stem": 1, "blocks": [1], "head": 1}, "anchor_info.flops is not"),
                                ("flops", None, "records no FLOPs")):
        with pytest.raises(CacheError, match=message):
            AnchorFacts.from_json({**info, key: value}, anchor.depth, "m.json")
