"""The report of a run: per method, every route's FLOPs and top-1, the Pareto frontier, the AUC, the
rank correlation between Γ and accuracy; across methods, ΔAUC, the best gain at equal FLOPs and the
best FLOPs saving at equal accuracy, and the stitches both supernets hold compared one by one.
Written as report.json, routes.csv and accuracy_flops.png."""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from klas.evaluation.evaluate import (
    RouteResult,
    accuracy_gain_at_equal_flops,
    flops_saving_at_equal_accuracy,
    frontier_auc,
    pareto_frontier,
    spearman,
)
from klas.evaluation.stats import within_group_spearman
from klas.files import atomic_path, write_json_atomic
from klas.limits import FLOPS_DEFINITION, FLOPS_UNIT

__all__ = ["summarise", "compare_stitches", "shared_stitches", "write_report", "headline"]


def summarise(results: list[RouteResult], flops_range: tuple[float, float], *, buckets: dict | None = None,
              steps: int | None = None, stitches_only: bool = False) -> dict:
    """One method's figures: AUC, frontier (and which of its points are anchors), set sizes, steps
    per route, and Spearman(Γ, top-1) over the scored stitches, overall and within FLOPs buckets.

    buckets: route name -> bucket key (anchor pair and bucket of its selection); within-bucket
    correlation is the one the method stands on, since across buckets Γ and accuracy both grow
    with FLOPs."""
    points = [(r.flops, r.top1) for r in results]
    scored = [r for r in results if r.gamma is not None and math.isfinite(r.gamma)]
    rho = spearman([r.gamma for r in scored], [r.top1 for r in scored]) if len(scored) >= 2 else None
    frontier = [results[k].name for k in pareto_frontier(points)]
    anchors = {r.name for r in results if r.source == r.target}
    out = {
        "routes": len(results), "stitches": sum(r.source != r.target for r in results),
        "anchors": sorted(anchors),
        # the routes finetuning draws from: the stitches alone when the anchors are frozen (none
        # without a stitch: then no route trains, 0 steps each)
        "steps_per_route": _steps_per_route(steps, len(results) - len(anchors) if stitches_only else len(results)),
        "auc": frontier_auc(points, flops_range),
        "frontier": frontier, "frontier_anchors": [n for n in frontier if n in anchors],
        "spearman_gamma_top1": None if rho is None or math.isnan(rho) else rho,
        "spearman_routes": len(scored),
        "spearman_gamma_top1_within_buckets": None, "spearman_buckets": 0,
        "best_top1": max(r.top1 for r in results),
    }
    if buckets:
        groups: dict = {}
        for r in scored:
            if r.name in buckets:
                groups.setdefault(buckets[r.name], []).append((r.gamma, r.top1))
        rho_within, per_bucket = within_group_spearman(groups)
        if per_bucket:
            out["spearman_gamma_top1_within_buckets"] = rho_within
            out["spearman_buckets"] = len(per_bucket)
    return out


def _steps_per_route(steps: int | None, trained_routes: int) -> float | None:
    if not steps:
        return None
    return steps / trained_routes if trained_routes else 0.0


def compare_stitches(ours: list[RouteResult], theirs: list[RouteResult], flops_range: tuple[float, float]) -> dict:
    """Two methods compared on their stitches alone, over the FLOPs range both cover with a stitch
    ([the costlier of the two cheapest stitches, the costliest anchor]): the AUC of each one's
    best-stitch-within-budget curve, their difference, and the best gain / saving at equal FLOPs or
    accuracy. No anchor carries these figures."""
    a = [(r.flops, r.top1) for r in ours if r.source != r.target and r.flops <= flops_range[1]]
    b = [(r.flops, r.top1) for r in theirs if r.source != r.target and r.flops <= flops_range[1]]
    if not a or not b:
        return {"range": None, "auc_ours": None, "auc_theirs": None, "delta_auc": None,
                "best_gain_at_equal_flops": None, "best_flops_saving_at_equal_accuracy": None}
    lo = max(min(f for f, _ in a), min(f for f, _ in b))
    rng = (lo, flops_range[1]) if flops_range[1] > lo else (lo, lo + 1.0)
    auc_a, auc_b = frontier_auc(a, rng), frontier_auc(b, rng)
    gain, at_flops = accuracy_gain_at_equal_flops(a, b, rng)
    ratio, at_acc = flops_saving_at_equal_accuracy(a, b)
    return {"range": list(rng), "auc_ours": auc_a, "auc_theirs": auc_b, "delta_auc": auc_a - auc_b,
            "best_gain_at_equal_flops": {"top1_points": gain, "flops": at_flops},
            "best_flops_saving_at_equal_accuracy": {"ratio": ratio, "top1": None if math.isnan(at_acc) else at_acc}}


def shared_stitches(ours: list[RouteResult], theirs: list[RouteResult]) -> dict:
    """The stitches both supernets hold (same anchors, same (i, j)): how many, and the top-1 of each in
    ours minus in theirs (mean, min, max; None when there is none). With one total finetuning
    budget this separates what the set's size did to each stitch from which stitches were chosen."""
    a = {r.name: r.top1 for r in ours if r.source != r.target}
    b = {r.name: r.top1 for r in theirs if r.source != r.target}
    diffs = [a[n] - b[n] for n in sorted(set(a) & set(b))]
    if not diffs:
        return {"count": 0, "mean_difference": None, "min_difference": None, "max_difference": None}
    return {"count": len(diffs), "mean_difference": sum(diffs) / len(diffs), "min_difference": min(diffs),
            "max_difference": max(diffs)}


def _carried_by(results: list[RouteResult], flops: float | None, top1: float | None) -> str | None:
    """The anchor whose point is the one at `flops` (or `top1`) on a method's frontier, if an anchor is."""
    for r in results:
        if r.source == r.target and ((flops is not None and r.flops == flops) or (top1 is not None and r.top1 == top1)):
            return r.name
    return None


def write_report(results: dict[str, list[RouteResult]], out: str | os.PathLike, *, title: str = "",
                 extra: dict | None = None, buckets: dict | None = None, steps: dict | None = None,
                 stitches_only: bool = False, curves: dict | None = None) -> Path:
    """Writes the report for one or more methods (the first is compared against the others).

    buckets: method -> {route name: bucket key}; steps: method -> finetuning steps (see summarise);
    curves: method -> its finetuning's training CSV (klas.training_log), plotted as training_curves.png.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    anchors = [r for rs in results.values() for r in rs if r.source == r.target]
    flops_range = (min(r.flops for r in anchors), max(r.flops for r in anchors))
    methods = {m: summarise(rs, flops_range, buckets=(buckets or {}).get(m), steps=(steps or {}).get(m),
                            stitches_only=stitches_only) for m, rs in results.items()}
    doc = {"format": "klas-report", "version": 1, "title": title, "flops_unit": FLOPS_UNIT,
           "flops_definition": FLOPS_DEFINITION, "flops_range": list(flops_range),
           "auc_definition": "integral over FLOPs normalised to [0, 1] (anchors' range) of the best top-1 within budget",
           "methods": methods, "comparisons": [], **(extra or {})}
    names = list(results)
    ours = names[0]
    for other in names[1:]:
        a = [(r.flops, r.top1) for r in results[ours]]
        b = [(r.flops, r.top1) for r in results[other]]
        gain, at_flops = accuracy_gain_at_equal_flops(a, b, flops_range)
        ratio, at_acc = flops_saving_at_equal_accuracy(a, b)
        carried_gain = _carried_by(results[ours], at_flops if gain > 0 else None, None)
        carried_saving = _carried_by(results[ours], None, at_acc if ratio > 1 else None)
        doc["comparisons"].append({
            "ours": ours, "baseline": other, "delta_auc": methods[ours]["auc"] - methods[other]["auc"],
            "best_gain_at_equal_flops": {"top1_points": gain, "flops": at_flops, "carried_by_anchor": carried_gain},
            "best_flops_saving_at_equal_accuracy": {"ratio": ratio, "top1": None if math.isnan(at_acc) else at_acc,
                                                    "carried_by_anchor": carried_saving},
            "anchors": {r.name: {"ours": r.top1, "baseline": next((x.top1 for x in results[other] if x.name == r.name),
                                                                  None)} for r in results[ours] if r.source == r.target},
            "stitches_only": compare_stitches(results[ours], results[other], flops_range),
            "shared_stitches": shared_stitches(results[ours], results[other]),
        })
    doc["results"] = {m: [r.to_json() for r in rs] for m, rs in results.items()}
    write_json_atomic(out / "report.json", doc)
    with atomic_path(out / "routes.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "route", "source", "target", "i", "j", "flops", "params", "top1", "gamma", "on_frontier"])
        for m, rs in results.items():
            front = set(methods[m]["frontier"])
            for r in rs:
                w.writerow([m, r.name, r.source, r.target, r.i, r.j, r.flops, r.params, f"{r.top1:.2f}",
                            "" if r.gamma is None else r.gamma, int(r.name in front)])
    _plot(results, methods, out / "accuracy_flops.png", title)
    if curves:
        from klas.plots import training_curves
        from klas.training_log import read_curve

        training_curves({m: read_curve(p) for m, p in curves.items()}, out / "training_curves.png",
                        title=f"{title}: finetuning" if title else "")
    return out


def _plot(results: dict[str, list[RouteResult]], methods: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from klas.plots import _save

    fig, ax = plt.subplots(figsize=(7.5, 5), constrained_layout=True)
    for n, (m, rs) in enumerate(results.items()):
        color, marker = f"C{n}", "os^Dv"[n % 5]
        stitches = [r for r in rs if r.source != r.target]
        ax.scatter([r.flops / 1e6 for r in stitches], [r.top1 for r in stitches], s=16, color=color, alpha=0.45,
                   marker=marker)
        front = [r for r in rs if r.name in set(methods[m]["frontier"])]
        front.sort(key=lambda r: r.flops)
        xs, ys = [r.flops / 1e6 for r in front], [r.top1 for r in front]
        top = max(r.flops for r in rs if r.source == r.target) / 1e6
        if xs[-1] < top:  # the step function goes on to the costliest anchor
            xs, ys = [*xs, top], [*ys, ys[-1]]
        ax.step(xs, ys, where="post", color=color, lw=1.6,
                label=f"{m}: {methods[m]['stitches']} stitches, AUC {methods[m]['auc']:.2f}")
    anchors = list({r.name: r for rs in results.values() for r in rs if r.source == r.target}.values())
    for n, rs in enumerate(results.values()):
        for r in rs:
            if r.source == r.target:
                ax.scatter([r.flops / 1e6], [r.top1], s=70, marker="*", color=f"C{n}", edgecolors="k", zorder=5)
    for r in anchors:
        ax.annotate(r.name, (r.flops / 1e6, r.top1), textcoords="offset points", xytext=(4, -12), fontsize=7)
    ax.scatter([], [], s=70, marker="*", color="0.6", edgecolors="k", label="anchors (a frontier through a star is an anchor's)")
    ax.scatter([], [], s=16, color="0.6", alpha=0.45, label="stitches")
    ax.set_xlabel("MFLOPs per image (multiply-accumulates)")
    ax.set_ylabel("top-1 (%) on the test split")
    ax.set_title(title or "accuracy vs FLOPs (stars: anchors; lines: Pareto frontiers)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)


def headline(comparison: dict) -> str:
    """One comparison in words that credit selection only with what its stitches did: the
    stitches-only figures first, and the all-routes figures with the anchor that carries them named."""
    c = comparison
    st = c["stitches_only"]
    parts = [f"{c['ours']} vs {c['baseline']}:"]
    if st["delta_auc"] is not None:
        parts.append(f"stitches-only ΔAUC {st['delta_auc']:+.3f} over {st['range'][0] / 1e6:.1f}–{st['range'][1] / 1e6:.1f} "
                     f"MFLOPs, best stitch gain at equal FLOPs {st['best_gain_at_equal_flops']['top1_points']:+.2f} "
                     f"points;")
    gain = c["best_gain_at_equal_flops"]
    line = f"all routes ΔAUC {c['delta_auc']:+.3f}, best gain at equal FLOPs {gain['top1_points']:+.2f} points"
    if gain.get("carried_by_anchor"):
        line += f" (carried by the anchor {gain['carried_by_anchor']}, not by a stitch)"
    saving = c["best_flops_saving_at_equal_accuracy"]
    line += f", FLOPs saving at equal accuracy {saving['ratio']:.2f}x"
    if saving.get("carried_by_anchor"):
        line += f" (carried by the anchor {saving['carried_by_anchor']})"
    parts.append(line)
    return " ".join(parts)
