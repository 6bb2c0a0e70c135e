"""The `memory_format` setting: which device stores the models channels last, that the tensors come
back contiguous (the same objects) after a stage, and that values equal the contiguous ones.

Channels-last convolutions sum in another order: logits (O(1)) and pooled block outputs are
compared within 1e-4 absolute and relative, training losses within 1e-5, and after a few training
steps the weights within 1e-4 but for at most one in a thousand (AdamW, see the test).
"""
from __future__ import annotations

import copy

import pytest
import torch

from klas.anchors import load_anchor
from klas.errors import UsageError
from klas.memory_format import (channels_last_models, current_memory_format, memory_format_mode,
                                uses_channels_last)
from klas.stitching.finetune import TRAINING_CSV, FinetuneSettings, finetune
from klas.stitching.stitch import StitchedSupernet
from klas.training_log import read_curve

from helpers import RandomImages

TOL = {"atol": 1e-4, "rtol": 1e-4}


def _four_dim(module) -> list[torch.Tensor]:
    return [t for t in [*module.parameters(), *module.buffers()] if t.dim() == 4]


def test_the_modes_decide_per_device(monkeypatch):
    monkeypatch.delenv("KLAS_MEMORY_FORMAT", raising=False)
    assert current_memory_format() == "auto"
    assert uses_channels_last("cpu") and not uses_channels_last("cuda")  # auto: the CPU, where it was measured
    with memory_format_mode("contiguous"):
        assert not uses_channels_last("cpu")
        with memory_format_mode("channels_last"):  # the innermost wins
            assert uses_channels_last("cpu") and uses_channels_last(torch.device("cuda", 1))
        assert current_memory_format() == "contiguous"
    monkeypatch.setenv("KLAS_MEMORY_FORMAT", "contiguous")
    assert not uses_channels_last("cpu")
    monkeypatch.setenv("KLAS_MEMORY_FORMAT", "nhwc")
    with pytest.raises(UsageError, match="KLAS_MEMORY_FORMAT: memory format 'nhwc' is not one of auto, "
                                         "channels_last, contiguous"):
        current_memory_format()
    with pytest.raises(UsageError, match="not one of auto, channels_last, contiguous"):
        with memory_format_mode("fast"):
            pass


def test_the_config_takes_the_setting_and_refuses_others():
    from klas.errors import ConfigError
    from klas.pipeline.config import validate_config

    base = {"anchors": ["cifar-resnet:8?pretrained=false", "cifar-resnet:14?pretrained=false"], "data": {"root": "x"}}
    assert validate_config(base).memory_format == "auto"
    assert validate_config({**base, "memory_format": "contiguous"}).memory_format == "contiguous"
    with pytest.raises(ConfigError, match="memory_format"):
        validate_config({**base, "memory_format": "nhwc"})


@pytest.mark.parametrize("under_inference_mode", [False, True])
def test_the_tensors_are_channels_last_inside_and_contiguous_after(under_inference_mode):
    anchor = load_anchor("cifar-resnet:8?pretrained=false&seed=1")
    before = {id(t): t.detach().clone() for t in _four_dim(anchor)}
    assert before
    with torch.inference_mode(under_inference_mode), memory_format_mode("channels_last"):
        with channels_last_models([anchor, anchor.model], "cpu") as converted:  # a module twice: once
            assert converted
            assert all(t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
                       for t in _four_dim(anchor))
    after = _four_dim(anchor)
    assert all(t.is_contiguous() for t in after)
    assert {id(t) for t in after} == set(before)  # the same tensors: an optimizer holding them still works
    assert all(torch.equal(t, before[id(t)]) for t in after)
    assert not any(t.is_inference() for t in after)  # the anchor still trains after an inference stage
    with memory_format_mode("contiguous"), channels_last_models([anchor], "cpu") as converted:
        assert not converted and all(t.is_contiguous() for t in _four_dim(anchor))


@pytest.mark.parametrize("spec", ["cifar-resnet:8?pretrained=false&seed=3", "cifar-zoo:googlenet?pretrained=false",
                                  "cifar-zoo:densenet?pretrained=false", "cifar-zoo:resnet-preact?pretrained=false"])
def test_channels_last_logits_equal_contiguous_ones(spec):
    anchor = load_anchor(spec).eval()
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        plain = anchor(x)
        with memory_format_mode("channels_last"), channels_last_models([anchor], "cpu"):
            fast = anchor(x)
            pooled = [anchor.pool(h, k) for k, h in list(anchor.block_outputs(x))[:-1]]
        pooled_plain = [anchor.pool(h, k) for k, h in list(anchor.block_outputs(x))[:-1]]
    torch.testing.assert_close(fast, plain, **TOL)
    for a, b in zip(pooled, pooled_plain):
        torch.testing.assert_close(a, b, **TOL)



def test_finetuning_channels_last_gives_the_contiguous_curve_weights_and_logits(tmp_path):
    a, b = load_anchor("cifar-resnet:8?pretrained=false&seed=1"), load_anchor("cifar-resnet:14?pretrained=false&seed=2")
    net = StitchedSupernet([a, b], [(a.name, b.name, 1, 2), (a.name, b.name, 2, 4)])
    net.init_stitches(torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    settings = FinetuneSettings(steps=4, batch_size=8, checkpoint_every=2, lr=1e-3)
    plain, fast = copy.deepcopy(net), copy.deepcopy(net)
    with memory_format_mode("contiguous"):
        finetune(plain, RandomImages(), settings, tmp_path / "plain", progress=False)
    with memory_format_mode("channels_last"):
        finetune(fast, RandomImages(), settings, tmp_path / "fast", progress=False)
    curves = [read_curve(tmp_path / side / TRAINING_CSV) for side in ("plain", "fast")]
    assert curves[0]["step"] == curves[1]["step"] == [0, 1, 2, 3]
    for p, f in zip(curves[0]["loss"], curves[1]["loss"]):
        assert abs(p - f) <= 1e-5, curves
    moved = off = total = 0
    for (k, v), w in zip(plain.state_dict().items(), fast.state_dict().values()):
        assert w.is_contiguous(), k  # contiguous again after the stage: safetensors and digests as before
        if v.is_floating_point():
            # AdamW's step is the gradient over its own scale: rounding in a gradient near zero can move a
            # weight by up to the learning rate, so a few weights may differ beyond rounding, not many
            off += int(((w - v).abs() > TOL["atol"] + TOL["rtol"] * v.abs()).sum())
            total += v.numel()
            moved += not torch.equal(v, net.state_dict()[k])
    assert moved > 10 and off <= total // 1000, (moved, off, total)  # the steps did train
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        for k in range(len(net)):
            torch.testing.assert_close(fast(x, k), plain(x, k), **TOL)


def test_an_adapted_anchor_saves_and_loads_after_channels_last_training(tmp_path):
    from klas.stitching.adapt import adapt_anchor, apply_adapted

    anchor = load_anchor("cifar-resnet:8?pretrained=false&seed=4")
    with memory_format_mode("channels_last"):
        adapt_anchor(anchor, RandomImages(16), FinetuneSettings(steps=2, batch_size=8), tmp_path, progress=False)
    again = apply_adapted(load_anchor("cifar-resnet:8?pretrained=false&seed=4"), tmp_path)
    assert again.weights_digest() == anchor.weights_digest()
