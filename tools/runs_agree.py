"""Whether two runs of one comparison with other execution settings give the same results.

    python tools/runs_agree.py REFERENCE.json OTHER.json [--noise SEED.json SEED.json ...]

REFERENCE and OTHER are report.json files of `klas run` (one protocol each, e.g.
runs/X/seed-0/report/snnet/report.json). For each figure both hold, every method's AUC and its
anchors' top-1, and each comparison's ΔAUC over all routes and over the stitches only, it prints
both values and their difference; then, per method, the top-1 differences of the routes both hold.
With --noise, the reports of the same comparison under other seeds: each figure's standard
deviation across them, and whether the difference lies within what two single runs of different
seeds differ by at the 95% level (1.96·√2 times that deviation, as tools/recovery_runs_agree.py);
for the routes, how many lie beyond that level of the per-route deviation (pooled over the routes
every seed holds). Same seed, settings that change only rounding: far inside that.
"""
from __future__ import annotations

import argparse
import statistics
import sys

from recovery_runs_agree import difference_level, finite

from klas.errors import CacheError
from klas.reading import read_json


def read_report(path: str) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """One report.json, read once: ({figure name: value}, {method: {route name: top-1}})."""
    doc = read_json(path, what="run report", error=CacheError, fix="give a report.json of `klas run`")
    try:
        figures, routes = {}, {}
        for method, facts in doc["methods"].items():
            figures[f"AUC {method}"] = finite(facts["auc"])
        for method, results in doc["results"].items():
            routes[method] = {str(r["name"]): finite(r["top1"]) for r in results}
            for r in results:
                if r["source"] == r["target"]:
                    figures[f"top-1 {method} {r['name']}"] = routes[method][str(r["name"])]
        for c in doc["comparisons"]:
            pair = f"{c['ours']} - {c['baseline']}"
            figures[f"ΔAUC {pair}, all routes"] = finite(c["delta_auc"])
            stitches = (c.get("stitches_only") or {}).get("delta_auc")
            if stitches is not None:
                figures[f"ΔAUC {pair}, stitches only"] = finite(stitches)
        return figures, routes
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise CacheError(f"{path}: not a report of `klas run` ({type(e).__name__}: {e})") from None


def figure_rows(ref: dict[str, float], new: dict[str, float], seeds: list[dict[str, float]]) -> list[str]:
    """Every figure both reports hold: both values, the difference, and with `seeds` its verdict."""
    out = []
    for name in [k for k in ref if k in new]:
        line = f"{name}: {ref[name]:.2f} -> {new[name]:.2f}, difference {new[name] - ref[name]:+.2f}"
        values = [s[name] for s in seeds if name in s]
        if len(values) >= 2:
            level = difference_level(statistics.stdev(values))
            verdict = "within" if abs(new[name] - ref[name]) <= level else "BEYOND"
            line += f" (seed sd {statistics.stdev(values):.2f}, 95% level {level:.2f}: {verdict})"
        out.append(line)
    return out


def route_rows(ref: dict, new: dict, seeds: list[dict]) -> list[str]:
    """Per method, the routes both reports hold: their top-1 differences, and with `seeds` how many
    lie beyond the 95% level of the per-route seed-to-seed deviation (pooled over the routes that
    every seed's report holds)."""
    out = []
    for method in [m for m in ref if m in new]:
        names = [n for n in ref[method] if n in new[method]]
        if not names:
            continue
        d = [new[method][n] - ref[method][n] for n in names]
        line = (f"routes of {method}: {len(names)} in both, mean difference {statistics.mean(d):+.2f}, "
                f"largest |difference| {max(map(abs, d)):.2f}")
        held = [n for n in names if len(seeds) >= 2 and all(n in s.get(method, {}) for s in seeds)]
        if held:
            pooled = statistics.mean([statistics.variance([s[method][n] for s in seeds]) for n in held]) ** 0.5
            level = difference_level(pooled)
            line += (f" (per-route seed sd {pooled:.2f} over {len(held)} routes, 95% level {level:.2f}: "
                     f"{sum(abs(x) > level for x in d)} beyond)")
        out.append(line)
    return out


def rows(reference: str, other: str, noise: list[str]) -> list[str]:
    (ref_figures, ref_routes), (new_figures, new_routes) = read_report(reference), read_report(other)
    seeds = [read_report(p) for p in noise]
    head = f"{other} - {reference}" + (f"; seed-to-seed deviation from {len(seeds)} reports" if seeds else "")
    return ([head] + figure_rows(ref_figures, new_figures, [f for f, _ in seeds])
            + route_rows(ref_routes, new_routes, [r for _, r in seeds]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("reference")
    parser.add_argument("other")
    parser.add_argument("--noise", nargs="*", default=[], help="reports of the same comparison under other seeds")
    args = parser.parse_args(argv)
    try:
        print("\n".join(rows(args.reference, args.other, args.noise)))
    except CacheError as e:
        print(f"runs_agree: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
