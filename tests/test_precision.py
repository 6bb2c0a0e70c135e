"""The `precision` setting of a training's steps: the dtype per device, bfloat16 steps that train like
float32 ones within bfloat16's rounding, and fingerprints that keep results of one precision from
being reused as another's while results stored before the setting existed keep theirs.

bfloat16 keeps 8 significant bits (a relative rounding of 2^-8 ≈ 0.4%): a first loss near 2.3 is
compared with float32's within 0.05, and the losses of a few steps within 0.1.
"""
from __future__ import annotations

import copy

import pytest
import torch

from klas.anchors import load_anchor
from klas.errors import KlasError
from klas.precision import training_autocast, training_dtype
from klas.stitching.finetune import TRAINING_CSV, FinetuneSettings, finetune
from klas.stitching.stitch import StitchedSupernet
from klas.training_log import read_curve

from helpers import RandomImages


def test_the_dtype_per_device_and_precision():
    assert training_dtype("auto", "cpu") == torch.float32 and training_dtype("auto", "cuda") == torch.bfloat16
    assert training_dtype("float32", torch.device("cuda", 0)) == torch.float32
    assert training_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="precision 'half' is not one of auto, float32, bfloat16"):
        training_dtype("half", "cpu")
    conv = torch.nn.Conv2d(3, 4, 1)
    x = torch.randn(2, 3, 4, 4)
    with training_autocast("bfloat16", "cpu"):
        assert conv(x).dtype == torch.bfloat16
    with training_autocast("auto", "cpu"):
        assert conv(x).dtype == torch.float32


def test_the_config_takes_the_setting_in_every_training_and_refuses_others():
    from klas.errors import ConfigError
    from klas.pipeline.config import validate_config

    base = {"anchors": ["cifar-resnet:8?pretrained=false", "cifar-resnet:14?pretrained=false"], "data": {"root": "x"}}
    cfg = validate_config(base)
    assert cfg.adapt.precision == cfg.finetune.precision == cfg.recovery.precision == "auto"
    moved = validate_config({**base, "finetune": {"precision": "bfloat16"}, "recovery": {"precision": "float32"}})
    assert moved.finetune.precision == "bfloat16" and moved.recovery.precision == "float32"
    with pytest.raises(ConfigError, match="finetune.precision"):
        validate_config({**base, "finetune": {"precision": "float16"}})


def test_a_precision_at_its_default_leaves_every_fingerprint_as_before():
    """Fingerprints of a config written before the setting existed (recorded then): its stored stages,
    checkpoints and recovery results stay usable; a moved precision changes them."""
    from klas.evaluation.recovery_settings import RecoverySettings
    from klas.pipeline.config import STAGES, stage_fingerprint, validate_config

    base = {"anchors": ["cifar-resnet:8?pretrained=false", "cifar-resnet:14?pretrained=false"], "data": {"root": "x"},
            "adapt": {"steps": 10}}
    before = {"adapt": "4e3b5c0b43b4ac0e", "extract": "31c7d23f6540ba4c", "probes": "02e9de391abde61d",
              "score": "a0443b25cd97b62e", "select": "46e0315d0413a0dd", "finetune": "8aa1056ba3f0e91b",
              "evaluate": "93566dc349bfcdb1"}
    cfg = validate_config(base)
    assert {s: stage_fingerprint(cfg, s) for s in STAGES} == before
    for section, first in (("adapt", "adapt"), ("finetune", "finetune")):
        moved = validate_config({**base, section: {**base.get(section, {}), "precision": "bfloat16"}})
        changed = {s for s in STAGES if stage_fingerprint(moved, s) != before[s]}
        assert changed == set(STAGES[STAGES.index(first):]), (section, changed)
    assert "precision" not in FinetuneSettings().fingerprint() and "precision" not in RecoverySettings().fingerprint()
    assert FinetuneSettings(precision="bfloat16").fingerprint() != FinetuneSettings().fingerprint()
    assert RecoverySettings(precision="bfloat16").fingerprint()["precision"] == "bfloat16"


def _supernet() -> StitchedSupernet:
    a, b = load_anchor("cifar-resnet:8?pretrained=false&seed=1"), load_anchor("cifar-resnet:14?pretrained=false&seed=2")
    net = StitchedSupernet([a, b], [(a.name, b.name, 1, 2), (a.name, b.name, 2, 4)])
    net.init_stitches(torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    return net


def test_bfloat16_steps_train_like_float32_ones_and_keep_float32_weights(tmp_path):
    net = _supernet()
    plain, low = copy.deepcopy(net), copy.deepcopy(net)
    settings = FinetuneSettings(steps=4, batch_size=8, checkpoint_every=2, lr=1e-3)
    finetune(plain, RandomImages(), settings, tmp_path / "plain", progress=False)
    finetune(low, RandomImages(), settings.replace(precision="bfloat16"), tmp_path / "low", progress=False)
    curves = [read_curve(tmp_path / side / TRAINING_CSV) for side in ("plain", "low")]
    assert abs(curves[0]["loss"][0] - curves[1]["loss"][0]) <= 0.05, curves
    assert all(abs(p - q) <= 0.1 for p, q in zip(curves[0]["loss"], curves[1]["loss"])), curves
    assert curves[0]["loss"] != curves[1]["loss"]  # the steps did run in another precision
    assert all(p.dtype == torch.float32 for p in low.parameters())
    moved = sum(not torch.equal(p, q) for p, q in zip(low.parameters(), net.parameters()))
    assert moved > 10


def test_a_checkpoint_of_one_precision_is_not_resumed_as_another(tmp_path):
    settings = FinetuneSettings(steps=2, batch_size=8)
    finetune(_supernet(), RandomImages(), settings, tmp_path, progress=False)
    with pytest.raises(KlasError, match="other routes or finetune settings"):
        finetune(_supernet(), RandomImages(), settings.replace(precision="bfloat16"), tmp_path, progress=False)


def test_recovery_steps_in_bfloat16_train_like_float32_and_are_not_reused_as_float32(tmp_path):
    from klas.evaluation.recovery import train_configurations
    from klas.evaluation.recovery_settings import RecoverySettings

    f = load_anchor("cifar-resnet:8?pretrained=false&seed=1")
    g = load_anchor("cifar-resnet:14?pretrained=false&seed=2")
    class Named(RandomImages):  # says which samples it holds, so that stored results can be reused
        def samples_digest(self):
            return f"random-{len(self)}"

    configs = [(1, 2), (2, 4)]
    train, test = Named(24), Named(10)
    results = {}
    for precision in ("float32", "bfloat16"):
        settings = RecoverySettings(steps=3, batch_size=4, calibration_images=8, precision=precision)
        results[precision] = train_configurations(f, g, configs, train, test, settings, tmp_path / "out",
                                                  progress=False, eval_batch=5, log=lambda *_: None)
    for c in configs:
        plain, low = results["float32"][c], results["bfloat16"][c]
        assert plain["correct_init"] == low["correct_init"]  # the least-squares start is counted in float32
        assert low["final_loss"] != plain["final_loss"]  # trained again, not the float32 result reused
        assert abs(low["final_loss"] - plain["final_loss"]) <= 0.1, (plain, low)
        assert (low["inputs"]["settings"]["precision"], plain["inputs"]["settings"]["precision"]) == ("bfloat16", "float32")
