"""Property tests for every reader of a project file: whatever a file holds, reading it either
succeeds or raises one of klas's own error types (KlasError), never another exception.

Each input is a valid file from a real run (tests/helpers.make_real_run) with damage applied by
hypothesis: a value anywhere in a JSON document replaced by any other JSON value or deleted, the
bytes of a binary file flipped or truncated, a YAML config rewritten. Cache manifests and shards
are fuzzed by tests/test_fuzz.py against the native reader.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from klas.errors import KlasError

EXAMPLES = settings(max_examples=int(os.environ.get("KLAS_PROPERTY_EXAMPLES", "60")), deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _paths(doc, prefix=()):
    """Every path (tuple of keys / indices) to a value inside a JSON document."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for k, v in enumerate(doc):
            out += _paths(v, prefix + (k,))
    return out


def mutate_json(doc, data):
    """`doc` with one value replaced by a drawn JSON value, or deleted (the whole document included)."""
    path = data.draw(st.sampled_from(_paths(doc)), label="path")
    new = data.draw(json_values, label="value")
    if not path:
        return new
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if data.draw(st.booleans(), label="delete") and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return doc


def mutate_bytes(raw: bytes, data) -> bytes:
    how = data.draw(st.sampled_from(["flip", "truncate", "append"]), label="how")
    if how == "truncate":
        return raw[:data.draw(st.integers(0, max(0, len(raw) - 1)), label="keep")]
    if how == "append":
        return raw + data.draw(st.binary(min_size=1, max_size=64), label="junk")
    buf = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 8), label="flips")):
        k = data.draw(st.integers(0, len(buf) - 1), label="at")
        buf[k] ^= data.draw(st.integers(1, 255), label="mask")
    return bytes(buf)


def only_klas_errors(read) -> None:
    try:
        read()
    except KlasError:
        pass


@pytest.fixture(scope="module")
def files(real_run, tmp_path_factory):
    """The real run plus a selection, an SN-Net export and a finetuning checkpoint."""
    from klas.pipeline.cli import main

    root = tmp_path_factory.mktemp("props")
    shutil.copytree(real_run, root / "run")
    scores = root / "run/cache/scores"
    assert main(["select", "--scores", str(scores), "--out", str(root / "sel")]) == 0
    assert main(["export", "--selection", str(root / "sel/selection.json"), "--format", "klas-pairs"]) == 0
    return root


def _copy_of(src: Path, tmp: Path) -> Path:
    dst = tmp / src.name
    shutil.copytree(src, dst) if src.is_dir() else shutil.copy(src, dst)
    return dst


@EXAMPLES
@given(data=st.data())
def test_probe_files(files, data):
    from klas.scoring.probes import load_probes

    with tempfile.TemporaryDirectory() as tmp:
        probes = _copy_of(files / "run/cache/probes", Path(tmp))
        meta = probes / "cifar-resnet8.json"
        if data.draw(st.booleans(), label="json"):
            meta.write_text(json.dumps(mutate_json(json.loads(meta.read_text()), data)))
        else:
            tensors = probes / "cifar-resnet8.safetensors"
            tensors.write_bytes(mutate_bytes(tensors.read_bytes(), data))
        only_klas_errors(lambda: load_probes(probes, "cifar-resnet8"))


@EXAMPLES
@given(data=st.data())
def test_scores(files, data):
    from klas.scoring.scores import load_scores
    from klas.selection.select import select

    with tempfile.TemporaryDirectory() as tmp:
        scores = _copy_of(files / "run/cache/scores", Path(tmp))
        if data.draw(st.booleans(), label="json"):
            meta = scores / "scores.json"
            meta.write_text(json.dumps(mutate_json(json.loads(meta.read_text()), data)))
        else:
            tensors = scores / "scores.safetensors"
            tensors.write_bytes(mutate_bytes(tensors.read_bytes(), data))
        only_klas_errors(lambda: select(load_scores(scores)))


@EXAMPLES
@given(data=st.data())
def test_selections(files, data):
    from klas.selection.export import to_snnet
    from klas.selection.select import read_selection

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "selection.json"
        path.write_text(json.dumps(mutate_json(json.loads((files / "sel/selection.json").read_text()), data)))
        only_klas_errors(lambda: to_snnet(read_selection(path)))


@EXAMPLES
@given(data=st.data())
def test_snnet_imports(files, data):
    from klas.selection.export import from_snnet
    from klas.scoring.scores import load_scores

    scores = load_scores(files / "run/cache/scores")
    doc = mutate_json(json.loads((files / "sel/selection.pairs.json").read_text()), data)
    only_klas_errors(lambda: from_snnet(doc, scores))


@EXAMPLES
@given(data=st.data())
def test_stage_markers(data):
    from klas.pipeline.run import MARKER, stage_done

    with tempfile.TemporaryDirectory() as tmp:
        marker = Path(tmp) / MARKER
        if data.draw(st.booleans(), label="json"):
            marker.write_text(json.dumps(mutate_json({"stage": "probes", "fingerprint": "0123abcd", "seconds": 1.5},
                                                     data)))
        else:
            marker.write_bytes(mutate_bytes(b'{"stage": "probes", "fingerprint": "0123abcd"}', data))
        only_klas_errors(lambda: stage_done(Path(tmp), "probes", "0123abcd"))


@EXAMPLES
@given(data=st.data())
def test_configs(shapes_dir, data):
    import yaml

    from klas.pipeline.config import load_config

    cfg = {"out": "runs/x", "anchors": ["cifar-resnet:8?pretrained=false", "cifar-resnet:14?pretrained=false"],
           "data": {"root": str(shapes_dir), "train_limit": 64}, "probes": {"epochs": 2, "lr": 0.01},
           "select": {"compare": ["klas", "snnet-nearest"], "buckets": "auto"}, "finetune": {"steps": 10}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.yaml"
        if data.draw(st.booleans(), label="structured"):
            path.write_text(yaml.safe_dump(mutate_json(cfg, data)))
        else:
            path.write_bytes(mutate_bytes(yaml.safe_dump(cfg).encode(), data))
        only_klas_errors(lambda: load_config(path))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A finetuning checkpoint of a small supernet, and what is needed to read it back."""
    from klas.anchors import load_anchor
    from klas.stitching.finetune import CHECKPOINT, FinetuneSettings, _save_checkpoint
    from klas.stitching.stitch import StitchedSupernet

    net = StitchedSupernet([load_anchor("cifar-resnet:8?pretrained=false"), load_anchor("cifar-resnet:14?pretrained=false")],
                           [("cifar-resnet8", "cifar-resnet14", 1, 1)])
    settings_ = FinetuneSettings(steps=4, batch_size=2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    path = tmp_path_factory.mktemp("ckpt") / CHECKPOINT
    _save_checkpoint(path, net, settings_, 2, opt, sched)
    return path, net, settings_


@EXAMPLES
@given(data=st.data())
def test_checkpoints(checkpoint, data):
    from klas.stitching.finetune import load_finetuning_checkpoint

    path, net, settings_ = checkpoint
    with tempfile.TemporaryDirectory() as tmp:
        damaged = Path(tmp) / path.name
        damaged.write_bytes(mutate_bytes(path.read_bytes(), data))
        only_klas_errors(lambda: load_finetuning_checkpoint(damaged, net, settings_))


@EXAMPLES
@given(data=st.data())
def test_anchor_checkpoints(data, tmp_path_factory):
    from klas.anchors import CifarResNet, load_anchor

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resnet8.th"
        torch.manual_seed(0)
        torch.save({"state_dict": CifarResNet(8).state_dict()}, path)
        path.write_bytes(mutate_bytes(path.read_bytes(), data))
        only_klas_errors(lambda: load_anchor(f"cifar-resnet:8:{path}"))
