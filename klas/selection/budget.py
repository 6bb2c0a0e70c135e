"""`klas-budget`: the stitches worth training for a given finetuning budget, chosen on predicted accuracy.

The rules, in order (docs/METHOD.md §8 gives the evidence for each):

1. Candidates: as KLAS's, every grid-valid configuration (i, j) of each hop of KLAS's anchor chain
   inside the hop's FLOPs range.
2. Prediction: each candidate's least-squares stitch's own top-1 on D_v (klas.evaluation.predict),
   the best predictor of finetuned accuracy the recovery test measured; the hop's anchors' top-1 on
   the same images beside it.
3. A hop whose costlier anchor is not more accurate on D_v than its cheaper one brings no stitch to
   the accuracy-FLOPs frontier: a stitch between two anchors ends at most near the better of
   them, and here the cheaper anchor is that one. The hop keeps no stitch, and says so.
4. Dominance: a candidate predicted no more accurate than a cheaper candidate of its hop brings
   nothing to the frontier; only the predicted frontier (accuracy rising with FLOPs) stays.
5. Budget: with T finetuning steps and at least S steps per route, the supernet can train
   ⌊T / S⌋ routes; the chain's anchors are routes under SN-Net's protocol and keep their share, so
   ⌊T / S⌋ − (anchors on the chain) stitches at most, and at least one where any hop pays.
6. Choice: the frontier candidates of every paying hop ranked by their predicted margin over the
   hop's cheaper anchor (top-1 points, highest first), and the best taken up to the budget. A range
   whose stitches are far below the cheaper anchor is reached last: nothing in it is taken while a
   stitch nearer the anchors' accuracy waits.

No rule reads Σ, Γ's buckets or the coverage rule, so none of them can push a configuration in.
The selection records Θ, Σ and Γ of its picks as KLAS scores them, and its decisions in `notes`.
"""
from __future__ import annotations

import math
from typing import Mapping

from klas.errors import UsageError
from klas.scoring.scores import Scores
from klas.selection.select import (Config, PairSelection, Selection, _bucketise, anchor_chain, configurations,
                                   in_flops_range)

__all__ = ["route_budget", "hop_candidates", "predicted_frontier", "hop_pays", "budget_pair", "select_budget", "describe", "METHOD"]

METHOD = "klas-budget"

PairPredictions = Mapping  # {"configurations": {(i, j): top-1}, "anchors": {name: top-1}}


def route_budget(total_steps: int, min_route_steps: int, anchors_on_chain: int) -> int:
    """How many stitches `total_steps` can train with at least `min_route_steps` per route, the
    chain's anchors keeping a route's share each; at least 1."""
    if min_route_steps < 1 or total_steps < 0 or anchors_on_chain < 0:
        raise UsageError(f"the route budget needs total_steps >= 0, min_route_steps >= 1 and anchors >= 0, got "
                         f"{total_steps}, {min_route_steps}, {anchors_on_chain}")
    return max(1, total_steps // min_route_steps - anchors_on_chain)


def predicted_frontier(configs: list[Config], predicted: Mapping[tuple[int, int], float]) -> list[Config]:
    """The configurations each predicted strictly more accurate than every cheaper one (at equal
    FLOPs the most accurate alone), cheapest first. Ties in FLOPs and accuracy go to the lower (i, j)."""
    ranked = sorted(configs, key=lambda c: (c.flops, -predicted[(c.i, c.j)], c.i, c.j))
    out, best = [], -math.inf
    for c in ranked:
        p = predicted[(c.i, c.j)]
        if p > best:  # at equal FLOPs the most accurate comes first, so the rest are not above it
            out.append(c)
            best = p
    return out


def hop_pays(source: str, target: str, anchor_top1: Mapping[str, float]) -> bool:
    """Whether a stitch of the hop can improve on its cheaper anchor: the costlier anchor is more
    accurate on D_v (rule 3)."""
    return anchor_top1[target] > anchor_top1[source]


def _check_predictions(source: str, target: str, configs: list[Config], pred: PairPredictions) -> None:
    table, anchors = pred.get("configurations"), pred.get("anchors")
    if not isinstance(table, Mapping) or not isinstance(anchors, Mapping):
        raise UsageError(f"predictions of {source} -> {target} need 'configurations' and 'anchors'")
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
    f, g = scores.anchor(source), scores.anchor(target)
    configs = configurations(scores, source, target)
    if flops_range == "exclude":
        configs = in_flops_range(configs, float(f.total_flops), float(g.total_flops))
    placed, _ = _bucketise(configs, float(f.total_flops), float(g.total_flops), max(g.depth - 1, 1))
    return sorted(placed, key=lambda c: (c.flops, c.i, c.j))


def budget_pair(scores: Scores, source: str, target: str, pred: PairPredictions, stitches: int, *,
                flops_range: str = "exclude") -> tuple[PairSelection, dict]:
    """The rules on one hop with room for `stitches`: (its PairSelection, its notes)."""
    configs = hop_candidates(scores, source, target, flops_range)
    _check_predictions(source, target, configs, pred)
    ranked = _ranked(source, target, configs, pred)
    chosen = sorted(ranked[:stitches], key=lambda c: (c.flops, c.i, c.j))
    return _pair(scores, source, target, configs, chosen), _notes(source, target, configs, pred, chosen)


def _ranked(source: str, target: str, configs: list[Config], pred: PairPredictions) -> list[Config]:
    """The hop's frontier candidates by predicted margin over the cheaper anchor, best first (none when
    the hop does not pay)."""
    if not hop_pays(source, target, pred["anchors"]):
        return []
    table = pred["configurations"]
    frontier = predicted_frontier(configs, table)
    return sorted(frontier, key=lambda c: (-table[(c.i, c.j)], -c.flops, c.i, c.j))


def _pair(scores: Scores, source: str, target: str, configs: list[Config], chosen: list[Config]) -> PairSelection:
    f, g = scores.anchor(source), scores.anchor(target)
    count = max(g.depth - 1, 1)
    _, edges = _bucketise([], float(f.total_flops), float(g.total_flops), count)
    return PairSelection(source, target, configs, chosen, edges, [float("nan")] * count)


def _notes(source: str, target: str, configs: list[Config], pred: PairPredictions, chosen: list[Config]) -> dict:
    table, anchors = pred["configurations"], pred["anchors"]
    pays = hop_pays(source, target, anchors)
    return {
        "source": source, "target": target, "candidates": len(configs),
        "anchor_top1_val": {source: anchors[source], target: anchors[target]},
        "pays": pays,
        "verdict": ("" if pays else f"no stitch is worth training here: {target} is not more accurate than the "
                                    f"cheaper {source} on D_v ({anchors[target]:.2f}% against {anchors[source]:.2f}%)"),
        "frontier": len(predicted_frontier(configs, table)) if configs else 0,
        "picked_predicted_top1_val": [[c.i, c.j, table[(c.i, c.j)]] for c in chosen],
    }


def select_budget(scores: Scores, predictions: Mapping[tuple[str, str], PairPredictions], *, total_steps: int,
                  min_route_steps: int = 100, chain_rule: str = "minimax", flops_range: str = "exclude",
                  prediction_seconds: float | None = None) -> Selection:
    """`klas-budget` over KLAS's anchor chain (rules 1-6 of the module docstring).

    predictions: per hop (source, target) of the chain, ``{"configurations": {(i, j): top-1 on D_v},
    "anchors": {name: top-1 on D_v}}`` for every candidate (klas.evaluation.predict)."""
    chain = anchor_chain(scores, chain_rule)
    hops = list(zip(chain, chain[1:]))
    room = route_budget(total_steps, min_route_steps, len(chain))
    pool, per_hop = [], {}
    for f, g in hops:
        if (f, g) not in predictions:
            raise UsageError(f"klas-budget has no predictions for the hop {f} -> {g}; predict every hop of the chain")
        configs = hop_candidates(scores, f, g, flops_range)
        _check_predictions(f, g, configs, predictions[(f, g)])
        per_hop[(f, g)] = configs
        base = predictions[(f, g)]["anchors"][f]
        pool += [(predictions[(f, g)]["configurations"][(c.i, c.j)] - base, c)
                 for c in _ranked(f, g, configs, predictions[(f, g)])]
    pool.sort(key=lambda t: (-t[0], -t[1].flops, t[1].source, t[1].i, t[1].j))
    taken = {id(c) for _, c in pool[:room]}
    pairs, notes = [], []
    for f, g in hops:
        chosen = sorted((c for c in per_hop[(f, g)] if id(c) in taken), key=lambda c: (c.flops, c.i, c.j))
        pairs.append(_pair(scores, f, g, per_hop[(f, g)], chosen))
        notes.append(_notes(f, g, per_hop[(f, g)], predictions[(f, g)], chosen))
    order = [a.name for a in scores.anchors]
    return Selection(method=METHOD, chain=chain, chain_rule=chain_rule, tau=float("nan"), tau_mode="none",
                     pairs=pairs, anchors=scores.anchors,
                     last_block={"order": order, "theta": scores.last_block().tolist()},
                     notes={"rule": "klas-budget", "total_steps": total_steps, "min_route_steps": min_route_steps,
                            "stitch_room": room, "stitches": sum(len(p.selected) for p in pairs),
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
            lines.append(f"  {h['source']} -> {h['target']}: {len(h['picked_predicted_top1_val'])} of "
                         f"{h['frontier']} on the predicted frontier ({h['candidates']} candidates); cheaper anchor "
                         f"{h['anchor_top1_val'][h['source']]:.2f}% on D_v, picks predicted "
                         + ", ".join(f"({i}, {j}) {v:.1f}%" for i, j, v in h["picked_predicted_top1_val"]))
    return lines
