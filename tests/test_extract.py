"""Extraction into the cache, resume after a kill, and the CLI's errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from klas.anchors import load_anchor
from klas.anchors.base import LOGITS
from klas.cache import CacheReader, read_manifest
from klas.pipeline.cli import main
from klas.extraction.data import ImageDataset, resolve_split
from klas.errors import CacheError
from klas.extraction.extract import extract

from conftest import requires_shared

SPEC = "cifar-resnet:20?pretrained=false"


def test_cache_rows_are_pooled_block_outputs(tmp_path, shapes_dir):
    torch.manual_seed(0)
    anchor = load_anchor(SPEC)
    done = extract([anchor], shapes_dir, tmp_path, splits=("train", "val"), batch_size=16, dtype="float32",
                   shard_rows=32, val_fraction=0.25, progress=False)
    cache = done[("cifar-resnet20", "val")]
    m = read_manifest(cache)
    assert m.num_samples == 30 and m.anchor == SPEC and m.num_classes == 10
    assert [b.width for b in m.block_entries] == [16] * 3 + [32] * 3 + [64] * 3
    assert m.logits_entry.offset == 16 * 3 + 32 * 3 + 64 * 3

    source, indices = resolve_split(shapes_dir, "val", val_fraction=0.25)
    ds = ImageDataset(source, indices, input_size=anchor.input_size, mean=anchor.mean, std=anchor.std)
    x = torch.stack([ds[k][0] for k in range(5)])
    rows = next(iter(CacheReader(cache).batches(5)))
    with torch.no_grad():
        expect = torch.cat([h if k == LOGITS else anchor.pool(h, k) for k, h in anchor.block_outputs(x)], dim=1)
    np.testing.assert_allclose(rows.features, expect.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(rows.labels, source.labels[indices[:5]])


def test_complete_cache_is_not_recomputed(tmp_path, shapes_dir):
    anchor = load_anchor(SPEC)
    kw = dict(splits=("val",), batch_size=16, val_fraction=0.25, progress=False)
    cache = extract([anchor], shapes_dir, tmp_path, **kw)[("cifar-resnet20", "val")]
    before = (cache / "manifest.json").stat().st_mtime_ns
    extract([anchor], shapes_dir, tmp_path, **kw)
    assert (cache / "manifest.json").stat().st_mtime_ns == before


def test_cache_without_the_facts_selection_reads_is_made_again(tmp_path, shapes_dir):
    """A complete cache whose manifest records other anchor facts than the anchor has now (here a stem
    width the anchor does not differ in) is replaced, not read with a default."""
    anchor = load_anchor(SPEC)
    kw = dict(splits=("val",), batch_size=16, val_fraction=0.25, progress=False)
    cache = extract([anchor], shapes_dir, tmp_path, **kw)[("cifar-resnet20", "val")]
    doc = json.loads((cache / "manifest.json").read_text())
    assert "stem_width" not in doc["anchor_info"]
    doc["anchor_info"]["stem_width"] = 32
    (cache / "manifest.json").write_text(json.dumps(doc))
    assert read_manifest(cache).anchor_info["stem_width"] == 32  # the edited manifest still reads
    with pytest.warns(UserWarning, match="other settings is replaced"):
        extract([anchor], shapes_dir, tmp_path, **kw)
    assert "stem_width" not in read_manifest(cache).anchor_info


def test_cache_of_another_anchor_is_refused(tmp_path, shapes_dir):
    kw = dict(splits=("val",), batch_size=16, val_fraction=0.25, progress=False)
    extract([SPEC], shapes_dir, tmp_path, **kw)
    with pytest.raises(CacheError, match="holds the cache of anchor"):
        extract(["cifar-resnet:20?pretrained=false&num_classes=10"], shapes_dir, tmp_path, **kw)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_sixteen_bit_caches_round_the_float32_rows(tmp_path, shapes_dir, dtype):
    anchor = load_anchor(SPEC)
    kw = dict(splits=("val",), batch_size=16, val_fraction=0.25, progress=False)
    full = extract([anchor], shapes_dir, tmp_path / "f32", dtype="float32", **kw)[("cifar-resnet20", "val")]
    half = extract([anchor], shapes_dir, tmp_path / "f16", dtype=dtype, **kw)[("cifar-resnet20", "val")]
    a = next(iter(CacheReader(full).batches(30))).torch()[0]
    b = next(iter(CacheReader(half).batches(30))).torch()[0]
    assert b.dtype == getattr(torch, dtype)
    torch.testing.assert_close(b.float(), a.to(getattr(torch, dtype)).float(), rtol=0, atol=0)


def test_cli_errors_are_one_line_with_exit_2(tmp_path, shapes_dir, capsys):
    (tmp_path / "empty").mkdir()
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    cases = [
        (["extract", "--anchor", "timm:no_such_model", "--data", str(shapes_dir), "--out", str(tmp_path)], "unknown timm model"),
        (["extract", "--anchor", SPEC, "--data", str(tmp_path / "empty"), "--out", str(tmp_path)], "empty"),
        (["extract", "--anchor", "cifar-resnet:20?pretrained=false&num_classes=7", "--data", str(shapes_dir),
          "--out", str(tmp_path)], "10 classes but anchor"),
        (["extract", "--anchor", SPEC, "--data", str(shapes_dir), "--out", str(blocker / "x"), "--quiet"], "not writable"),
        (["eval-anchor", "cifar-resnet:20:/no/file.th", "--data", str(shapes_dir)], "does not exist"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err


def test_eval_anchor_json(shapes_dir, capsys):
    import json

    assert main(["eval-anchor", SPEC, "--data", str(shapes_dir), "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["total"] == 120 and 0 <= out["top1"] <= 100 and out["split"] == "test"


@pytest.mark.slow
def test_killed_extraction_resumes_to_identical_bytes(tmp_path):
    from make_shapes import write_shapes

    data = tmp_path / "data"
    write_shapes(data, per_class=150, seed=2)
    cmd = [sys.executable, "-m", "klas", "extract", "--anchor", SPEC, "--data", str(data), "--splits", "train",
           "--batch-size", "50", "--shard-rows", "200", "--quiet"]
    subprocess.run(cmd + ["--out", str(tmp_path / "whole")], check=True)

    victim = subprocess.Popen(cmd + ["--out", str(tmp_path / "killed")])
    progress = tmp_path / "killed" / "cifar-resnet20" / "train" / "progress.json"
    deadline = time.time() + 120
    while not progress.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    cache = tmp_path / "killed" / "cifar-resnet20" / "train"
    assert progress.exists() and not (cache / "manifest.json").exists(), "killed too late to test resume"
    subprocess.run(cmd + ["--out", str(tmp_path / "killed")], check=True)

    whole = tmp_path / "whole" / "cifar-resnet20" / "train"
    names = sorted(os.listdir(whole))
    assert names == sorted(os.listdir(cache)) and len(names) > 3
    for name in names:
        assert (whole / name).read_bytes() == (cache / name).read_bytes(), name


# Published accuracies of the shared family on the JPEG test set (../shared/models README).
EXPECTED_TOP1 = {20: 81.0, 32: 82.6, 44: 82.7, 56: 83.2}


@pytest.mark.slow
@requires_shared
def test_shared_cifar_resnets_reproduce_their_accuracy():
    """The family's shallowest and deepest member on the 10,000 test images (one loader serves every
    depth), decoded once for both (they share their preprocessing); ResNet-20 on 1,000 of them also
    through `evaluate_anchor` (`klas eval-anchor`'s path)."""
    from klas.anchors import load_anchor
    from klas.evaluation.anchor_eval import evaluate_anchor
    from klas.extraction.data import make_loader, split_for_anchor
    from klas.settings import cifar10_dir

    anchors = {d: load_anchor(f"cifar-resnet:{d}").eval() for d in (20, 56)}
    first = anchors[20]
    assert all((a.input_size, a.mean, a.std) == (first.input_size, first.mean, first.std) for a in anchors.values())
    source, indices = split_for_anchor(cifar10_dir(), "test", first)
    def count(indices, models):
        correct = dict.fromkeys(models, 0)
        with torch.inference_mode():
            for images, labels in make_loader(source, indices, first, batch_size=500):
                for d, a in models.items():
                    correct[d] += int((a(images).argmax(dim=1) == labels).sum())
        return correct

    correct = count(indices, anchors)
    assert len(indices) == 10000
    for d, n in correct.items():
        assert abs(100.0 * n / len(indices) - EXPECTED_TOP1[d]) <= 0.3, (d, n)
    result = evaluate_anchor(first, cifar10_dir(), split="test", limit=1000, progress=False)
    _, sample = split_for_anchor(cifar10_dir(), "test", first, limit=1000)
    assert (result.total, result.correct) == (1000, count(sample, {20: first})[20]), result
