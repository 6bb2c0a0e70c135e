"""The selection methods, each registered once: its name, its help, what it reads and how it picks.

The CLI (`klas select --method`, its choices and help), the run config (`select.method`,
`select.compare`, `recovery.methods`), `klas run` and the recovery test all read this registry; a
method added here reaches every one of them.

    sel = run_method("klas", scores, SelectOptions(tau=0.05, cache=cache_dir))
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from klas.errors import UsageError

__all__ = ["SelectOptions", "Method", "register_method", "method_names", "get_method", "run_method",
           "recovery_method_names"]


@dataclass(frozen=True)
class SelectOptions:
    """Everything a method may use: KLAS's bucketing (tau, tau_mode, buckets, chain_rule,
    flops_range), SN-Net's stage skips, the random method's seed, and the extraction output and
    probes the metric methods read."""
    tau: float = 0.05
    tau_mode: str = "relative"
    buckets: int | str = "auto"
    chain_rule: str = "minimax"
    flops_range: str = "exclude"
    snnet_stage_skips: bool = True
    seed: int = 0
    cache: Path | None = None
    probes: Path | None = None

    @classmethod
    def from_config(cls, section, *, seed: int, cache: Path | None = None) -> "SelectOptions":
        """From a run config's `select` section (klas.pipeline.config.SelectSection)."""
        return cls(tau=section.tau, tau_mode=section.tau_mode, buckets=section.buckets, chain_rule=section.chain_rule,
                   flops_range=section.flops_range, snnet_stage_skips=section.snnet_stage_skips, seed=seed,
                   cache=cache, probes=None if cache is None else Path(cache) / "probes")

    def klas_options(self) -> dict:
        """The keyword arguments of klas.selection.select.select."""
        return {"tau": self.tau, "tau_mode": self.tau_mode, "buckets": self.buckets, "chain_rule": self.chain_rule,
                "flops_range": self.flops_range}

    def pair_options(self) -> dict:
        """The keyword arguments of klas.selection.select.select_pair (one anchor pair: no chain)."""
        return {"tau": self.tau, "tau_mode": self.tau_mode, "buckets": self.buckets, "flops_range": self.flops_range}


@dataclass(frozen=True)
class Method:
    """One selection method.

    select: (scores, options) -> klas.selection.select.Selection over the whole anchor family.
    metric: the distance a metric baseline puts in Γ's numerator in place of Θ (klas.selection.metric_tables);
        such a method reads the pooled features of the extraction output.
    pair_rule: how the recovery test asks it for one pair's picks: "gamma" (KLAS's bucketing, τ and
        coverage with its Γ), "snnet" (SN-Net's fixed configurations), "random", or None (the
        method is about the chain and has no one-pair form).
    capacity: False for a method whose score is Ω alone, without Γ's denominator Σ.
    """
    name: str
    help: str
    select: Callable = field(repr=False)
    metric: str | None = None
    pair_rule: str | None = None
    capacity: bool = True

    @property
    def reads_features(self) -> bool:
        return self.metric is not None


_REGISTRY: dict[str, Method] = {}


def register_method(name: str, help: str, *, metric: str | None = None, pair_rule: str | None = None,
                    capacity: bool = True):
    """Decorator: registers `fn(scores, options) -> Selection` as selection method `name`."""
    def wrap(fn):
        if name in _REGISTRY:
            raise ValueError(f"selection method {name!r} is registered twice")
        _REGISTRY[name] = Method(name, help, fn, metric, pair_rule, capacity)
        return fn
    return wrap


def method_names() -> tuple[str, ...]:
    """Every registered method, in registration order."""
    return tuple(_REGISTRY)


def recovery_method_names() -> tuple[str, ...]:
    """The methods the recovery test can ask for one pair's picks."""
    return tuple(n for n, m in _REGISTRY.items() if m.pair_rule is not None)


def get_method(name: str) -> Method:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown selection method {name!r} (have {', '.join(_REGISTRY)})") from None


def run_method(name: str, scores, options: SelectOptions | None = None):
    """The selection of method `name` over `scores` (klas.scoring.scores.Scores)."""
    method = get_method(name)
    options = options or SelectOptions()
    if method.reads_features and options.cache is None:
        raise UsageError(f"method {name} reads the pooled features: give the extraction output (--cache)")
    return method.select(scores, options)


# ---- the methods -----------------------------------------------------------------------------------

@register_method("klas", "KLAS: Γ = Θ-based Ω / Σ over the minimax anchor chain, buckets, τ and coverage",
                 pair_rule="gamma")
def _klas(scores, o: SelectOptions):
    from klas.selection.select import select

    return select(scores, **o.klas_options())


@register_method("klas-omega", "ablation of Γ's denominator: KLAS with each configuration scored by Ω alone "
                               "(no capacity Σ), the same chain, buckets, τ and coverage", pair_rule="gamma",
                 capacity=False)
def _klas_omega(scores, o: SelectOptions):
    from klas.selection.select import select

    return select(scores, method="klas-omega", capacity=False, **o.klas_options())


@register_method("klas-snnet-chain", "KLAS's block selection on SN-Net's chain, every anchor to the next "
                                     "(the paper's Fig. 6 control)")
def _klas_snnet_chain(scores, o: SelectOptions):
    from klas.selection.select import select_on_snnet_chain

    return select_on_snnet_chain(scores, **o.klas_options())


@register_method("snnet-nearest", "SN-Net's nearest stitching: neighbouring anchors, fixed configurations",
                 pair_rule="snnet")
def _snnet_nearest(scores, o: SelectOptions):
    from klas.selection.select import select_snnet_nearest

    return select_snnet_nearest(scores, stage_skips=o.snnet_stage_skips)


def _metric_method(metric: str):
    def run(scores, o: SelectOptions):
        from klas.selection.metric_tables import metric_numerators
        from klas.selection.select import select

        return select(scores, numerators=metric_numerators(scores, metric, o.cache, o.probes), method=metric,
                      **o.klas_options())
    return run


for _name, _help in (("cka", "Γ with 1 − linear CKA in the numerator"),
                     ("mse", "Γ with the least-squares stitch error in the numerator"),
                     ("ce", "Γ with the cross-entropy of the target probe in the numerator"),
                     ("dm", "Γ with the distance-matrix gap in the numerator"),
                     ("kl-ls", "Γ with Θ through a least-squares stitch in the numerator")):
    register_method(_name, _help + " (reads the caches)", metric=_name, pair_rule="gamma")(_metric_method(_name))


@register_method("klas-size-matched", "KLAS's Γ on KLAS's chain, the best-scored configurations of every bucket "
                                      "taken in turn until the set is as large as SN-Net's (set-size control)")
def _klas_size_matched(scores, o: SelectOptions):
    from klas.selection.select import select, select_snnet_nearest, size_matched

    snnet = select_snnet_nearest(scores, stage_skips=o.snnet_stage_skips)
    return size_matched(select(scores, **o.klas_options()), len(snnet.selected), method="klas-size-matched")


@register_method("random", "a seeded random set of KLAS's size on KLAS's chain (ablation)", pair_rule="random")
def _random(scores, o: SelectOptions):
    from klas.selection.select import select_random

    return select_random(scores, seed=o.seed, **o.klas_options())
