"""The settings sections: each setting declared once (default, range, help), checked wherever a
section is built (config file, command line, Python keywords), and the fingerprints that resumed
trainings and stored results carry derived from those declarations, equal to the ones earlier
versions wrote (so existing checkpoints and recovery results stay usable)."""
from __future__ import annotations

import dataclasses

import pytest

from klas.evaluation.recovery import RecoverySettings
from klas.pipeline.config import validate_config
from klas.stitching.finetune import FinetuneSettings

RAW = {"anchors": ["cifar-resnet:20", "cifar-resnet:56"], "data": {"root": "x"}, "adapt": {"steps": 400, "lr": 2e-4},
       "finetune": {"steps": 1500, "num_workers": 1}}


def test_training_fingerprints_equal_the_ones_earlier_versions_recorded():
    # recorded from FinetuneSettings / RecoverySettings before they became the config sections
    assert FinetuneSettings().fingerprint() == "dc09696602486820"
    assert FinetuneSettings(steps=400, batch_size=64, lr=2e-4, weight_decay=0.05, warmup_fraction=0.05, seed=3,
                            num_workers=2, checkpoint_every=7, device="cpu").fingerprint() == "cb0fb32191c5a346"
    assert FinetuneSettings(steps=1500, stitches_only=True, freeze_bn=False, seed=1).fingerprint() == "72bd16970cb4e1c3"
    cfg = validate_config(RAW)
    assert cfg.adapt.settings(seed=0, device="cpu", num_workers=1).fingerprint() == "13761ae6d885615c"
    assert cfg.finetune.settings(seed=2, device="cpu", stitches_only=True).fingerprint() == "891bda64fd33cc96"
    assert cfg.finetune.settings(seed=2, device="cpu").fingerprint() == "1b3465fc6895c6f1"
    assert RecoverySettings().fingerprint() == {"steps": 200, "batch_size": 64, "lr": 0.001, "weight_decay": 0.0,
                                                "calibration_images": 128, "seed": 0, "test_images": 0}
    assert RecoverySettings(steps=100, seed=2, test_images=5000, delta=0.3, random_seeds=5).fingerprint() == {
        "steps": 100, "batch_size": 64, "lr": 0.001, "weight_decay": 0.0, "calibration_images": 128, "seed": 2,
        "test_images": 5000}


def _field(cls, name):
    return {f.name: f for f in dataclasses.fields(cls)}[name]


def test_each_setting_is_declared_once_and_shared_by_the_section_and_the_stage_settings():
    """The stage's settings object and the config section hold the same declaration (default, range,
    help) of every setting they share, not a copy of it."""
    from klas.evaluation.recovery_settings import RecoverySection
    from klas.selection.options import SelectOptions, SelectSection
    from klas.stitching.settings import FinetuneSection

    for stage_type, section in ((FinetuneSettings, FinetuneSection), (RecoverySettings, RecoverySection),
                                (SelectOptions, SelectSection)):
        shared = {f.name for f in dataclasses.fields(section)} & {f.name for f in dataclasses.fields(stage_type)}
        assert len(shared) >= 5
        for name in shared:
            assert _field(stage_type, name).metadata is _field(section, name).metadata, (stage_type, name)
            assert _field(stage_type, name).default == _field(section, name).default


@pytest.mark.parametrize("build, where", [
    (lambda: FinetuneSettings(lr=-1.0), "finetune.lr"),
    (lambda: FinetuneSettings(steps=-2), "finetune.steps"),
    (lambda: FinetuneSettings(warmup_fraction=float("nan")), "finetune.warmup_fraction"),
    (lambda: FinetuneSettings(checkpoint_every=0), "finetune.checkpoint_every"),
    (lambda: RecoverySettings(batch_size=0), "recovery.batch_size"),
    (lambda: RecoverySettings(methods=["no-such-method"]), "recovery.methods"),
    (lambda: _select_options(tau=0.0), "select.tau"),
    (lambda: _select_options(buckets="many"), "select.buckets"),
    (lambda: _select_options(budget_max_error_ratio=0.5), "select.budget_max_error_ratio"),
])
def test_a_section_built_from_python_keywords_is_checked_as_a_config_is(build, where):
    with pytest.raises(ValueError, match=where.replace(".", r"\.")):
        build()


def _select_options(**kw):
    from klas.selection.options import SelectOptions

    return SelectOptions(**kw)


def test_the_same_bad_value_says_the_same_in_a_config_and_in_python():
    from klas.errors import ConfigError

    with pytest.raises(ConfigError) as from_config:
        validate_config({**RAW, "finetune": {"lr": 0}})
    with pytest.raises(ConfigError) as from_python:
        FinetuneSettings(lr=0)
    assert str(from_config.value) == str(from_python.value)


def test_a_setting_added_later_enters_the_fingerprint_only_when_moved():
    """recovery.warmup_fraction (0 = the recovery test's schedule before the setting existed): results
    stored without it stay usable; moved, it makes a new result."""
    assert "warmup_fraction" not in RecoverySettings().fingerprint()
    assert RecoverySettings(warmup_fraction=0.1).fingerprint()["warmup_fraction"] == 0.1


def test_one_schedule_for_every_training():
    """warm-up, then cosine to 0; with no warm-up (the recovery test) the cosine over the steps."""
    import math

    from klas.sections import TrainingBudget

    b = TrainingBudget(steps=100, warmup_fraction=0.1)
    assert [b.lr_factor(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert b.lr_factor(10) == pytest.approx(1.0) and b.lr_factor(100) == pytest.approx(0.0, abs=1e-12)
    assert b.lr_factor(55) == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    r = RecoverySettings(steps=37)
    assert [r.lr_factor(s) for s in range(40)] == pytest.approx(
        [0.5 * (1 + math.cos(math.pi * min(s / 37, 1.0))) for s in range(40)])
    import torch

    opt, _ = r.optimizer([torch.nn.Parameter(torch.zeros(2))])
    assert opt.param_groups[0]["lr"] == pytest.approx(r.lr) and opt.param_groups[0]["weight_decay"] == r.weight_decay


def test_the_run_builds_each_stage_settings_from_its_section():
    cfg = validate_config({**RAW, "recovery": {"steps": 50, "lr": 0.002, "delta": 0.3}})
    r = RecoverySettings.sharing(cfg.recovery, seed=4, test_images=100)
    assert (r.steps, r.lr, r.delta, r.seed, r.test_images, r.methods) == (50, 0.002, 0.3, 4, 100, cfg.recovery.methods)
    f = cfg.finetune.settings(seed=1, device="cpu", stitches_only=True)
    assert (f.steps, f.num_workers, f.stitches_only, f.freeze_bn) == (1500, 1, True, True)
    a = cfg.adapt.settings(seed=1, device="cpu")
    assert (a.steps, a.lr, a.warmup_fraction) == (400, 2e-4, 0.05)
