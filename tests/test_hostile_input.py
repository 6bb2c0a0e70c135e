"""Inputs made by an attacker or a tired colleague, each built by hand on a real run (extract →
probes → score of two small ResNets on generated images): no command runs code named by a file,
exits 0 with a wrong result, hangs, or prints a traceback for a user error. Each stops with exit
status 2 and one line naming the problem and the fix, and leaves every other file as it was.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
import yaml
from helpers import REAL_A as A
from helpers import REAL_B as B
from helpers import tree

from klas.pipeline.cli import main
from klas.errors import UsageError

R8, R14 = "cifar-resnet8", "cifar-resnet14"


@pytest.fixture
def run(real_run, tmp_path) -> Path:
    """A private copy of the real run."""
    shutil.copytree(real_run, tmp_path / "run", symlinks=True)
    return tmp_path / "run"


def _json_edit(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _fails_cleanly(argv: list[str], capsys, *patterns: str, code: int = 2) -> str:
    """Runs `klas argv`; asserts the exit code and one line on stderr matching every pattern."""
    capsys.readouterr()
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for p in patterns:
        assert re.search(p, err), (p, err)
    return err


def _unchanged_but(run: Path, before: dict, touched: set[str]) -> None:
    after = tree(run)
    assert {k: v for k, v in after.items() if k not in touched} == {k: v for k, v in before.items() if k not in touched}


def _score(run: Path) -> list[str]:
    return ["score", "--cache", str(run / "cache"), "--out", str(run.parent / "new-scores"), "--no-plots"]


def _probes(run: Path) -> list[str]:
    return ["probes", "--cache", str(run / "cache"), "--out", str(run.parent / "new-probes"), "--epochs", "1",
            "--batch-size", "32", "--quiet"]


# -- 1. no code runs because of what a file says ------------------------------------------------

def test_a_manifest_spec_is_never_loaded(run, capsys):
    """A manifest (and the probes beside it) naming `module:os:system` runs nothing: specs read back
    from files are compared, never loaded; FLOPs come from what extraction recorded."""
    pwned = run / "pwned"
    evil = f"module:os:system?command=touch {pwned}"
    for split in ("val", "train"):
        _json_edit(run / "cache" / R8 / split / "manifest.json",
                   lambda m: (m.__setitem__("anchor", evil), m["anchor_info"].pop("flops")))
    _json_edit(run / "cache/probes" / f"{R8}.json", lambda m: m.__setitem__("anchor", evil))
    before = tree(run)
    _fails_cleanly(_score(run), capsys, "records no FLOPs", "extract this cache again")
    assert not pwned.exists()
    _unchanged_but(run, before, set())
    # with the FLOPs left in place, the spec is still only an identifier: scoring runs, nothing is called
    for split in ("val", "train"):
        _json_edit(run / "cache" / R8 / split / "manifest.json",
                   lambda m: m["anchor_info"].__setitem__("flops", {"stem": 1, "blocks": [1] * 3, "head": 1}))
    assert main(_score(run)) == 0
    assert not pwned.exists()


def test_a_shard_linked_outside_the_cache_is_refused(run, capsys):
    shard = run / "cache" / R8 / "val" / "shard-00000.bin"
    outside = run.parent / "elsewhere.bin"
    shutil.copy(shard, outside)
    shard.unlink()
    shard.symlink_to(outside)
    _fails_cleanly(_score(run), capsys, r"shard-00000\.bin is a link to .*outside", "re-run extraction")


def test_a_fifo_in_place_of_a_shard_does_not_hang(run):
    shard = run / "cache" / R8 / "val" / "shard-00000.bin"
    shard.unlink()
    os.mkfifo(shard)
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "klas", *_score(run)], capture_output=True, text=True, timeout=120)
    assert time.monotonic() - began < 120
    assert done.returncode == 2, done.stderr
    assert "is a FIFO, not a regular file" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_the_native_reader_refuses_a_fifo_without_blocking(run):
    """The C++ reader alone (the Python-side check skipped): open() does not block on a FIFO."""
    from klas import _C
    from klas.cache.format import DTYPES, read_manifest

    cache = run / "cache" / R8 / "val"
    m = read_manifest(cache)
    (cache / "shard-00000.bin").unlink()
    os.mkfifo(cache / "shard-00000.bin")
    spec = _C.ShardSpec(str(cache / "shard-00000.bin"), m.shards[0].rows, m.shards[0].crc32c, 0, 0)
    shards = _C.ShardSet([spec], m.row_bytes, DTYPES[m.dtype][0], True)
    with pytest.raises(Exception, match="not a regular file"):
        shards.check_all()


# -- 2. no silently wrong results ---------------------------------------------------------------

def _swap_shards(m):
    m["shards"][0], m["shards"][1] = m["shards"][1], m["shards"][0]


def _shard_twice(m):
    m["shards"][2] = dict(m["shards"][1])


@pytest.mark.parametrize("edit", [_swap_shards, _shard_twice], ids=["swapped", "listed-twice"])
def test_shards_out_of_place_are_refused(run, capsys, edit):
    path = run / "cache" / R8 / "train" / "manifest.json"
    assert [s["rows"] for s in json.loads(path.read_text())["shards"]][:3] == [32, 32, 32]
    _json_edit(path, edit)
    before = tree(run)
    _fails_cleanly(_probes(run), capsys, r"shard-0000[12]\.bin: is shard \d .* lists it as shard \d", "out of place")
    _unchanged_but(run, before, set())
    assert not (run.parent / "new-probes").exists()


def test_a_cache_of_other_samples_with_the_same_count_is_refused(run, shapes_dir, capsys, tmp_path):
    other = tmp_path / "other"
    assert main(["extract", "--anchor", B, "--data", str(shapes_dir), "--out", str(other), "--splits", "val",
                 "--seed", "1", "--batch-size", "16", "--shard-rows", "32", "--quiet"]) == 0
    val = run / "cache" / R14 / "val"
    shutil.rmtree(val)
    shutil.copytree(other / R14 / "val", val)
    _fails_cleanly(_score(run), capsys, "cache different samples", "same data settings")


def test_probes_of_other_weights_are_refused(run, capsys):
    """The probes record the digest of the weights their caches came from; a cache of changed weights
    behind the same spec no longer matches them."""
    _json_edit(run / "cache" / R14 / "val" / "manifest.json", lambda m: m["anchor_info"].__setitem__("weights", "0" * 32))
    _fails_cleanly(_score(run), capsys, "other weights", "extract again")


def test_a_resumed_extraction_after_the_checkpoint_changed_starts_over(tmp_path, shapes_dir, monkeypatch):
    """An extraction stopped after its shards, resumed once the checkpoint behind the same spec has
    changed, does not mix the two sets of weights: it extracts everything again."""
    from klas.anchors import CifarResNet
    from klas.cache import CacheWriter
    from klas.cache.format import read_manifest

    ckpt = tmp_path / "resnet8.th"
    spec = f"cifar-resnet:8:{ckpt}"
    args = ["extract", "--anchor", spec, "--data", str(shapes_dir), "--splits", "train", "--batch-size", "16",
            "--shard-rows", "32", "--quiet"]
    torch.manual_seed(0)
    torch.save(CifarResNet(8).state_dict(), ckpt)
    real_finish = CacheWriter.finish

    def stopped(self):
        self._flush()
        raise KeyboardInterrupt  # every shard written and recorded, no manifest yet

    monkeypatch.setattr(CacheWriter, "finish", stopped)
    assert main([*args, "--out", str(tmp_path / "mixed")]) == 130
    assert (tmp_path / "mixed" / R8 / "train" / "progress.json").is_file()
    monkeypatch.setattr(CacheWriter, "finish", real_finish)
    torch.manual_seed(1)
    torch.save(CifarResNet(8).state_dict(), ckpt)  # the checkpoint changes behind the same spec
    with pytest.warns(UserWarning, match="discarded"):
        assert main([*args, "--out", str(tmp_path / "mixed")]) == 0
    assert main([*args, "--out", str(tmp_path / "fresh")]) == 0
    mixed, fresh = (read_manifest(tmp_path / d / R8 / "train") for d in ("mixed", "fresh"))
    assert mixed.weights_digest == fresh.weights_digest
    assert [s.crc32c for s in mixed.shards] == [s.crc32c for s in fresh.shards]
    # and a complete cache is not reused once the weights change
    torch.manual_seed(2)
    torch.save(CifarResNet(8).state_dict(), ckpt)
    assert main([*args, "--out", str(tmp_path / "fresh")]) == 0
    assert read_manifest(tmp_path / "fresh" / R8 / "train").weights_digest != fresh.weights_digest


def test_class_folders_renamed_between_train_and_test_are_refused(tmp_path, shapes_dir, capsys):
    root = tmp_path / "data"
    shutil.copytree(shapes_dir, root / "train")
    shutil.copytree(shapes_dir, root / "test")
    first = sorted(p.name for p in (root / "test").iterdir())[0]
    (root / "test" / first).rename(root / "test" / "zz-renamed")
    _fails_cleanly(["eval-anchor", A, "--data", str(root), "--split", "test", "--quiet"], capsys,
                   "different class folders", "zz-renamed", "same class names")


def test_a_dataset_whose_class_names_differ_from_the_anchors_is_refused(shapes_dir):
    from klas.extraction.data import check_classes, open_images

    anchor = type("KnownClasses", (), {"num_classes": 10, "spec": "x:y", "class_names": tuple(f"c{k}" for k in range(10))})
    with pytest.raises(Exception, match="was trained with 'c0' there"):
        check_classes(open_images(shapes_dir), anchor)


def huge_activations():
    """A module anchor whose activations exceed float16's range."""
    from torch import nn

    class Scale(nn.Module):
        def forward(self, x):
            return x * 1e6

    return {"stem": nn.Conv2d(3, 4, 3, padding=1), "blocks": [Scale(), nn.Identity()],
            "head": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)), "input_size": (3, 32, 32)}


def test_float16_overflow_is_refused_with_the_fix(tmp_path, shapes_dir, capsys):
    args = ["extract", "--anchor", "module:test_hostile_input:huge_activations", "--data", str(shapes_dir),
            "--splits", "val", "--quiet"]
    _fails_cleanly([*args, "--out", str(tmp_path / "a")], capsys, "beyond float16's range", "--dtype bfloat16")
    assert main([*args, "--out", str(tmp_path / "b"), "--dtype", "float32"]) == 0


@pytest.mark.parametrize("argv, pattern", [
    (["probes", "--cache", "C", "--lr", "inf"], "--lr: must be a finite number"),
    (["probes", "--cache", "C", "--lr", "nan"], "--lr: must be a finite number"),
    (["probes", "--cache", "C", "--label-smoothing", "5"], "--label-smoothing: must be a finite number in"),
    (["score", "--cache", "C", "--temperature", "nan"], "--temperature: must be a finite number"),
    (["score", "--cache", "C", "--floor", "nan"], "--floor: must be a finite number"),
    (["score", "--cache", "C", "--floor", "-1"], "--floor: must be a finite number in"),
    (["select", "--scores", "S", "--tau", "nan"], "--tau: must be a finite number"),
    (["select", "--scores", "S", "--buckets", "100000000"], "--buckets: must be auto or an integer in"),
    (["extract", "--anchor", A, "--data", "D", "--out", "O", "--batch-size", "1000000000000"], "--batch-size: must be a finite number in"),
    (["extract", "--anchor", A, "--anchor", A, "--data", "D", "--out", "O"], "lists .* more than once"),
    (["score", "--cache", "C", "--anchors", "a,a"], "--anchors lists a more than once"),
    (["eval-anchor", "cifar-resnet:20?pretrained=flase", "--data", "D"], "pretrained='flase' is not a true/false"),
    (["eval-anchor", "cifar-resnet:20?pretraind=false", "--data", "D"], "unknown option 'pretraind'"),
    (["eval-anchor", "cifar-resnet:600000002?pretrained=false", "--data", "D"], "depth must be 6n \\+ 2 from 8 to 1202"),
    (["eval-anchor", "cifar-resnet:20?num_classes=1e9", "--data", "D"], "num_classes='1e9' is not an int"),
    (["run", "X.yaml", "--set", "finetune.steps=[unclosed"], "--set finetune.steps: the value .* does not parse"),
    (["run", "X.yaml", "--set", "nonsense"], "--set expects KEY=VALUE"),
    (["eval-anchor", A, "--data", "D", "--device", "cuda"], "no CUDA GPU is visible here"),
    (["eval-anchor", A, "--data", "D", "--device", "tpu:7"], "not a torch device|runs on cpu or cuda"),
], ids=lambda x: x if isinstance(x, str) else " ".join(x[:1] + x[-2:]))
def test_nonsense_options_are_refused_in_one_line(argv, pattern, capsys):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    _fails_cleanly(argv, capsys, pattern)


def test_device_auto_is_a_gpu_when_one_is_visible_else_the_cpu(monkeypatch):
    from klas.devices import check_device

    assert check_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("auto") == "cuda"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert check_device("auto") == "cpu"


def test_triton_backend_without_a_gpu_is_one_line(monkeypatch, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    _fails_cleanly(["score", "--cache", "C", "--backend", "triton"], capsys, "--backend triton needs a CUDA GPU")


@pytest.mark.parametrize("temperature", [0.0, float("nan"), -1.0, float("inf")])
@pytest.mark.parametrize("backend", ["reference", "torch", "native"])
def test_kl_matrix_refuses_bad_temperatures_on_every_backend(backend, temperature):
    from klas.scoring.kl import kl_matrix

    x = torch.randn(2, 5, 3)
    with pytest.raises(UsageError, match="temperature"):
        kl_matrix(x, x, temperature=temperature, backend=backend)


@pytest.mark.parametrize("floor", [float("nan"), float("inf"), 0.0, -1.0])
def test_stitch_scores_refuse_bad_floors(floor):
    from klas.scoring.scores import stitch_scores

    with pytest.raises(UsageError, match="floor"):
        stitch_scores(torch.rand(3, 4), torch.rand(3), floor=floor)


@pytest.mark.parametrize("section, key, value, pattern", [
    ("score", "temperature", float("nan"), "score.temperature: must be a finite number"),
    ("finetune", "warmup_fraction", float("nan"), "finetune.warmup_fraction: must be a finite number"),
    ("finetune", "warmup_fraction", 2.0, "finetune.warmup_fraction: must be a finite number in"),
    ("probes", "lr", float("inf"), "probes.lr: must be a finite number"),
    ("select", "buckets", 10**8, "select.buckets: must be auto or an integer"),
    ("extract", "batch_size", 10**12, "extract.batch_size: must be a finite number in"),
], ids=lambda x: str(x))
def test_config_values_out_of_range_are_refused(tmp_path, shapes_dir, capsys, section, key, value, pattern):
    cfg = {"out": str(tmp_path / "out"), "anchors": [A, B], "data": {"root": str(shapes_dir)}, section: {key: value}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    _fails_cleanly(["run", str(path), "--quiet"], capsys, pattern)
    assert not (tmp_path / "out").exists()


def _edit_scores(run: Path, fn) -> None:
    from safetensors.torch import load_file, save_file

    path = run / "cache/scores/scores.safetensors"
    tensors = load_file(str(path))
    fn(tensors)
    save_file(tensors, str(path))


@pytest.mark.parametrize("edit, pattern", [
    (lambda t: t["theta_all"].__setitem__((0, 1), float("nan")), "theta_all holds NaN, Inf or negative"),
    (lambda t: t["theta_all"].__setitem__((2, 0), float("inf")), "theta_all holds NaN, Inf or negative"),
    (lambda t: t.__setitem__("theta_all", t["theta_all"][:-1]), r"theta_all is \[\d+, \d+\], scores.json's anchors need"),
], ids=["nan", "inf", "shape"])
def test_edited_scores_do_not_reach_select(run, capsys, edit, pattern):
    _edit_scores(run, edit)
    _fails_cleanly(["select", "--scores", str(run / "cache/scores"), "--out", str(run.parent / "sel")], capsys, pattern,
                   "re-run `klas score`")
    assert not (run.parent / "sel").exists()


def test_an_snnet_import_with_a_negative_index_is_refused(run, capsys, tmp_path):
    assert main(["select", "--scores", str(run / "cache/scores"), "--out", str(tmp_path / "sel")]) == 0
    assert main(["export", "--selection", str(tmp_path / "sel/selection.json"), "--format", "klas-pairs"]) == 0
    path = tmp_path / "sel/selection.pairs.json"
    _json_edit(path, lambda d: d["stitch_configs"][0].__setitem__("front", -1))
    _fails_cleanly(["import-snnet", str(path), "--scores", str(run / "cache/scores"), "--out", str(tmp_path / "imp")],
                   capsys, "front -1 is not an index into its 2 anchors")
    _json_edit(path, lambda d: (d["stitch_configs"][0].__setitem__("front", 0),
                                d["stitch_configs"][0]["configs"].append([-1, 1])))
    _fails_cleanly(["import-snnet", str(path), "--scores", str(run / "cache/scores"), "--out", str(tmp_path / "imp")],
                   capsys, r"configuration \(a=-1, b=1\) is outside")


def test_a_selection_with_blocks_out_of_range_is_refused(run, capsys, tmp_path):
    assert main(["select", "--scores", str(run / "cache/scores"), "--out", str(tmp_path / "sel")]) == 0
    path = tmp_path / "sel/selection.json"
    _json_edit(path, lambda d: d["pairs"][0]["selected"][0].__setitem__("i", 99))
    _fails_cleanly(["export", "--selection", str(path), "--format", "csv"], capsys, "outside the anchors' blocks",
                   "run `klas select` again")
    assert not path.with_suffix(".csv").exists()


# -- 3. no hangs, bounded memory ----------------------------------------------------------------

def test_a_yaml_alias_bomb_is_refused_in_seconds(tmp_path, capsys):
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{k}: &a{k} [" + ", ".join([f"*a{k - 1}"] * 10) + "]" for k in range(1, 10)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    began = time.monotonic()
    _fails_cleanly(["run", str(path)], capsys, "more than 100000 values")
    assert time.monotonic() - began < 10


def _zip_with(tmp_path: Path, shapes_dir: Path, patch) -> Path:
    """The shapes as a stored zip, then `patch(bytearray, central directory offset of member 0)`."""
    path = tmp_path / "data.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for p in sorted(shapes_dir.rglob("*.png")):
            z.write(p, str(p.relative_to(shapes_dir)))
    data = bytearray(path.read_bytes())
    patch(data, data.index(b"PK\x01\x02"))
    path.write_bytes(bytes(data))
    return path


def _declares_gigabytes(data: bytearray, cd: int) -> None:
    data[cd + 24:cd + 28] = struct.pack("<I", 3 * 2**29)  # uncompressed size: 1.5 GiB


def _encrypted(data: bytearray, cd: int) -> None:
    data[cd + 8] |= 0x1


def _unknown_method(data: bytearray, cd: int) -> None:
    data[cd + 10:cd + 12] = struct.pack("<H", 99)


def _bad_crc(data: bytearray, cd: int) -> None:
    local = 0
    name_len, extra_len = struct.unpack("<HH", bytes(data[local + 26:local + 30]))
    start = local + 30 + name_len + extra_len
    data[start + 100] ^= 0xFF  # a byte of the first image's data


@pytest.mark.parametrize("patch, pattern", [
    (_declares_gigabytes, "declares 1610612736 bytes"),
    (_encrypted, "is encrypted"),
    (_unknown_method, "compression method 99"),
    (_bad_crc, r"cannot decode .*\.png \(BadZipFile: Bad CRC-32"),
], ids=["zip-bomb", "encrypted", "unknown-method", "bad-crc"])
def test_hostile_zips_are_one_line(tmp_path, shapes_dir, capsys, patch, pattern):
    path = _zip_with(tmp_path, shapes_dir, patch)
    began = time.monotonic()
    _fails_cleanly(["extract", "--anchor", A, "--data", str(path), "--out", str(tmp_path / "out"), "--splits", "train",
                    "--batch-size", "8", "--quiet"], capsys, pattern)
    assert time.monotonic() - began < 60
    assert not list((tmp_path / "out").rglob("manifest.json"))


def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("content, pattern", [
    (_png_claiming(20000, 8900), r"claims 20000x8900 pixels|DecompressionBombError"),
    (_png_claiming(7000, 7000), r"claims 7000x7000 pixels"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, r"cannot decode .*broken\.png"),
], ids=["178M-pixels", "49M-pixels", "corrupt"])
def test_hostile_images_are_named_in_one_line(tmp_path, shapes_dir, capsys, content, pattern):
    root = tmp_path / "data"
    shutil.copytree(shapes_dir, root)
    first = sorted(p for p in root.iterdir())[0]
    (first / "broken.png").write_bytes(content)
    began = time.monotonic()
    _fails_cleanly(["extract", "--anchor", A, "--data", str(root), "--out", str(tmp_path / "out"), "--splits", "train",
                    "--batch-size", "8", "--quiet"], capsys, pattern)
    assert time.monotonic() - began < 60


# -- 4. one line for every user error ------------------------------------------------------------

@pytest.mark.parametrize("damage, command, pattern", [
    (lambda r: (r / f"cache/probes/{R8}.json").write_text("{not json"), _score, rf"{R8}\.json: not a readable probe file"),
    (lambda r: (r / f"cache/probes/{R8}.json").write_text("[1, 2]"), _score, "a JSON list where dict belongs"),
    (lambda r: (r / f"cache/probes/{R8}.safetensors").write_bytes(b"\xff" * 64), _score, "not a readable probe file"),
    (lambda r: _json_edit(r / f"cache/probes/{R8}.json", lambda m: m.__setitem__("val_acc", ["high"] * 3)), _score,
     "val_acc is not a list of 3 percentages"),
    (lambda r: (r / f"cache/{R8}/val/manifest.json").write_text("[]"), _score, "not a cache manifest \\(a JSON list where dict belongs\\)"),
    (lambda r: (r / f"cache/{R8}/val/manifest.json").write_text("[" * 100000 + "]" * 100000), _score,
     "nested too deeply|nested more than"),
    (lambda r: _json_edit(r / f"cache/{R8}/val/manifest.json", lambda m: m.__setitem__("num_samples", "many")), _score,
     "expected an integer, got 'many'"),
    (lambda r: _json_edit(r / f"cache/{R8}/val/manifest.json", lambda m: m["anchor_info"].__setitem__("flops", "lots")),
     _score, "anchor_info.flops is not"),
    (lambda r: _json_edit(r / f"cache/{R8}/val/manifest.json", lambda m: m["anchor_info"].__setitem__("stem_width", "wide")),
     _score, "anchor_info.stem_width is 'wide', not a width"),
    (lambda r: _json_edit(r / f"cache/{R8}/val/manifest.json", lambda m: m["anchor_info"].__setitem__("prefix_tokens", None)),
     _score, "anchor_info.prefix_tokens is None, not a count"),
    (lambda r: (r / "cache/scores/scores.json").write_text('"a string"'), lambda r: ["select", "--scores", str(r / "cache/scores")],
     "a JSON str where dict belongs"),
    (lambda r: _json_edit(r / "cache/scores/scores.json", lambda m: m["anchors"][0].__setitem__("depth", -3)),
     lambda r: ["select", "--scores", str(r / "cache/scores")], "anchor entry .* is malformed"),
    (lambda r: _json_edit(r / "cache/scores/scores.json", lambda m: m["anchors"][0].__setitem__("stem_width", 0)),
     lambda r: ["select", "--scores", str(r / "cache/scores")], "anchor entry .* is malformed"),
    (lambda r: _json_edit(r / f"cache/{R8}/val/manifest.json", lambda m: m["anchor_info"].__setitem__("flops_unit", "flop")),
     _score, "anchor_info.flops_unit is 'flop' .*records 'mac' \\(multiply-accumulates\\)"),
    (lambda r: _json_edit(r / "cache/scores/scores.json", lambda m: m.pop("flops_unit")),
     lambda r: ["select", "--scores", str(r / "cache/scores")], "FLOPs are not recorded as 'mac'.*older klas"),
], ids=["probe-json", "probe-json-type", "probe-tensors", "probe-field", "manifest-type", "manifest-nested",
        "manifest-field", "manifest-flops", "manifest-stem-width", "manifest-prefix-tokens", "scores-type",
        "scores-field", "scores-stem-width", "manifest-flops-unit", "scores-flops-unit"])
def test_damaged_project_files_are_one_line(run, capsys, damage, command, pattern):
    damage(run)
    before = tree(run)
    _fails_cleanly(command(run), capsys, pattern)
    _unchanged_but(run, before, set())


def test_out_a_file_where_a_folder_belongs_is_one_line(tmp_path, shapes_dir, capsys):
    out = tmp_path / "taken"
    out.write_text("a file")
    _fails_cleanly(["extract", "--anchor", A, "--data", str(shapes_dir), "--out", str(out), "--quiet"], capsys,
                   "taken")
    assert out.read_text() == "a file"


def test_export_out_a_folder_where_a_file_belongs_is_one_line(run, capsys, tmp_path):
    assert main(["select", "--scores", str(run / "cache/scores"), "--out", str(tmp_path / "sel")]) == 0
    (tmp_path / "a-folder").mkdir()
    _fails_cleanly(["export", "--selection", str(tmp_path / "sel/selection.json"), "--out", str(tmp_path / "a-folder")],
                   capsys, "a-folder")


def test_a_damaged_stage_marker_is_one_line(tmp_path, shapes_dir, capsys):
    cfg = {"out": str(tmp_path / "out"), "anchors": [A, B], "data": {"root": str(shapes_dir)}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    marker = tmp_path / "out/cache/.klas-stage.json"
    marker.parent.mkdir(parents=True)
    marker.write_text("{broken")
    _fails_cleanly(["run", str(path), "--quiet"], capsys, r"\.klas-stage\.json: not a readable stage marker",
                   "delete .* to redo the extract stage")


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    import klas.pipeline.cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(klas.pipeline.cli, "_cmd_select", interrupted)
    _fails_cleanly(["select", "--scores", "S"], capsys, "interrupted; run the same command again to continue", code=130)


def test_a_bug_keeps_its_traceback(monkeypatch, capsys):
    """Errors that are not the user's (here a ValueError from inside the code) are not dressed up
    as one-line user errors."""
    import klas.pipeline.cli

    def buggy(args):
        raise ValueError("an internal inconsistency")

    monkeypatch.setattr(klas.pipeline.cli, "_cmd_select", buggy)
    assert main(["select", "--scores", "S"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "an internal inconsistency" in err and "please report it" in err


def test_a_second_extraction_into_the_same_folder_is_refused(tmp_path, shapes_dir, capsys):
    from klas.cache import BlockEntry, CacheWriter

    folder = tmp_path / "out" / R8 / "train"
    holder = CacheWriter(folder, anchor=A, split="train", dtype="float32", num_classes=2, num_samples=4, shard_rows=4,
                         blocks=(BlockEntry("b1", 1, 2, 0), BlockEntry("logits", 0, 2, 2, kind="logits")), source={})
    try:
        _fails_cleanly(["extract", "--anchor", A, "--data", str(shapes_dir), "--out", str(tmp_path / "out"),
                        "--splits", "train", "--quiet"], capsys, "being written by another extraction")
    finally:
        holder.release()
    assert main(["extract", "--anchor", A, "--data", str(shapes_dir), "--out", str(tmp_path / "out"),
                 "--splits", "train", "--quiet"]) == 0


def test_anchors_is_one_flag_taking_names_or_specs(real_run, tmp_path, capsys):
    """`--anchors` everywhere: specs for extract, cached names or the specs they came from for
    probes and score (matched against the manifests); an unknown spec names what is cached."""
    import shutil

    from klas.cache import read_manifest

    cache = tmp_path / "run" / "cache"
    shutil.copytree(real_run / "cache", cache)
    names = sorted(p.name for p in cache.iterdir() if (p / "val" / "manifest.json").is_file())
    spec = read_manifest(cache / names[0] / "val").anchor
    assert ":" in spec and len(names) == 2
    assert main(["score", "--cache", str(cache), "--anchors", f"{spec},{names[1]}", "--out", str(tmp_path / "s"),
                 "--no-plots"]) == 0
    _fails_cleanly(["score", "--cache", str(cache), "--anchors", "cifar-resnet:44,x", "--out", str(tmp_path / "t")],
                   capsys, "no 'val' cache .* was extracted from 'cifar-resnet:44'; cached: ")
    _fails_cleanly(["extract", "--data", "D", "--out", "O"], capsys, "give the anchors to extract")


def test_inputs_are_checked_before_any_work_starts(tmp_path, capsys):
    """A split typo is refused before extraction reads an image; a missing cache folder is named."""
    _fails_cleanly(["extract", "--anchors", "cifar-resnet:8?pretrained=false", "--data", str(tmp_path), "--out",
                    str(tmp_path / "o"), "--splits", "train,valid"], capsys, "'valid' is not a split; the splits are")
    assert not (tmp_path / "o").exists()
    _fails_cleanly(["probes", "--cache", str(tmp_path / "nowhere")], capsys, "no such folder")

