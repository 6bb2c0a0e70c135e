"""The second catalogue of hostile and careless inputs, aimed at the readers: loops of links, numbers
too large to convert, nesting too deep, checkpoints of another model, damaged zip members, odd file
names, odd strings in project files, typos in options, and the messages that must name the real
cause. Each ends in exit status 2 and one line (or, where the input is valid, in a result), with
every other file as it was.
"""
from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from helpers import REAL_A as A
from helpers import REAL_B as B
from helpers import tree
from test_hostile_input import R8, _fails_cleanly, _json_edit, _png_claiming, _score, _unchanged_but, run  # noqa: F401

from klas.errors import UsageError
from klas.pipeline.cli import main


def _extract(data: Path, out: Path, *extra: str) -> list[str]:
    return ["extract", "--anchor", A, "--data", str(data), "--out", str(out), "--splits", "train", "--batch-size", "8",
            "--quiet", *extra]


def _loop(path: Path) -> None:
    """`path` becomes a link to itself (following it never ends)."""
    if path.exists() or path.is_symlink():
        path.unlink()
    path.symlink_to(path.name)


# -- loops of links, wherever klas reads --------------------------------------------------------

def test_a_config_that_is_a_loop_of_links_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    _loop(cfg)
    _fails_cleanly(["run", str(cfg)], capsys, r"run\.yaml", "loop of links|cannot be followed")


def test_a_manifest_that_is_a_loop_of_links_is_one_line(run, capsys):
    _loop(run / "cache" / R8 / "val" / "manifest.json")
    before = tree(run)
    _fails_cleanly(_score(run), capsys, r"manifest\.json", "loop of links|cannot be followed")
    _unchanged_but(run, before, set())


def test_a_checkpoint_that_is_a_loop_of_links_is_one_line(tmp_path, capsys):
    ckpt = tmp_path / "model.pt"
    _loop(ckpt)
    _fails_cleanly(["anchors", f"cifar-resnet:8:{ckpt}"], capsys, r"model\.pt", "loop of links|cannot be followed")


def test_a_training_curve_that_is_a_loop_of_links_reads_as_no_curve(tmp_path):
    from klas.training_log import TrainingLog, read_curve

    curve = tmp_path / "training.csv"
    _loop(curve)
    assert read_curve(curve) == {}
    log = TrainingLog(curve, ["step", "loss"], resume_from=3)  # a resumed training starts a fresh curve
    log.row(step=3, loss=0.5)
    log.close()
    assert read_curve(curve) == {"step": [3.0], "loss": [0.5]}


def test_a_data_root_that_is_a_loop_of_links_is_one_line(tmp_path, capsys):
    data = tmp_path / "data"
    _loop(data)
    _fails_cleanly(_extract(data, tmp_path / "out"), capsys, "data")


# -- numbers and nesting ---------------------------------------------------------------------------

HUGE = "9" * 400


@pytest.mark.parametrize("argv, pattern", [
    (["probes", "--cache", "x", "--epochs", HUGE], "an integer of 400 digits"),
    (["score", "--cache", "x", "--temperature", "1e-300"], r"temperature.*\[1e-30, 1000000\.0\]"),
    (["score", "--cache", "x", "--temperature", HUGE], r"temperature"),
], ids=["integer-option", "tiny-temperature", "huge-temperature"])
def test_numbers_beyond_range_in_options_are_one_line(argv, pattern, capsys):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and re.search(pattern, err), err


def _config(tmp_path: Path, shapes_dir: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"out": str(tmp_path / "out"), "anchors": [A, B], "data": {"root": str(shapes_dir)}}))
    return path


@pytest.mark.parametrize("setting, pattern", [
    (f"finetune.steps={HUGE}", "finetune.steps: .*an integer of 400 digits"),
    (f"finetune.lr={HUGE}", "finetune.lr: must be a finite number"),
    ("score.temperature=1e-300", r"score.temperature: must be a finite number in \[1e-30"),
    ("select.compare=" + "[" * 5000 + "]" * 5000, "nested too deeply|nested more than"),
    ("finetune." + "a." * 5000 + "b=1", "at most 8 levels"),
], ids=["huge-integer", "huge-float", "tiny-temperature", "deep-value", "deep-key"])
def test_set_values_out_of_range_or_too_deep_are_one_line(tmp_path, shapes_dir, capsys, setting, pattern):
    cfg = _config(tmp_path, shapes_dir)
    _fails_cleanly(["run", str(cfg), "--set", setting], capsys, pattern)
    assert not (tmp_path / "out").exists()


def test_a_score_at_a_temperature_the_kernels_cannot_use_is_one_line(run, capsys):
    before = tree(run)
    _fails_cleanly([*_score(run), "--temperature", "1e-300"], capsys, r"\[1e-30, 1000000\.0\]")
    _unchanged_but(run, before, set())


# -- logits, Σ: the real cause, every backend alike ---------------------------------------------------

@pytest.mark.parametrize("backend", ["reference", "torch", "native"])
def test_finite_but_huge_logits_are_named_as_such_on_every_backend(backend):
    from klas.scoring.kl import kl_matrix

    z = torch.randn(2, 7, 5)
    for big, temperature in ((3e38, 1.0), (1e36, 0.01)):
        with pytest.raises(UsageError, match=r"reach \|logit\| / temperature = .*scale the logits down"):
            kl_matrix(z.sign() * big, z, temperature=temperature, backend=backend)
    with pytest.raises(UsageError, match="logits_tgt holds NaN or Inf"):
        kl_matrix(z, torch.full_like(z, float("nan")), backend=backend)
    # identical inputs within the range: Θ = 0 on every backend
    same = z * 1e5
    assert kl_matrix(same, same, backend=backend).diagonal().abs().max() <= 1e-3


def test_float64_logits_beyond_float32_are_refused_not_returned_as_inf():
    from klas.scoring.kl import kl_matrix

    z = torch.randn(2, 7, 5, dtype=torch.float64) * 1e300
    with pytest.raises(UsageError, match=r"reach \|logit\| / temperature"):
        kl_matrix(z, z, backend="reference")


def test_the_streaming_path_names_the_cause_of_non_finite_sums():
    from klas.scoring.kl import kl_matrix_from_features

    feats = [torch.randn(20, 4)]
    probes = [(torch.full((3, 4), 1e37), torch.zeros(3))]
    for backend in ("torch", "native"):
        with pytest.raises(UsageError, match=r"reach \|logit\| / temperature"):
            kl_matrix_from_features(feats, probes, feats, probes, backend=backend)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.5])
def test_stitch_scores_refuse_a_sigma_that_is_no_divergence(value):
    from klas.scoring.scores import stitch_scores

    sigma = torch.rand(3)
    sigma[1] = value
    with pytest.raises(UsageError, match=r"Σ\) holds NaN, Inf or negative values"):
        stitch_scores(torch.rand(3, 4), sigma)


def test_triton_fronts_refuse_what_the_api_refuses():
    pytest.importorskip("triton")
    from klas.kernels.kl_matrix import kl_partial_sums

    z = torch.randn(2, 5, 3)
    for temperature in (0.0, -1.0, float("nan"), 1e-300):
        with pytest.raises(ValueError, match="temperature must lie in"):
            kl_partial_sums(z, z, temperature=temperature)


# -- checkpoints of another model ----------------------------------------------------------------

def test_a_zoo_checkpoint_of_another_architecture_is_one_line(tmp_path, capsys):
    from klas.anchors import load_anchor

    other = tmp_path / "googlenet.ckpt"  # the zoo's Lightning layout, of another architecture
    state = load_anchor("cifar-zoo:googlenet?pretrained=false").model.state_dict()
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}}, other)
    _fails_cleanly(["anchors", f"cifar-zoo:resnet:{other}"], capsys, r"googlenet\.ckpt does not fit",
                   "the spec names the zoo model")


@pytest.mark.parametrize("state, pattern", [
    ({"conv1.weight": 3}, "not a state dict of tensors"),
    ({1: torch.zeros(2)}, "not a state dict of tensors"),
    ({"conv1.weight": torch.zeros(2)}, "keys with other shapes"),
], ids=["a-number", "an-integer-key", "a-wrong-shape"])
def test_checkpoints_with_non_tensor_values_or_keys_are_one_line(tmp_path, capsys, state, pattern):
    path = tmp_path / "model.pt"
    torch.save(state, path)
    for spec in (f"cifar-resnet:8:{path}", f"cifar-zoo:tiny10:{path}"):
        _fails_cleanly(["anchors", spec], capsys, r"model\.pt", pattern)


# -- data sets -------------------------------------------------------------------------------------

def _compressed_zip(tmp_path: Path, shapes_dir: Path, method: int) -> Path:
    """The shapes as a zip of `method`, the first member's compressed bytes damaged (its CRC left as is)."""
    path = tmp_path / "data.zip"
    with zipfile.ZipFile(path, "w", method) as z:
        for p in sorted(shapes_dir.rglob("*.png")):
            z.write(p, str(p.relative_to(shapes_dir)))
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", bytes(data[26:30]))
    start = 30 + name_len + extra_len
    for k in range(start + 8, start + 40):
        data[k] ^= 0x5A
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_LZMA], ids=["deflate", "lzma"])
def test_damaged_compressed_zip_members_are_one_line(tmp_path, shapes_dir, capsys, method):
    path = _compressed_zip(tmp_path, shapes_dir, method)
    _fails_cleanly(_extract(path, tmp_path / "out"), capsys, r"cannot decode .*\.png", "remove or replace it")
    assert not list((tmp_path / "out").rglob("manifest.json"))


def test_a_broken_image_read_by_a_worker_is_one_line(tmp_path, shapes_dir, capsys):
    root = tmp_path / "data"
    shutil.copytree(shapes_dir, root)
    first = sorted(root.iterdir())[0]
    (first / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    err = _fails_cleanly(_extract(root, tmp_path / "out", "--workers", "1"), capsys, r"cannot decode .*broken\.png")
    assert "DataLoader worker" not in err and "Original Traceback" not in err


def test_an_image_between_pils_warning_and_error_limits_is_one_line(tmp_path, shapes_dir):
    """10000x10000 pixels: above PIL's warning (89 M), below its error (179 M), above klas's own limit."""
    root = tmp_path / "data"
    shutil.copytree(shapes_dir, root)
    (sorted(root.iterdir())[0] / "large.png").write_bytes(_png_claiming(10000, 10000))
    done = subprocess.run([sys.executable, "-m", "klas", *_extract(root, tmp_path / "out")], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "claims 10000x10000 pixels" in done.stderr


def test_an_image_whose_name_is_not_utf8_loads(tmp_path, shapes_dir):
    root = tmp_path / "data"
    shutil.copytree(shapes_dir, root)
    first = sorted(root.iterdir())[0]
    image = sorted(first.iterdir())[0]
    odd = os.path.join(os.fsencode(first), b"caf\xe9.png")  # Latin-1 bytes: not valid UTF-8
    os.rename(os.fsencode(image), odd)
    assert main(_extract(root, tmp_path / "out")) == 0
    from klas.cache.format import read_manifest

    assert read_manifest(tmp_path / "out" / R8 / "train").num_samples > 0


def test_a_manifest_shard_name_holding_nul_is_one_line(run, capsys):
    _json_edit(run / "cache" / R8 / "val" / "manifest.json", lambda m: m["shards"][0].__setitem__("file", "shard\0.bin"))
    before = tree(run)
    _fails_cleanly(_score(run), capsys, r"manifest\.json", "not a plain name")
    _unchanged_but(run, before, set())


# -- strings and specs ---------------------------------------------------------------------------

def test_a_lone_surrogate_in_an_anchor_name_stops_select_before_it_writes(run, capsys):
    path = run / "cache" / "scores" / "scores.json"
    path.write_text(path.read_text().replace(f'"name": "{R8}"', '"name": "cifar\\ud800"', 1))
    before = tree(run)
    _fails_cleanly(["select", "--scores", str(run / "cache" / "scores")], capsys, "anchor entry .* is malformed")
    _unchanged_but(run, before, set())


def test_a_typo_in_a_module_spec_option_names_the_option(capsys):
    _fails_cleanly(["anchors", "module:klas.anchors.module:example_anchor?widht=8"], capsys,
                   "takes no option 'widht' \\(did you mean 'width'\\?\\)")


def test_two_specs_with_one_name_are_refused_for_the_clash(tmp_path, shapes_dir, capsys):
    from klas.anchors import load_anchor

    ckpt = tmp_path / "r8.pt"
    torch.save(load_anchor(A).model.state_dict(), ckpt)
    argv = ["extract", "--anchor", A, "--anchor", f"cifar-resnet:8:{ckpt}", "--data", str(shapes_dir), "--out",
            str(tmp_path / "out"), "--quiet"]
    err = _fails_cleanly(argv, capsys, "both get the name 'cifar-resnet8'", "separate `out` folders")
    assert "another extraction" not in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("manifest.json"))
