"""Several seeds: the reports of one comparison run once per seed, gathered as mean and 95% interval.

Each seed's run (`klas run` with `seeds:`) changes the data split, the route schedule, the batches
and the initialisation. For every finetuning protocol and method this gathers the AUC, the
stitches-only figures and the within-bucket correlation, and for every comparison ΔAUC (all routes
and stitches only) with its interval, how far each anchor's top-1 differs between the two
supernets (not zero when the anchors train: SN-Net's protocol), and the stitches both hold,
compared one by one. A difference whose interval covers 0 is reported as "no significant
difference".
"""
from __future__ import annotations

from pathlib import Path

from klas.errors import CacheError
from klas.files import write_json_atomic
from klas.reading import read_json
from klas.evaluation.stats import mean_interval

__all__ = ["summarise_seeds", "summary_lines", "verdict"]


def verdict(interval: dict) -> str:
    """'no significant difference' when a 95% interval covers 0, else which side leads; what is
    missing when there is no interval (no value in any seed, or one seed)."""
    if interval.get("mean") is None:
        return "no value in any seed (a set without a stitch)"
    if interval.get("low") is None:
        return "one seed: no interval"
    if interval["low"] <= 0.0 <= interval["high"]:
        return "no significant difference"
    return "higher" if interval["mean"] > 0 else "lower"


def summarise_seeds(reports: dict[int, Path], protocols: list[str], out: Path) -> dict:
    """Reads `<report root>/<protocol>/report.json` of every seed and writes `out`/summary.json."""
    doc = {"format": "klas-seed-summary", "version": 1, "seeds": sorted(reports), "protocols": {}}
    for protocol in protocols:
        runs = {}
        for seed, root in reports.items():
            path = Path(root) / protocol / "report.json"
            runs[seed] = read_json(path, what="report", error=CacheError, inside=path.parent,
                                   fix=f"delete {path.parent} and run the same command again")
        first = next(iter(runs.values()))
        methods = {}
        for m in first["methods"]:
            methods[m] = {key: mean_interval([r["methods"][m][key] for r in runs.values()])
                          for key in ("auc", "stitches", "steps_per_route", "best_top1")}
            # a rank correlation over a few buckets is bounded and far from normal: each seed's value
            # and their mean, with no t interval (one would reach beyond [-1, 1])
            rhos = [r["methods"][m]["spearman_gamma_top1_within_buckets"] for r in runs.values()]
            known = [v for v in rhos if v is not None]
            methods[m]["spearman_gamma_top1_within_buckets"] = {
                "per_seed": rhos, "mean": sum(known) / len(known) if known else None, "low": None, "high": None,
                "n": len(known)}
        comparisons = []
        for k, c in enumerate(first["comparisons"]):
            delta = mean_interval([r["comparisons"][k]["delta_auc"] for r in runs.values()])
            stitch = mean_interval([r["comparisons"][k]["stitches_only"]["delta_auc"] for r in runs.values()])
            gain = mean_interval([(r["comparisons"][k]["stitches_only"]["best_gain_at_equal_flops"] or {})
                                  .get("top1_points") for r in runs.values()])
            anchors = {a: mean_interval([_anchor_difference(r["comparisons"][k], a) for r in runs.values()])
                       for a in c["anchors"]}
            shared = [r["comparisons"][k].get("shared_stitches") or {} for r in runs.values()]
            comparisons.append({"ours": c["ours"], "baseline": c["baseline"], "delta_auc": delta,
                                "delta_auc_verdict": verdict(delta), "stitches_only_delta_auc": stitch,
                                "stitches_only_verdict": verdict(stitch), "stitches_only_best_gain": gain,
                                "anchor_top1_difference": anchors,
                                "shared_stitches": {"count": mean_interval([x.get("count") for x in shared]),
                                                    "mean_difference": mean_interval([x.get("mean_difference")
                                                                                      for x in shared])}})
        doc["protocols"][protocol] = {"methods": methods, "comparisons": comparisons}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "summary.json", doc)
    return doc


def _anchor_difference(comparison: dict, anchor: str) -> float | None:
    """Top-1 of `anchor` in our supernet minus in the baseline's; None when either lacks it."""
    both = comparison["anchors"].get(anchor) or {}
    if both.get("ours") is None or both.get("baseline") is None:
        return None
    return both["ours"] - both["baseline"]


def _fmt(v: dict, spec: str = "+.3f") -> str:
    if v.get("mean") is None:
        return "n/a"
    if v.get("low") is None:
        return f"{v['mean']:{spec}}"
    return f"{v['mean']:{spec}} [{v['low']:{spec}}, {v['high']:{spec}}]"


def summary_lines(doc: dict) -> list[str]:
    """The summary in words: each comparison's ΔAUC with its interval and verdict."""
    lines = [f"over seeds {doc['seeds']} (mean [95% interval]):"]
    for protocol, p in doc["protocols"].items():
        for m, s in p["methods"].items():
            lines.append(f"  {protocol:>13} {m}: AUC {_fmt(s['auc'], '.3f')}, stitches {_fmt(s['stitches'], '.1f')}, "
                         f"steps per route {_fmt(s['steps_per_route'], '.0f')}")
        for c in p["comparisons"]:
            lines.append(f"  {protocol:>13} {c['ours']} vs {c['baseline']}: ΔAUC {_fmt(c['delta_auc'])} "
                         f"({c['delta_auc_verdict']}); stitches only {_fmt(c['stitches_only_delta_auc'])} "
                         f"({c['stitches_only_verdict']})")
            both = c["shared_stitches"]
            if both["mean_difference"]["mean"] is not None:
                lines.append(f"  {'':>13}   the {both['count']['mean']:.3g} stitches both supernets hold: top-1 "
                             f"{c['ours']} minus {c['baseline']} {_fmt(both['mean_difference'], '+.2f')} on average")
            moved = {a: d for a, d in c["anchor_top1_difference"].items() if d["mean"]}  # None or 0: not moved
            if moved:
                lines.append(f"  {'':>13}   the anchors differ between the two supernets (top-1, {c['ours']} minus "
                             f"{c['baseline']}): " + ", ".join(f"{a} {_fmt(d, '+.2f')}" for a, d in moved.items())
                             + "; the all-routes ΔAUC includes that difference")
    return lines
