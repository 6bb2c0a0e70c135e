"""The selection methods, each registered once: its name, its help, what it reads and how it picks.

The CLI (`klas select --method`, its choices and help), the run config (`select.method`,
`select.compare`, `recovery.methods`), `klas run` and the recovery test all read this registry; a
method added here reaches every one of them.

    sel = run_method("klas", scores, SelectOptions(tau=0.05, cache=cache_dir))
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from klas.errors import UsageError
from klas.selection.options import SelectOptions

__all__ = ["SelectOptions", "Method", "register_method", "register_gamma_method", "method_names", "get_method",
           "run_method", "recovery_method_names", "methods_needing_predictions"]


@dataclass(frozen=True)
class Method:
    """One selection method.

    select: (scores, options) -> klas.selection.select.Selection over the whole anchor family.
    pair: (scores, source, target, options) -> {"picks": [(i, j)], "scores": {(i, j): score} or None},
        the method on one anchor pair alone, as the recovery test asks it; None when the method is
        about the chain and has no one-pair form.
    drawn_in_recovery: the recovery test draws this method's picks itself (random: seeded sets of
        KLAS's size among the configurations it evaluated).
    needs_predictions: the method reads each hop's predicted stitch accuracies (klas.predictions),
        which the pipeline computes before it selects.
    """
    name: str
    help: str
    select: Callable = field(repr=False)
    pair: Callable | None = field(default=None, repr=False)
    drawn_in_recovery: bool = False
    needs_predictions: bool = False


_REGISTRY: dict[str, Method] = {}


def _add(method: Method) -> None:
    if method.name in _REGISTRY:
        raise ValueError(f"selection method {method.name!r} is registered twice")
    _REGISTRY[method.name] = method


def register_method(name: str, help: str, *, pair: Callable | None = None, drawn_in_recovery: bool = False):
    """Decorator: registers `fn(scores, options) -> Selection` as selection method `name`, with its
    one-pair form `pair` (see Method)."""
    def wrap(fn):
        _add(Method(name, help, fn, pair, drawn_in_recovery))
        return fn
    return wrap


def method_names() -> tuple[str, ...]:
    """Every registered method, in registration order."""
    return tuple(_REGISTRY)


def methods_needing_predictions(names) -> list[str]:
    """Those of `names` that read predicted stitch accuracies."""
    return [n for n in names if get_method(n).needs_predictions]


def recovery_method_names() -> tuple[str, ...]:
    """The methods the recovery test can ask for one pair's picks."""
    return tuple(n for n, m in _REGISTRY.items() if m.pair is not None or m.drawn_in_recovery)


def get_method(name: str) -> Method:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown selection method {name!r} (have {', '.join(_REGISTRY)})") from None


def run_method(name: str, scores, options: SelectOptions | None = None):
    """The selection of method `name` over `scores` (klas.scoring.scores.Scores)."""
    return get_method(name).select(scores, options or SelectOptions())


# ---- the methods -----------------------------------------------------------------------------------

def register_gamma_method(name: str, help: str, *, metric: str | None = None, capacity: bool = True) -> None:
    """Registers a method that runs KLAS's bucketing, τ and coverage with its own score, on the chain
    and on one pair from the same settings: Γ = Ω / Σ with Ω from Θ, or from the distance `metric`
    (klas.selection.metric_tables, read from the caches) in its place; `capacity=False` scores by Ω
    alone (the ablation of Σ)."""
    def numerators(scores, o: SelectOptions):
        if metric is None:
            return None
        if o.cache is None:  # checked here, so that the chain and the one-pair form both say it
            raise UsageError(f"method {name} reads the pooled features: give the extraction output (--cache)")
        from klas.selection.metric_tables import metric_numerators

        return metric_numerators(scores, metric, o.cache, o.probes)

    def on_chain(scores, o: SelectOptions):
        from klas.selection.select import select

        return select(scores, numerators=numerators(scores, o), method=name, capacity=capacity, **o.klas_options())

    def on_pair(scores, source: str, target: str, o: SelectOptions) -> dict:
        from klas.selection.select import select_pair

        num = numerators(scores, o)
        pair = select_pair(scores, source, target, numerator=None if num is None else num(source, target),
                           capacity=capacity, **o.pair_options())
        return {"picks": [(c.i, c.j) for c in pair.selected], "scores": {(c.i, c.j): c.gamma for c in pair.configs}}

    _add(Method(name, help, on_chain, on_pair))


register_gamma_method("klas", "KLAS: Γ = Θ-based Ω / Σ over the minimax anchor chain, buckets, τ and coverage")
register_gamma_method("klas-omega", "ablation of Γ's denominator: KLAS with each configuration scored by Ω alone "
                                    "(no capacity Σ), the same chain, buckets, τ and coverage", capacity=False)


@register_method("klas-snnet-chain", "KLAS's block selection on SN-Net's chain, every anchor to the next "
                                     "(the paper's Fig. 6 control)")
def _klas_snnet_chain(scores, o: SelectOptions):
    from klas.selection.select import select_on_snnet_chain

    return select_on_snnet_chain(scores, **o.klas_options())


def _snnet_nearest_pair(scores, source: str, target: str, o: SelectOptions) -> dict:
    from klas.selection.select import snnet_nearest_pairs

    picks = snnet_nearest_pairs(scores.anchor(source), scores.anchor(target), stage_skips=o.snnet_stage_skips)
    return {"picks": picks, "scores": None}


@register_method("snnet-nearest", "SN-Net's nearest stitching: neighbouring anchors, fixed configurations",
                 pair=_snnet_nearest_pair)
def _snnet_nearest(scores, o: SelectOptions):
    from klas.selection.select import select_snnet_nearest

    return select_snnet_nearest(scores, stage_skips=o.snnet_stage_skips)


for _name, _help in (("cka", "Γ with 1 − linear CKA in the numerator"),
                     ("mse", "Γ with the least-squares stitch error in the numerator"),
                     ("ce", "Γ with the cross-entropy of the target probe in the numerator"),
                     ("dm", "Γ with the distance-matrix gap in the numerator"),
                     ("kl-ls", "Γ with Θ through a least-squares stitch in the numerator")):
    register_gamma_method(_name, _help + " (reads the caches)", metric=_name)


@register_method("klas-size-matched", "KLAS's Γ on KLAS's chain, the best-scored configurations of every bucket "
                                      "taken in turn until the set is as large as SN-Net's (set-size control)")
def _klas_size_matched(scores, o: SelectOptions):
    from klas.selection.select import select, select_snnet_nearest, size_matched

    snnet = select_snnet_nearest(scores, stage_skips=o.snnet_stage_skips)
    return size_matched(select(scores, **o.klas_options()), len(snnet.selected), method="klas-size-matched")


@register_method("random", "a seeded random set of KLAS's size on KLAS's chain (ablation)", drawn_in_recovery=True)
def _random(scores, o: SelectOptions):
    from klas.selection.select import select_random

    return select_random(scores, seed=o.seed, **o.klas_options())


def _budget_inputs(scores, o: SelectOptions, hops) -> dict:
    """Each hop's checked predictions from the options' folder (klas.predictions)."""
    from klas.predictions import prediction_path, read_predictions
    from klas.selection.budget import METHOD, hop_candidates

    if o.predictions is None or o.total_steps is None:
        raise UsageError(f"method {METHOD} needs predicted stitch accuracies and the finetuning budget: run it through "
                         "`klas run` or `klas recovery` (they predict first), or give --predictions and --steps")
    out = {}
    for f, g in hops:
        configs = [(c.i, c.j) for c in hop_candidates(scores, f, g, o.flops_range)]
        out[(f, g)] = read_predictions(prediction_path(o.predictions, f, g), configs, pair=(f, g))
    return out


def _budget_pair(scores, source: str, target: str, o: SelectOptions) -> dict:
    from klas.selection.budget import budget_pair, route_budget

    pred = _budget_inputs(scores, o, [(source, target)])[(source, target)]
    pair, _ = budget_pair(scores, source, target, pred, route_budget(o.total_steps, o.budget_min_route_steps, 2),
                          flops_range=o.flops_range, max_error_ratio=o.budget_max_error_ratio)
    return {"picks": [(c.i, c.j) for c in pair.selected],
            "scores": {c: -v for c, v in pred["configurations"].items()}}  # lower is better, as Γ


def _budget(scores, o: SelectOptions):
    from klas.selection.budget import select_budget
    from klas.selection.select import anchor_chain

    chain = anchor_chain(scores, o.chain_rule)
    preds = _budget_inputs(scores, o, list(zip(chain, chain[1:])))
    return select_budget(scores, preds, total_steps=o.total_steps, min_route_steps=o.budget_min_route_steps,
                         chain_rule=o.chain_rule, flops_range=o.flops_range, max_error_ratio=o.budget_max_error_ratio,
                         prediction_seconds=sum(p["seconds"] for p in preds.values()))


_add(Method("klas-budget", "beyond the paper: on KLAS's chain, the stitches predicted (least-squares top-1 on D_v) to "
                           "reach the accuracy-FLOPs frontier, as many as the finetuning budget trains well",
            _budget, _budget_pair, needs_predictions=True))
