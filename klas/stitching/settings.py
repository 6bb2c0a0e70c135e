"""The settings of the stitching stages: anchor adaptation and supernet finetuning.

`AdaptSection` and `FinetuneSection` are the run config's ``adapt:`` and ``finetune:`` sections;
`FinetuneSettings` is what klas.stitching.finetune.finetune takes: the same declared training
settings (`SupernetTraining`) plus the facts of one training (seed, device, protocol). A
finetuning checkpoint carries `FinetuneSettings.fingerprint()`, derived from the declarations.
Torch-free (the config and the CLI import it).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import ClassVar

from klas.sections import TrainingBudget, setting

__all__ = ["SupernetTraining", "FinetuneSettings", "FinetuneSection", "AdaptSection", "PROTOCOLS"]

# finetuning protocols: SN-Net's (anchors and stitching layers train), or the stitching layers alone
# (anchors frozen and identical in every supernet, so that only the selection differs)
PROTOCOLS = {"snnet": False, "stitches-only": True}


@dataclass(frozen=True)
class SupernetTraining(TrainingBudget):
    """A training through klas.stitching.finetune (a supernet, or one anchor being adapted)."""
    NAME: ClassVar[str] = "finetune"
    STAGE: ClassVar[str | None] = "finetune"
    steps: int = setting(1000, "supernet steps (the same budget for every method)", low=0, high=10**9)
    freeze_bn: bool = setting(True, "keep the anchors' BatchNorm statistics")
    checkpoint_every: int = setting(100, "steps between checkpoints", low=1, high=10**9, stage=None)
    num_workers: int = setting(0, "DataLoader worker processes", low=0, high=256, stage=None)


@dataclass(frozen=True)
class FinetuneSettings(SupernetTraining):
    """One training's settings: the declared budget, plus its seed (route schedule and batch order),
    device, and protocol (`stitches_only`: the stitching layers alone train, anchors frozen)."""
    seed: int = setting(0, "seed of the route schedule and the batch order", low=0, high=2**63 - 1)
    stitches_only: bool = setting(False, "train only the stitching layers (anchors frozen, in eval mode)")
    device: str = setting("cpu", "torch device", stage=None)

    def fingerprint(self) -> str:
        """What a checkpoint of this training must have been written with (every result-changing setting)."""
        return hashlib.sha256(json.dumps(self.result_values(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class FinetuneSection(SupernetTraining):
    """The run config's ``finetune:`` section: every method's supernet gets this budget."""
    protocols: list[str] = setting(["snnet", "stitches-only"], "finetuning protocols of every comparison",
                                   choices=tuple(PROTOCOLS), stage=None)
    anchors: str = setting("chain", "anchors that are routes: those on the chain, or all", choices=("chain", "all"))
    calibration_images: int = setting(128, "images for the stitching layers' least-squares init", low=1,
                                      high=10**6)

    def settings(self, *, seed: int, device: str, stitches_only: bool = False) -> FinetuneSettings:
        """The FinetuneSettings of a supernet's finetuning under one protocol."""
        return FinetuneSettings.sharing(self, seed=seed, device=device, stitches_only=stitches_only)


@dataclass(frozen=True)
class AdaptSection(TrainingBudget):
    """Anchor adaptation before extraction (0 steps: off): each anchor finetuned alone on D_t."""
    NAME: ClassVar[str] = "adapt"
    STAGE: ClassVar[str | None] = "adapt"
    steps: int = setting(0, "steps of adaptation per anchor (0: off)", low=0, high=10**8)

    def settings(self, *, seed: int, device: str, num_workers: int = 0) -> FinetuneSettings:
        """The FinetuneSettings of one anchor's adaptation (BatchNorm statistics frozen, as in finetuning)."""
        return FinetuneSettings.sharing(self, seed=seed, device=device, num_workers=num_workers)
