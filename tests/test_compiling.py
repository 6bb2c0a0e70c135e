"""The `compile` setting: when parts are compiled, compiled values against eager ones, the eager fallback.

Compiled and eager forwards differ only by float rounding (inductor fuses and reorders): logits are
compared within 1e-4 absolute and relative (they are O(1)), gradients within 1e-4.
"""
from __future__ import annotations

import pytest
import torch

from klas.anchors import load_anchor
from klas.compiling import (AUTO_MIN_IMAGE_PASSES, compile_mode, compiled_parts, current_mode, should_compile,
                            supernet_parts)
from klas.errors import UsageError
from klas.evaluation.evaluate import evaluate_routes
from klas.stitching.stitch import StitchedSupernet

TOL = {"atol": 1e-4, "rtol": 1e-4}


@pytest.fixture(scope="module")
def supernet():
    """Two ResNet-8s (three blocks each, one per stage: few graphs to compile) and two stitches."""
    f = load_anchor("cifar-resnet:8?pretrained=false&seed=1")
    g = load_anchor("cifar-resnet:8?pretrained=false&seed=2")
    g.name = "other-resnet8"
    net = StitchedSupernet([f, g], [(f.name, g.name, 1, 1), (f.name, g.name, 2, 2)])
    net.init_stitches(torch.rand(32, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    return net.eval()


def test_the_modes_decide_per_stage(monkeypatch):
    monkeypatch.delenv("KLAS_COMPILE", raising=False)
    assert current_mode() == "auto"
    big, small = AUTO_MIN_IMAGE_PASSES, AUTO_MIN_IMAGE_PASSES - 1
    assert should_compile(training=False, image_passes=big) and not should_compile(training=False, image_passes=small)
    assert not should_compile(training=True, image_passes=10 * big)  # auto: training stays eager
    with compile_mode("on"):
        assert should_compile(training=True, image_passes=1) and should_compile(training=False, image_passes=1)
        with compile_mode("off"):  # the innermost wins
            assert not should_compile(training=False, image_passes=10 * big)
        assert current_mode() == "on"
    monkeypatch.setenv("KLAS_COMPILE", "off")
    assert not should_compile(training=False, image_passes=10 * big)
    monkeypatch.setenv("KLAS_COMPILE", "sometimes")
    with pytest.raises(UsageError, match="KLAS_COMPILE: compile mode 'sometimes' is not one of auto, on, off"):
        current_mode()
    with pytest.raises(UsageError, match="not one of auto, on, off"):
        with compile_mode("yes"):
            pass


def test_the_config_takes_the_setting_and_refuses_others():
    from klas.errors import ConfigError
    from klas.pipeline.config import validate_config

    base = {"anchors": ["cifar-resnet:8?pretrained=false", "cifar-resnet:14?pretrained=false"], "data": {"root": "x"}}
    assert validate_config(base).compile == "auto"
    assert validate_config({**base, "compile": "off"}).compile == "off"
    # a bare off / on in YAML (a config file or --set compile=off) arrives as false / true
    assert validate_config({**base, "compile": False}).compile == "off"
    assert validate_config({**base, "compile": True}).compile == "on"
    with pytest.raises(ConfigError, match="compile"):
        validate_config({**base, "compile": "fast"})


def test_compiled_routes_give_the_eager_logits_and_counts(supernet):
    x = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # one batch shape: one compile per part
    labels = torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        eager = supernet.forward_many(x)
        with compiled_parts(supernet_parts(supernet)):
            assert all("forward" in vars(m) for m in supernet_parts(supernet))
            compiled = supernet.forward_many(x)
    assert all("forward" not in vars(m) for m in supernet_parts(supernet))  # eager again after the block
    assert set(eager) == set(compiled) == set(range(len(supernet)))
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k], **TOL)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, labels), batch_size=32)
    with compile_mode("off"):
        plain = evaluate_routes(supernet, loader, progress=False)
    with compile_mode("on"):
        fast = evaluate_routes(supernet, loader, progress=False)
    margins = [torch.topk(z, 2).values for z in eager.values()]
    if min(float((m[:, 0] - m[:, 1]).min()) for m in margins) > 1e-3:  # no near-tie an ulp could flip
        assert [r.correct for r in fast] == [r.correct for r in plain]


def test_a_compiled_training_step_gives_the_eager_loss_and_gradients(supernet):
    import copy

    net = copy.deepcopy(supernet)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    y = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(4))
    k = len(net) - 2  # the route (1, 1): f's first block, a stitching layer, g's last two blocks

    def step():
        net.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(x, k), y)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    eager_loss, eager_grads = step()
    with compiled_parts([net.stitches[0], net.anchor("other-resnet8").blocks[-1]]):  # two parts: a short compile
        loss, grads = step()
    torch.testing.assert_close(loss, eager_loss, **TOL)
    assert set(grads) == set(eager_grads) and grads
    for n in grads:
        torch.testing.assert_close(grads[n], eager_grads[n], **TOL, msg=n)


def test_a_part_that_cannot_be_compiled_runs_eagerly_and_says_so(supernet, monkeypatch):
    def no_compiler(fn, **_):
        def fails(*args, **kwargs):
            raise RuntimeError("InductorError: no working C++ compiler found\nmore detail")
        return fails

    monkeypatch.setattr(torch, "compile", no_compiler)
    lines = []
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        eager = supernet.forward_many(x)
        with compiled_parts(supernet_parts(supernet), log=lines.append):
            out = supernet.forward_many(x)
            out_again = supernet.forward_many(x)
    for k in eager:
        assert torch.equal(out[k], eager[k]) and torch.equal(out_again[k], eager[k])
    parts = len(set(map(id, supernet_parts(supernet))))
    assert len(lines) == parts  # one line per part, the first time only
    assert all(line.startswith("[compile] ") and "cannot be compiled (RuntimeError: InductorError: no working C++ "
               "compiler found)" in line and line.endswith("it runs eagerly") for line in lines), lines
