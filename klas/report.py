"""The report of a run: per method, every route's FLOPs and top-1, the Pareto frontier, the AUC, the
rank correlation between Γ and accuracy; across methods, ΔAUC, the best gain at equal FLOPs and the
best FLOPs saving at equal accuracy. Written as report.json, routes.csv and accuracy_flops.png."""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from klas.files import atomic_path, write_json_atomic
from klas.evaluate import (
    RouteResult,
    accuracy_gain_at_equal_flops,
    flops_saving_at_equal_accuracy,
    frontier_auc,
    pareto_frontier,
    spearman,
)

__all__ = ["summarise", "write_report"]


def summarise(results: list[RouteResult], flops_range: tuple[float, float]) -> dict:
    """One method's figures: AUC, frontier, Spearman(Γ, top-1) over the scored stitches."""
    points = [(r.flops, r.top1) for r in results]
    scored = [r for r in results if r.gamma is not None and math.isfinite(r.gamma)]
    rho = spearman([r.gamma for r in scored], [r.top1 for r in scored]) if len(scored) >= 2 else None
    return {
        "routes": len(results), "stitches": sum(r.source != r.target for r in results),
        "auc": frontier_auc(points, flops_range),
        "frontier": [results[k].name for k in pareto_frontier(points)],
        "spearman_gamma_top1": None if rho is None or math.isnan(rho) else rho,
        "spearman_routes": len(scored),
        "best_top1": max(r.top1 for r in results),
    }


def write_report(results: dict[str, list[RouteResult]], out: str | os.PathLike, *, title: str = "",
                 extra: dict | None = None) -> Path:
    """Writes the report for one or more methods (the first is compared against the others)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    anchors = [r for r in next(iter(results.values())) if r.source == r.target]
    flops_range = (min(r.flops for r in anchors), max(r.flops for r in anchors))
    methods = {m: summarise(rs, flops_range) for m, rs in results.items()}
    doc = {"format": "klas-report", "version": 1, "title": title, "flops_range": list(flops_range),
           "auc_definition": "integral over FLOPs normalised to [0, 1] (anchors' range) of the best top-1 within budget",
           "methods": methods, "comparisons": [], **(extra or {})}
    names = list(results)
    ours = names[0]
    for other in names[1:]:
        a = [(r.flops, r.top1) for r in results[ours]]
        b = [(r.flops, r.top1) for r in results[other]]
        gain, at_flops = accuracy_gain_at_equal_flops(a, b, flops_range)
        ratio, at_acc = flops_saving_at_equal_accuracy(a, b)
        doc["comparisons"].append({
            "ours": ours, "baseline": other, "delta_auc": methods[ours]["auc"] - methods[other]["auc"],
            "best_gain_at_equal_flops": {"top1_points": gain, "flops": at_flops},
            "best_flops_saving_at_equal_accuracy": {"ratio": ratio, "top1": None if math.isnan(at_acc) else at_acc},
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
    anchors = [r for r in next(iter(results.values())) if r.source == r.target]
    for n, rs in enumerate(results.values()):
        for r in rs:
            if r.source == r.target:
                ax.scatter([r.flops / 1e6], [r.top1], s=70, marker="*", color=f"C{n}", edgecolors="k", zorder=5)
    for r in anchors:
        ax.annotate(r.name, (r.flops / 1e6, r.top1), textcoords="offset points", xytext=(4, -12), fontsize=7)
    ax.set_xlabel("MFLOPs per image")
    ax.set_ylabel("top-1 (%) on the test split")
    ax.set_title(title or "accuracy vs FLOPs (stars: anchors; lines: Pareto frontiers)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)
