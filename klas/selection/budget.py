"""`klas-budget`: the stitches worth training for a given finetuning budget, chosen on predicted accuracy.

The rules, in order (docs/METHOD.md §8 gives the evidence for each):

1. Candidates: as KLAS's, every grid-valid configuration (i, j) of each hop of KLAS's anchor chain
   inside the hop's FLOPs range.
2. Prediction: each candidate's least-squares stitch's own top-1 on D_v (klas.evaluation.predict),
   the best predictor of finetuned accuracy the recovery test measured; the hop's anchors' top-1 on
   the same images beside it.
3. A hop whose cheaper anchor is more accurate on D_v than its costlier one, beyond the noise of
   the two counts (rule 4's 1.96 standard errors of the difference; when the count of images is
   not known, a costlier anchor not strictly more accurate), brings no stitch to the frontier:
   a stitch between two anchors ends at most near the better of them, and here the cheaper anchor
   is that one. The hop keeps no stitch, and says so. Within the noise rule 5 decides.
4. Dominance: a candidate predicted less accurate than a cheaper candidate of its hop, by more than
   the predictions' own noise (1.96 standard errors of the difference of two top-1s counted on the
   same number of D_v images), brings nothing to the frontier; at equal FLOPs only the best
   predicted stays. Within the noise both stay: which of them ends higher is not known yet.
5. Reach: a candidate whose predicted D_v error is more than `max_error_ratio` (default 2) times
   the cheaper anchor's D_v error is not expected to reach that anchor after finetuning, so it
   brings nothing to the frontier and gets no room; where no candidate of a paying hop is within
   reach, the hop keeps none and says so.
6. Budget: with T finetuning steps and at least S steps per route, the supernet can train
   ⌊T / S⌋ routes; the chain's anchors are routes under SN-Net's protocol and keep their share, so
   ⌊T / S⌋ − (anchors on the chain) stitches at most, and at least one where any hop pays.
7. Choice: the frontier candidates of every paying hop ranked by their predicted margin over the
   hop's cheaper anchor (top-1 points, highest first), and the best taken up to the budget: nothing
   is taken while a stitch nearer the anchors' accuracy waits.

No rule reads Σ, Γ's buckets or the coverage rule, so none of them can push a configuration in.
The selection records Θ, Σ and Γ of its picks as KLAS scores them, and its decisions in `notes`.
"""
from __future__ import annotations

import math
from typing import Mapping

from klas.errors import UsageError
from klas.scoring.scores import Scores
from klas.selection.options import SelectSection as _Defaults  # each default declared once, there
from klas.selection.select import (Config, PairSelection, Selection, _bucketise, anchor_chain, first_bucket_count,
                                   pair_candidates)

__all__ = ["route_budget", "hop_candidates", "predicted_frontier", "ahead_beyond_noise", "hop_pays", "reach_floor", "within_reach", "prediction_noise",
           "MAX_ERROR_RATIO", "FRONTIER_Z", "budget_pair", "select_budget", "describe", "METHOD"]

METHOD = "klas-budget"
MAX_ERROR_RATIO = _Defaults.budget_max_error_ratio  # rule 5: predicted D_v error at most twice the cheaper anchor's
FRONTIER_Z = 1.96  # rule 4: a cheaper configuration beats another only beyond this many standard errors

# {"configurations": {(i, j): top-1}, "anchors": {name: top-1}, "images": D_v images each was counted on
# (optional: without it the predictions are taken as exact)}
PairPredictions = Mapping


def route_budget(total_steps: int, min_route_steps: int, anchors_on_chain: int) -> int:
    """How many stitches `total_steps` can train with at least `min_route_steps` per route, the
    chain's anchors keeping a route's share each; at least 1."""
    if min_route_steps < 1 or total_steps < 0 or anchors_on_chain < 0:
        raise UsageError(f"the route budget needs total_steps >= 0, min_route_steps >= 1 and anchors >= 0, got "
                         f"{total_steps}, {min_route_steps}, {anchors_on_chain}")
    return max(1, total_steps // min_route_steps - anchors_on_chain)


def prediction_noise(top1: float, images: int | None) -> float:
    """The standard error (top-1 points) of a top-1 counted on `images` images; 0 when the count is
    not known (the predictions are then taken as exact)."""
    if not images:
        return 0.0
    p = min(max(top1 / 100.0, 0.0), 1.0)
    return 100.0 * math.sqrt(p * (1.0 - p) / images)


def ahead_beyond_noise(a: float, b: float, images: int | None, z: float = FRONTIER_Z) -> bool:
    """Whether top-1 `a` is ahead of top-1 `b` (%): by more than `z` standard errors of the difference
    of two top-1s each counted on `images` images, or, when the count is not known, at least level
    (exact numbers: a tie goes to `a`). Rules 3 and 4 compare D_v counts with it."""
    if images is None:
        return a >= b
    return a - b > z * math.hypot(prediction_noise(a, images), prediction_noise(b, images))


def predicted_frontier(configs: list[Config], predicted: Mapping[tuple[int, int], float],
                       images: int | None = None, z: float = FRONTIER_Z) -> list[Config]:
    """The configurations no cheaper one is predicted to beat, cheapest first: at each FLOPs value
    the most accurate alone (ties to the lower (i, j)), kept unless a cheaper configuration is
    predicted more accurate by more than `z` standard errors of the difference of two top-1s each
    counted on `images` images (strictly more accurate when `images` is None)."""
    ranked = sorted(configs, key=lambda c: (c.flops, -predicted[(c.i, c.j)], c.i, c.j))
    out, best, last_flops = [], -math.inf, None
    for c in ranked:
        if c.flops == last_flops:
            continue  # at equal FLOPs the most accurate came first
        last_flops = c.flops
        p = predicted[(c.i, c.j)]
        if not ahead_beyond_noise(best, p, images, z):
            out.append(c)
        best = max(best, p)
    return out


def hop_pays(source: str, target: str, anchor_top1: Mapping[str, float], images: int | None = None,
             z: float = FRONTIER_Z) -> bool:
    """Whether a stitch of the hop can improve on its cheaper anchor (rule 3): the cheaper anchor is
    not more accurate on D_v beyond `z` standard errors of the difference of two top-1s each counted
    on `images` images (with `images` None: the costlier anchor is strictly more accurate)."""
    return not ahead_beyond_noise(anchor_top1[source], anchor_top1[target], images, z)


def reach_floor(cheaper_anchor_top1: float, max_error_ratio: float) -> float:
    """Rule 5's lowest predicted top-1 (%): an error `max_error_ratio` times the cheaper anchor's."""
    return 100.0 - max_error_ratio * (100.0 - cheaper_anchor_top1)


def within_reach(predicted_top1: float, cheaper_anchor_top1: float, max_error_ratio: float) -> bool:
    """Rule 5: whether a candidate predicted at `predicted_top1` (%) on D_v can be expected to reach
    the cheaper anchor's `cheaper_anchor_top1` after finetuning: its error is at most
    `max_error_ratio` times the anchor's."""
    return predicted_top1 >= reach_floor(cheaper_anchor_top1, max_error_ratio) - 1e-9


def _check_ratio(max_error_ratio: float) -> None:
    if not isinstance(max_error_ratio, (int, float)) or isinstance(max_error_ratio, bool) \
            or not math.isfinite(max_error_ratio) or max_error_ratio < 1.0:
        raise UsageError(f"klas-budget's max_error_ratio must be a finite number >= 1 (a stitch's predicted error "
                         f"against the cheaper anchor's), got {max_error_ratio!r}")


def _check_predictions(source: str, target: str, configs: list[Config], pred: PairPredictions) -> None:
    table, anchors = pred.get("configurations"), pred.get("anchors")
    if not isinstance(table, Mapping) or not isinstance(anchors, Mapping):
        raise UsageError(f"predictions of {source} -> {target} need 'configurations' and 'anchors'")
    images = pred.get("images")
    if images is not None and (not isinstance(images, int) or isinstance(images, bool) or images < 1):
        raise UsageError(f"predictions of {source} -> {target}: 'images' must be a positive count, got {images!r}")
    for name in (source, target):
        v = anchors.get(name)
        if not isinstance(v, (int, float)) or not 0.0 <= v <= 100.0:
            raise UsageError(f"predictions of {source} -> {target} lack anchor {name}'s top-1 (a number in [0, 100])")
    for c in configs:
        v = table.get((c.i, c.j))
        if not isinstance(v, (int, float)) or not 0.0 <= v <= 100.0:
            raise UsageError(f"predictions of {source} -> {target} lack configuration ({c.i}, {c.j})'s top-1 "
                             "(a number in [0, 100]); predict every candidate of the hop")


def hop_candidates(scores: Scores, source: str, target: str, flops_range: str) -> list[Config]:
    """klas-budget's candidates of one hop (KLAS's: grid-valid, inside the FLOPs range unless
    `flops_range` is "end-buckets"), in KLAS's m_g − 1 buckets, cheapest first; the predictor and the
    predictions' reader list the same ones."""
    configs, lo, hi = pair_candidates(scores, source, target, flops_range=flops_range)
    placed, _ = _bucketise(configs, lo, hi, first_bucket_count(scores.anchor(target)))
    return sorted(placed, key=lambda c: (c.flops, c.i, c.j))


def budget_pair(scores: Scores, source: str, target: str, pred: PairPredictions, stitches: int, *,
                flops_range: str = _Defaults.flops_range, max_error_ratio: float = MAX_ERROR_RATIO) -> tuple[PairSelection, dict]:
    """The rules on one hop with room for `stitches`: (its PairSelection, its notes)."""
    _check_ratio(max_error_ratio)
    configs = hop_candidates(scores, source, target, flops_range)
    _check_predictions(source, target, configs, pred)
    frontier, reachable = _hop_frontier(source, configs, pred, max_error_ratio)
    chosen = sorted(_ranked(source, target, pred, reachable)[:stitches], key=lambda c: (c.flops, c.i, c.j))
    return (_pair(scores, source, target, configs, chosen),
            _notes(source, target, configs, pred, chosen, max_error_ratio, frontier, reachable))


def _hop_frontier(source: str, configs: list[Config], pred: PairPredictions,
                  max_error_ratio: float) -> tuple[list[Config], list[Config]]:
    """Rules 4 and 5: (the predicted frontier, its candidates within reach of the cheaper anchor)."""
    table, base = pred["configurations"], pred["anchors"][source]
    frontier = predicted_frontier(configs, table, pred.get("images"))
    return frontier, [c for c in frontier if within_reach(table[(c.i, c.j)], base, max_error_ratio)]


def _ranked(source: str, target: str, pred: PairPredictions, reachable: list[Config]) -> list[Config]:
    """The hop's frontier candidates within reach, by predicted margin over the cheaper anchor, best
    first (none when the hop does not pay)."""
    if not hop_pays(source, target, pred["anchors"], pred.get("images")):
        return []
    table = pred["configurations"]
    return sorted(reachable, key=lambda c: (-table[(c.i, c.j)], -c.flops, c.i, c.j))


def _pair(scores: Scores, source: str, target: str, configs: list[Config], chosen: list[Config]) -> PairSelection:
    f, g = scores.anchor(source), scores.anchor(target)
    count = first_bucket_count(g)
    _, edges = _bucketise([], float(f.total_flops), float(g.total_flops), count)
    return PairSelection(source, target, configs, chosen, edges, [float("nan")] * count)


def _notes(source: str, target: str, configs: list[Config], pred: PairPredictions, chosen: list[Config],
           max_error_ratio: float, frontier: list[Config], reachable: list[Config]) -> dict:
    table, anchors = pred["configurations"], pred["anchors"]
    pays = hop_pays(source, target, anchors, pred.get("images"))
    in_reach = len(reachable)
    floor = reach_floor(anchors[source], max_error_ratio)
    if not pays:
        if pred.get("images") is None:
            verdict = (f"no stitch is worth training here: {target} is not more accurate than the cheaper "
                       f"{source} on D_v ({anchors[target]:.2f}% against {anchors[source]:.2f}%)")
        else:
            verdict = (f"no stitch is worth training here: the cheaper {source} is more accurate than {target} "
                       f"on D_v beyond the noise of the two counts ({anchors[source]:.2f}% against "
                       f"{anchors[target]:.2f}% on {pred['images']} images)")
    elif not in_reach:
        verdict = (f"no stitch is worth training here: none is predicted within reach of the cheaper {source} "
                   f"(at least {floor:.2f}% on D_v, error at most {max_error_ratio:g}x its {100 - anchors[source]:.2f}%)")
    else:
        verdict = ""
    return {
        "source": source, "target": target, "candidates": len(configs),
        "anchor_top1_val": {source: anchors[source], target: anchors[target]},
        "pays": pays and in_reach > 0,
        "verdict": verdict,
        "frontier": len(frontier),
        "images": pred.get("images"),
        "max_error_ratio": max_error_ratio,
        "reach_floor_top1_val": floor,
        "within_reach": in_reach if pays else 0,
        "picked_predicted_top1_val": [[c.i, c.j, table[(c.i, c.j)]] for c in chosen],
    }


def select_budget(scores: Scores, predictions: Mapping[tuple[str, str], PairPredictions], *, total_steps: int,
                  min_route_steps: int = _Defaults.budget_min_route_steps, chain_rule: str = _Defaults.chain_rule,
                  flops_range: str = _Defaults.flops_range,
                  max_error_ratio: float = MAX_ERROR_RATIO, prediction_seconds: float | None = None) -> Selection:
    """`klas-budget` over KLAS's anchor chain (rules 1-7 of the module docstring).

    predictions: per hop (source, target) of the chain, ``{"configurations": {(i, j): top-1 on D_v},
    "anchors": {name: top-1 on D_v}}`` for every candidate (klas.evaluation.predict)."""
    _check_ratio(max_error_ratio)
    chain = anchor_chain(scores, chain_rule)
    hops = list(zip(chain, chain[1:]))
    room = route_budget(total_steps, min_route_steps, len(chain))
    pool, per_hop = [], {}
    for f, g in hops:
        if (f, g) not in predictions:
            raise UsageError(f"klas-budget has no predictions for the hop {f} -> {g}; predict every hop of the chain")
        configs = hop_candidates(scores, f, g, flops_range)
        _check_predictions(f, g, configs, predictions[(f, g)])
        frontier, reachable = _hop_frontier(f, configs, predictions[(f, g)], max_error_ratio)
        per_hop[(f, g)] = configs, frontier, reachable
        base = predictions[(f, g)]["anchors"][f]
        pool += [(predictions[(f, g)]["configurations"][(c.i, c.j)] - base, c)
                 for c in _ranked(f, g, predictions[(f, g)], reachable)]
    pool.sort(key=lambda t: (-t[0], -t[1].flops, t[1].source, t[1].i, t[1].j))
    taken = {id(c) for _, c in pool[:room]}
    pairs, notes = [], []
    for f, g in hops:
        configs, frontier, reachable = per_hop[(f, g)]
        chosen = sorted((c for c in configs if id(c) in taken), key=lambda c: (c.flops, c.i, c.j))
        pairs.append(_pair(scores, f, g, configs, chosen))
        notes.append(_notes(f, g, configs, predictions[(f, g)], chosen, max_error_ratio, frontier, reachable))
    order = [a.name for a in scores.anchors]
    return Selection(method=METHOD, chain=chain, chain_rule=chain_rule, tau=float("nan"), tau_mode="none",
                     pairs=pairs, anchors=scores.anchors,
                     last_block={"order": order, "theta": scores.last_block().tolist()},
                     notes={"rule": "klas-budget", "total_steps": total_steps, "min_route_steps": min_route_steps,
                            "max_error_ratio": max_error_ratio, "stitch_room": room, "stitches": sum(len(p.selected) for p in pairs),
                            "prediction_seconds": prediction_seconds, "hops": notes})


def describe(notes: dict) -> list[str]:
    """The decisions recorded in a klas-budget selection's `notes`, as lines for a log."""
    if notes.get("rule") != METHOD:
        return []
    cost = notes.get("prediction_seconds")
    lines = [f"klas-budget: room for {notes['stitch_room']} stitches ({notes['total_steps']} steps, at least "
             f"{notes['min_route_steps']} per route, the chain's anchors included); {notes['stitches']} taken"
             + ("" if cost is None else f"; predictions took {cost:.0f} s")]
    for h in notes.get("hops", []):
        if not h["pays"]:
            lines.append(f"  {h['source']} -> {h['target']}: {h['verdict']}")
        else:
            reach = "" if "within_reach" not in h else f", {h['within_reach']} within reach"
            lines.append(f"  {h['source']} -> {h['target']}: {len(h['picked_predicted_top1_val'])} of "
                         f"{h['frontier']} on the predicted frontier{reach} ({h['candidates']} candidates); cheaper anchor "
                         f"{h['anchor_top1_val'][h['source']]:.2f}% on D_v, picks predicted "
                         + ", ".join(f"({i}, {j}) {v:.1f}%" for i, j, v in h["picked_predicted_top1_val"]))
    return lines
