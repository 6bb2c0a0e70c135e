"""Anchor adaptation: each anchor finetuned alone on D_t, its weights kept with the digest of the
weights it started from, and every later stage built on the adapted anchors."""
from __future__ import annotations

import pytest
import yaml

from klas.stitching.adapt import adapt_anchor, apply_adapted
from klas.anchors import load_anchor
from klas.pipeline.cli import main
from klas.extraction.data import ImageDataset, resolve_split
from klas.errors import CacheError
from klas.stitching.finetune import FinetuneSettings

SPEC = "cifar-resnet:8?pretrained=false&seed=3"


def _train(shapes_dir, anchor):
    source, idx = resolve_split(shapes_dir, "train")
    return ImageDataset(source, idx, input_size=anchor.input_size, mean=anchor.mean, std=anchor.std)


def test_adapted_weights_load_into_a_fresh_anchor_and_only_into_its_own(tmp_path, shapes_dir):
    anchor = load_anchor(SPEC)
    before = anchor.weights_digest()
    adapt_anchor(anchor, _train(shapes_dir, anchor), FinetuneSettings(steps=3, batch_size=8, lr=1e-3), tmp_path / "a",
                 progress=False)
    assert anchor.weights_digest() != before  # it trained
    fresh = apply_adapted(load_anchor(SPEC), tmp_path / "a")
    assert fresh.weights_digest() == anchor.weights_digest()
    with pytest.raises(CacheError, match="adaptation of other weights"):
        apply_adapted(load_anchor("cifar-resnet:8?pretrained=false&seed=4"), tmp_path / "a")


def test_the_pipeline_extracts_from_the_adapted_anchors(tmp_path, shapes_dir, capsys):
    from klas.cache.format import read_manifest

    cfg = {"out": str(tmp_path / "out"), "anchors": [SPEC, "cifar-resnet:14?pretrained=false&seed=5"],
           "data": {"root": str(shapes_dir), "test_limit": 20}, "adapt": {"steps": 3, "batch_size": 8, "lr": 1e-3},
           "extract": {"batch_size": 32, "shard_rows": 64}, "probes": {"epochs": 1},
           "recovery": {"steps": 2, "batch_size": 8, "calibration_images": 8, "methods": ["klas"]}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["recovery", str(path), "--pair", "cifar-resnet8,cifar-resnet14", "--quiet"]) == 0
    adapted = apply_adapted(load_anchor(SPEC), tmp_path / "out/adapted/cifar-resnet8")
    assert read_manifest(tmp_path / "out/cache/cifar-resnet8/train").weights_digest == adapted.weights_digest()
    assert adapted.weights_digest() != load_anchor(SPEC).weights_digest()
    capsys.readouterr()
    assert main(["recovery", str(path), "--pair", "cifar-resnet8,cifar-resnet14", "--quiet"]) == 0
    assert "[adapt] up to date" in capsys.readouterr().out


def test_eval_anchor_with_adapted_weights(tmp_path, shapes_dir, capsys):
    anchor = load_anchor(SPEC)
    adapt_anchor(anchor, _train(shapes_dir, anchor), FinetuneSettings(steps=2, batch_size=8, lr=1e-3), tmp_path / "a",
                 progress=False)
    assert main(["eval-anchor", SPEC, "--data", str(shapes_dir), "--adapted", str(tmp_path / "a"), "--quiet"]) == 0
    assert "top-1" in capsys.readouterr().out
    other = "cifar-resnet:8?pretrained=false&seed=9"
    assert main(["eval-anchor", other, "--data", str(shapes_dir), "--adapted", str(tmp_path / "a"), "--quiet"]) == 2
    assert "adaptation of other weights" in capsys.readouterr().err


def test_an_adaptation_stopped_after_its_last_checkpoint_finishes_without_training_again(tmp_path, shapes_dir):
    """The record is written after the weights; a run stopped between its last checkpoint and the
    record resumes to a complete, readable record of the same weights (no step left to run)."""
    anchor = load_anchor(SPEC)
    settings = FinetuneSettings(steps=3, batch_size=8, lr=1e-3)
    adapt_anchor(anchor, _train(shapes_dir, anchor), settings, tmp_path / "a", progress=False)
    adapted = anchor.weights_digest()
    (tmp_path / "a" / "adapted.json").unlink()
    (tmp_path / "a" / "weights.safetensors").unlink()
    again = load_anchor(SPEC)
    stats = adapt_anchor(again, _train(shapes_dir, again), settings, tmp_path / "a", progress=False)
    assert stats["resumed_from"] == 3 and stats["final_loss"] is None
    assert again.weights_digest() == adapted
    assert apply_adapted(load_anchor(SPEC), tmp_path / "a").weights_digest() == adapted
