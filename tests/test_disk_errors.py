"""A full disk and a read-only output folder: one clear error, nothing complete damaged, a rerun
finishes the work.

The tests mount a small tmpfs (they need the right to mount, as root in a container has; they
skip otherwise), fill it with a placeholder file and run the real commands on it.
"""
from __future__ import annotations

import errno
import hashlib
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from klas.cache import CacheReader
from klas.pipeline.cli import main
from klas.files import atomic_path, save_safetensors_atomic, torch_save_atomic, write_json_atomic
from test_run import assert_same_outputs, tiny_config


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs; the tests fill it as they need."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def _fill(disk: Path, leave: int) -> Path:
    """A placeholder file that leaves about `leave` bytes free on `disk`."""
    import shutil

    filler = disk / "filler"
    filler.write_bytes(b"\0" * max(0, shutil.disk_usage(disk).free - leave))
    return filler


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("save", [
    lambda p: write_json_atomic(p, {"x": "y" * 20000}),
    lambda p: save_safetensors_atomic({"w": torch.zeros(20000)}, p),
    lambda p: torch_save_atomic({"w": torch.zeros(20000)}, p),
])
def test_a_full_disk_is_an_oserror_naming_the_file_and_the_old_file_stays(small_disk, save):
    target = small_disk / "out.bin"
    target.write_bytes(b"the complete old version")
    _fill(small_disk, 0)
    with pytest.raises(OSError) as info:
        save(target)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert target.read_bytes() == b"the complete old version"
    assert not list(small_disk.glob("*.tmp"))


def test_atomic_path_removes_the_temporary_file_on_any_failure(tmp_path):
    with pytest.raises(KeyError), atomic_path(tmp_path / "f") as tmp:
        tmp.write_text("half")
        raise KeyError("killed midway")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_run_out_of_space_stops_cleanly_and_resumes(tmp_path, small_disk, shapes_dir, capsys):
    """`klas run` on a disk with room for part of its outputs: exit status 2 with a one-line
    message, no temporary file left, and after space is freed the rerun ends with the outputs of
    a run that never ran short."""
    reference = tmp_path / "reference.yaml"
    reference.write_text(yaml.safe_dump(tiny_config(tmp_path / "ref", shapes_dir)))
    assert main(["run", str(reference), "--quiet"]) == 0
    total = sum(p.stat().st_size for p in (tmp_path / "ref").rglob("*") if p.is_file())
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_config(small_disk / "out", shapes_dir)))
    filler = _fill(small_disk, total // 3)
    capsys.readouterr()
    assert main(["run", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "disk is full" in err and "run the same command again" in err and str(small_disk) in err, err
    assert len(err.splitlines()) == 1
    assert not list((small_disk / "out").rglob("*.tmp"))
    markers = list((small_disk / "out").rglob(".klas-stage.json"))
    assert markers, "the disk should hold at least one finished stage"
    filler.unlink()
    assert main(["run", str(config), "--quiet"]) == 0
    assert_same_outputs(tmp_path / "ref", small_disk / "out")


def test_read_only_output_is_refused_and_left_as_it_was(tmp_path, small_disk, shapes_dir, capsys):
    """A finished run's folder becomes read-only; asking for another method fails with one line
    and changes no file."""
    cfg = tiny_config(small_disk / "out", shapes_dir)
    cfg["select"] = {"method": "klas"}
    cfg["finetune"]["steps"] = 2
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(config), "--quiet"]) == 0
    before = _tree(small_disk / "out")
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    capsys.readouterr()
    assert main(["run", str(config), "--quiet", "--method", "snnet-nearest"]) == 2
    err = capsys.readouterr().err.strip()
    assert "read-only" in err and len(err.splitlines()) == 1, err
    assert _tree(small_disk / "out") == before
    CacheReader(small_disk / "out" / "cache" / "cifar-resnet8" / "train").check()


def test_extraction_into_a_full_disk_keeps_the_finished_cache(tmp_path, small_disk, shapes_dir, capsys):
    """Anchor A's cache is complete; extracting anchor B runs out of space. A's cache still reads
    and verifies, B has no manifest, and B's extraction finishes once there is room."""
    a, b = "cifar-resnet:8?pretrained=false&seed=1", "cifar-resnet:14?pretrained=false&seed=2"
    out = small_disk / "cache"
    args = ["extract", "--data", str(shapes_dir), "--out", str(out), "--batch-size", "16", "--shard-rows", "16"]
    assert main([*args, "--anchor", a, "--quiet"]) == 0
    done = _tree(out)
    filler = _fill(small_disk, 20_000)
    capsys.readouterr()
    assert main([*args, "--anchor", b, "--quiet"]) == 2
    assert "disk is full" in capsys.readouterr().err
    assert {k: v for k, v in _tree(out).items() if k.startswith("cifar-resnet8/")} == done
    for split in ("train", "val"):
        CacheReader(out / "cifar-resnet8" / split).check()
    assert not any((out / "cifar-resnet14").rglob("manifest.json"))
    filler.unlink()
    assert main([*args, "--anchor", b, "--quiet"]) == 0
    assert main([*args, "--anchor", b, "--quiet"]) == 0  # complete: nothing to redo
    elsewhere = tmp_path / "elsewhere"
    assert main(["extract", "--data", str(shapes_dir), "--out", str(elsewhere), "--batch-size", "16",
                 "--shard-rows", "16", "--anchor", b, "--quiet"]) == 0
    assert _tree(out / "cifar-resnet14") == _tree(elsewhere / "cifar-resnet14")
