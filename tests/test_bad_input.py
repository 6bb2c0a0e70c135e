"""The bad-input catalogue, each case made by hand on a real cache (extract → probes → score of two
small ResNets on a generated image set): the command stops with exit status 2 and one line that
names the problem and the fix, and every other file of the run is left as it was.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import REAL_A as A
from helpers import REAL_B as B
from helpers import patch_bytes as _patch
from helpers import rewrite_crc as _rewrite_crc
from helpers import tree as _tree
from PIL import Image

from klas.pipeline.cli import main


def corrupt_byte(c: Path) -> list[Path]:
    shard = c / "cifar-resnet8/val/shard-00000.bin"
    _patch(shard, 300, bytes([shard.read_bytes()[300] ^ 0x10]))
    return [shard]


def truncate_shard(c: Path) -> list[Path]:
    shard = c / "cifar-resnet8/val/shard-00000.bin"
    os.truncate(shard, shard.stat().st_size - 100)
    return [shard]


def delete_shard(c: Path) -> list[Path]:
    shard = c / "cifar-resnet14/train/shard-00002.bin"
    shard.unlink()
    return [shard]


def manifest_lies(c: Path) -> list[Path]:
    path = c / "cifar-resnet8/train/manifest.json"
    m = json.loads(path.read_text())
    m["shards"][0]["rows"] += 8  # and the total agrees, so only the shard can tell
    m["shards"][-1]["rows"] -= 8
    path.write_text(json.dumps(m))
    return [path]


def other_anchor(c: Path) -> list[Path]:
    shutil.rmtree(c / "cifar-resnet8/val")
    shutil.copytree(c / "cifar-resnet14/val", c / "cifar-resnet8/val")
    return list((c / "cifar-resnet8/val").iterdir())


def other_split(c: Path) -> list[Path]:
    shutil.rmtree(c / "cifar-resnet8/val")
    shutil.copytree(c / "cifar-resnet8/train", c / "cifar-resnet8/val")
    return list((c / "cifar-resnet8/val").iterdir())


def nan_activation(c: Path) -> list[Path]:
    shard = c / "cifar-resnet8/val/shard-00000.bin"
    _patch(shard, 64 + 2 * 5, np.array([np.nan], dtype=np.float16).tobytes())
    _rewrite_crc(shard.parent, 0)
    return [shard, shard.parent / "manifest.json"]


def label_out_of_range(c: Path) -> list[Path]:
    shard = c / "cifar-resnet8/train/shard-00001.bin"
    labels_at = struct.unpack("<Q", shard.read_bytes()[32:40])[0]
    _patch(shard, labels_at + 8 * 3, struct.pack("<q", 17))
    _rewrite_crc(shard.parent, 1)
    return [shard, shard.parent / "manifest.json"]


def grids_never_match(c: Path) -> list[Path]:
    path = c / "scores/scores.json"
    m = json.loads(path.read_text())
    for grid in m["anchors"][1]["grids"]:
        grid[:] = [3, 3]
    path.write_text(json.dumps(m))
    return [path]


def _score(c: Path) -> list[str]:
    return ["score", "--cache", str(c), "--out", str(c.parent / "new-scores"), "--no-plots"]


def _probes(c: Path) -> list[str]:
    return ["probes", "--cache", str(c), "--out", str(c.parent / "new-probes"), "--epochs", "1", "--batch-size", "32",
            "--quiet"]


def _select(c: Path) -> list[str]:
    return ["select", "--scores", str(c / "scores"), "--out", str(c.parent / "new-selection")]


CATALOGUE = [
    # (damage, command, what the message must say: the problem, then the fix)
    (corrupt_byte, _score, [r"shard-00000\.bin", "checksum mismatch", "re-run extraction"]),
    (truncate_shard, _score, [r"shard-00000\.bin", "truncated", "re-run extraction"]),
    (delete_shard, _probes, [r"shard-00002\.bin", "cannot open"]),
    (manifest_lies, _probes, [r"shard-00000\.bin", "bytes on disk", "re-run extraction"]),
    (other_anchor, _score, ["trained for", "re-run `klas probes`"]),
    (other_split, _score, ["holds the 'train' split, not 'val'", "extract the val split"]),
    (nan_activation, _score, [r"cifar-resnet8/val holds NaN/Inf activations", "extract it again"]),
    (label_out_of_range, _probes, [r"cifar-resnet8/train holds labels outside 0\.\.9", "extract it again"]),
    (grids_never_match, _select, ["grids never match"]),
]


@pytest.mark.parametrize("damage, command, message", CATALOGUE, ids=[c[0].__name__ for c in CATALOGUE])
def test_damaged_run_gives_its_named_error_and_keeps_the_rest(real_run, tmp_path, damage, command, message, capsys):
    run = tmp_path / "run"
    shutil.copytree(real_run, run)
    before = _tree(run)
    touched = {str(p.relative_to(run)) for p in damage(run / "cache")}
    capsys.readouterr()
    assert main(command(run / "cache")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for part in message:
        assert re.search(part, err), (part, err)
    after = _tree(run)
    assert {k: v for k, v in after.items() if k not in touched and not k.startswith("new-")} == \
        {k: v for k, v in before.items() if k not in touched}
    assert not any(k.startswith("new-") and k.endswith((".safetensors", ".json")) for k in after), after.keys()


def _one_class(tmp_path: Path) -> Path:
    folder = tmp_path / "one" / "cat"
    folder.mkdir(parents=True)
    for k in range(4):
        Image.new("RGB", (32, 32), (k, 0, 0)).save(folder / f"{k}.png")
    return tmp_path / "one"


def _empty_test_split(tmp_path: Path, shapes_dir: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(shapes_dir, root / "train")
    (root / "test").mkdir()
    return root


@pytest.mark.parametrize("data, split, message", [
    (_one_class, "train", ["has one class", "at least two class folders"]),
    (_empty_test_split, "test", ["empty"]),
], ids=["one-class", "empty-split"])
def test_bad_datasets_are_named_before_any_cache_is_written(tmp_path, shapes_dir, data, split, message, capsys):
    root = data(tmp_path) if data is _one_class else data(tmp_path, shapes_dir)
    out = tmp_path / "cache"
    assert main(["extract", "--anchor", A, "--data", str(root), "--out", str(out), "--splits", split, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(m in err for m in message), err
    assert not list(out.rglob("shard-*"))


@pytest.mark.parametrize("edit, message", [
    ({"probes": {"epoch": 3}}, "probes.epoch: unknown key (known: batch_size, epochs"),
    ({"finetune": {"steps": "many"}}, "finetune.steps: expected an integer, got 'many'"),
], ids=["unknown-key", "wrong-type"])
def test_bad_config_names_the_key_path_and_runs_nothing(tmp_path, shapes_dir, edit, message, capsys):
    cfg = {"out": str(tmp_path / "out"), "anchors": [A, B], "data": {"root": str(shapes_dir)}, **edit}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
