"""The settings of probes and scoring: the run config's ``probes:`` and ``score:`` sections, whose
defaults `train_probes`, `score` and `score_sets` take as their own. Torch-free (the config and the CLI import it)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from klas.limits import BACKENDS, MAX_TEMPERATURE, MIN_TEMPERATURE
from klas.sections import Section, setting

__all__ = ["ProbesSection", "ScoreSection"]


def _theta_backends() -> tuple[str, ...]:
    return tuple(b for b in BACKENDS if b != "reference")  # the float64 oracle is for tests, not runs


@dataclass(frozen=True)
class ScoreSection(Section):
    """The run config's ``score:`` section."""
    NAME: ClassVar[str] = "score"
    STAGE: ClassVar[str | None] = "score"
    temperature: float = setting(1.0, "softmax temperature of Θ", low=MIN_TEMPERATURE, high=MAX_TEMPERATURE)
    floor: float = setting(1e-6, "floor on Σ in Γ = Ω / Σ", low=0.0, high=1e6, open_low=True)
    backend: str = setting("auto", "Θ backend", choices=_theta_backends)


@dataclass(frozen=True)
class ProbesSection(Section):
    """The run config's ``probes:`` section."""
    NAME: ClassVar[str] = "probes"
    STAGE: ClassVar[str | None] = "probes"
    epochs: int = setting(4, "passes over D_t", low=1, high=10**4)
    batch_size: int = setting(256, "rows per probe step", low=1, high=10**6)
    lr: float = setting(1e-2, "learning rate", low=0.0, high=100.0, open_low=True)
    weight_decay: float = setting(0.0, "weight decay", low=0.0, high=100.0)
    labels: str = setting("true", "dataset labels, or label-free: each anchor's own predictions",
                          choices=("true", "pseudo"))
    standardise: bool = setting(True, "train on features standardised on D_t (folded into the saved weights)")
