"""The settings of selection: the run config's ``select:`` section and the options a method takes.

`SelectSection` declares every selection setting once (KLAS's bucketing, SN-Net's stage skips,
klas-budget's own settings); `SelectOptions` is the same section plus what a method reads from the
run: the seed of the random method, the extraction output and probes the metric methods read, and
klas-budget's predictions folder and finetuning budget. Method names come from the registry that
owns them (klas.selection.methods). Torch-free (the config and the CLI import it).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from klas.limits import CHAIN_RULE_NAMES, FLOPS_RANGE_RULES, MAX_BUCKETS
from klas.sections import Section, setting

__all__ = ["SelectSection", "SelectOptions"]


def _method_names() -> tuple[str, ...]:
    from klas.selection.methods import method_names

    return method_names()


@dataclass(frozen=True)
class SelectSection(Section):
    """The run config's ``select:`` section."""
    NAME: ClassVar[str] = "select"
    STAGE: ClassVar[str | None] = "select"
    FINGERPRINT_BY_SETTING: ClassVar[bool] = True
    method: str = setting("klas", "the selection method of a single-method run", choices=_method_names, stage=None)
    compare: list[str] = setting([], "methods run with equal budgets into one report", choices=_method_names,
                                 stage=None)
    tau: float = setting(0.05, "tolerance: relative (τ_b = (1 + τ)·min Γ) or absolute", low=0.0, high=1e6,
                         open_low=True)
    tau_mode: str = setting("relative", "how τ is applied", choices=("relative", "absolute"))
    buckets: int | str = setting("auto", "FLOPs buckets per anchor pair, or auto (coverage rule)", low=1,
                                 high=MAX_BUCKETS, choices=("auto",))
    chain_rule: str = setting("minimax", "anchor chain rule", choices=CHAIN_RULE_NAMES)
    flops_range: str = setting("exclude", "configurations outside the pair's FLOPs range: not candidates "
                                          "(exclude), or in the end buckets", choices=FLOPS_RANGE_RULES)
    snnet_stage_skips: bool = setting(True, "SN-Net baseline: skip the stages SN-Net's code skips")
    # klas-budget's own settings: they enter that method's fingerprints alone (run.method_settings)
    budget_min_route_steps: int = setting(100, "klas-budget: the fewest finetuning steps a route should get (the "
                                               "recovery test's per-stitch budget)", low=1, high=10**9, stage=None)
    budget_max_error_ratio: float = setting(2.0, "klas-budget: a stitch gets room only if its predicted D_v error "
                                                 "is at most this many times the cheaper anchor's", low=1.0,
                                            high=1e6, stage=None)
    predict_images: int = setting(1000, "klas-budget: D_v images each least-squares stitch is counted on (0: all)",
                                  low=0, high=10**9, stage=None)


@dataclass(frozen=True)
class SelectOptions(SelectSection):
    """Everything a method may use: the `select` settings, the random method's seed, the extraction
    output (`cache`) and probes (default cache/probes) the metric methods read, and klas-budget's
    predictions folder (klas.predictions) and finetuning budget (`total_steps`, a run's finetune.steps)."""
    seed: int = setting(0, "seed of the random method", low=0, high=2**63 - 1, stage=None)
    total_steps: int | None = setting(None, "the supernet's finetuning steps (klas-budget)", low=0, high=10**9,
                                      stage=None)
    cache: Path | None = None
    probes: Path | None = None
    predictions: Path | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.probes is None and self.cache is not None:
            object.__setattr__(self, "probes", Path(self.cache) / "probes")

    @classmethod
    def from_config(cls, section: SelectSection, **run) -> "SelectOptions":
        """The options of a `select` section (a run config's, or one the command line filled) with the
        run's `seed`, `cache`, `probes`, `predictions` and `total_steps`."""
        return cls.sharing(section, **run)

    def klas_options(self) -> dict:
        """The keyword arguments of klas.selection.select.select."""
        return {"tau": self.tau, "tau_mode": self.tau_mode, "buckets": self.buckets, "chain_rule": self.chain_rule,
                "flops_range": self.flops_range}

    def pair_options(self) -> dict:
        """The keyword arguments of klas.selection.select.select_pair (one anchor pair: no chain)."""
        return {"tau": self.tau, "tau_mode": self.tau_mode, "buckets": self.buckets, "flops_range": self.flops_range}
