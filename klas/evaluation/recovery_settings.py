"""The settings of the recovery test: the run config's ``recovery:`` section and one test's settings.

`RecoverySection` declares the budget every configuration gets (a `TrainingBudget`, the same for
all, so that only the configuration differs) and how the picks are scored; `RecoverySettings` adds
the facts of one training pass (its seed, the number of test images). Each configuration's result
file records `RecoverySettings.fingerprint()`, derived from the declarations: the settings its
result depends on (the scoring settings do not enter). Torch-free (the config and the CLI import it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from klas.sections import TrainingBudget, setting

__all__ = ["RecoverySection", "RecoverySettings"]


def _recovery_method_names() -> tuple[str, ...]:
    from klas.selection.methods import recovery_method_names

    return recovery_method_names()


@dataclass(frozen=True)
class RecoverySection(TrainingBudget):
    """klas recovery: every configuration of one pair trained alone (the stitching layer); each
    configuration's result file carries its own fingerprint (klas.evaluation.recovery)."""
    NAME: ClassVar[str] = "recovery"
    STAGE: ClassVar[str | None] = "recovery"  # not a stage of `klas run`: enters no stage fingerprint
    steps: int = setting(200, "steps per configuration (stitching layer alone)", low=0, high=10**7)
    lr: float = setting(1e-3, "learning rate", low=0.0, high=100.0, open_low=True)
    weight_decay: float = setting(0.0, "weight decay", low=0.0, high=100.0)
    warmup_fraction: float = setting(0.0, "part of the steps spent warming up", low=0.0, high=1.0, when_moved=True)
    calibration_images: int = setting(128, "images for the least-squares init", low=1, high=10**6)
    delta: float = setting(0.5, "points: the good set's tolerance", low=0.0, high=100.0, stage=None)
    repeats: int = setting(1, "trainings of every configuration, each with its own seed (calibration draw, "
                              "batch order); from 2 the report measures the seed-to-seed noise", low=1, high=100,
                           stage=None)
    delta_from_noise: bool = setting(False, "set δ from the measured noise (its delta_95; needs repeats >= 2) "
                                            "instead of delta", stage=None)
    random_seeds: int = setting(20, "draws of the random method", low=1, high=10**4, stage=None)
    test_limit: int | None = setting(None, "a seeded subset of the test set", low=1, high=10**9, stage=None)
    methods: list[str] = setting(["klas", "kl-ls", "snnet-nearest", "cka", "mse", "ce", "dm", "random"],
                                 "methods scored against the good set", choices=_recovery_method_names, stage=None)


@dataclass(frozen=True)
class RecoverySettings(RecoverySection):
    """One training pass of the recovery test: the section plus its seed (calibration draw, batch
    order) and the number of test images its results are counted on (recorded with them)."""
    seed: int = setting(0, "seed of the calibration draw and the batch order", low=0, high=2**63 - 1)
    test_images: int = setting(0, "test images the results are counted on", low=0, high=10**9)

    def fingerprint(self) -> dict:
        """What a configuration's result depends on (the scoring settings do not enter)."""
        return self.result_values()
