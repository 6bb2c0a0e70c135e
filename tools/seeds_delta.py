"""The ΔAUC of each comparison over seeds, with an interval at any level and an exact sign test.

    python tools/seeds_delta.py SEED.json SEED.json ... [--level 0.95] [--looks K]

Each SEED.json is the report.json of one seed of the same `klas run` comparison and protocol
(e.g. runs/X/seed-*/report/snnet/report.json). For every comparison (ours − baseline) it prints
each seed's ΔAUC over all routes and over the stitches only, their mean with a t interval, how
many seeds lie above 0, and the two-sided exact binomial p of that count (a sign test, which
assumes nothing of the values' distribution). A seed without a figure (no stitches-only ΔAUC where
a set kept no stitch) shows "n/a" and is left out of that figure's mean, as in `klas run`'s summary.

--looks K: the data were looked at K times as seeds were added (e.g. after three seeds and again
after five); the interval is then widened to level 1 − (1 − LEVEL)/K (Bonferroni over the looks),
so that stopping when an interval first excluded 0 does not make it look surer than it is.
`klas run` prints the plain 95% interval; this tool gives the same at --level 0.95 --looks 1.
"""
from __future__ import annotations

import argparse
import sys

from runs_agree import read_report

from klas.errors import CacheError
from klas.evaluation.stats import mean_interval, sign_test

KINDS = ("all routes", "stitches only")


def per_seed_deltas(paths: list[str]) -> dict[str, dict[str, list[float | None]]]:
    """{"ours - baseline": {kind: [ΔAUC of each seed, None where that seed's report lacks it]}} over
    the figures any report holds."""
    figures = [read_report(p)[0] for p in paths]
    names = dict.fromkeys(n for f in figures for n in f if n.startswith("ΔAUC "))  # in order, once
    out: dict[str, dict[str, list[float | None]]] = {}
    for name in names:
        pair, kind = name[len("ΔAUC "):].rsplit(", ", 1)
        out.setdefault(pair, {})[kind] = [f.get(name) for f in figures]
    return out


def delta_rows(deltas: dict[str, dict[str, list[float | None]]], level: float, looks: int) -> list[str]:
    """One line per comparison and kind: the seeds' values, mean [interval] over the seeds that have
    one, sign count and p."""
    wide = 1.0 - (1.0 - level) / looks
    label = f"{100 * level:g}%" + (f", widened to {100 * wide:.4g}% for {looks} looks" if looks > 1 else "")
    rows = []
    for pair, kinds in deltas.items():
        for kind in KINDS:
            values = kinds.get(kind)
            if not values:
                continue
            present = [v for v in values if v is not None]
            m = mean_interval(present, level=wide)
            above, nonzero, p = sign_test(present)
            seeds = " / ".join("n/a" if v is None else f"{v:+.3f}" for v in values)
            interval = (f"[{m['low']:+.3f}, {m['high']:+.3f}]" if m["low"] is not None else "(one seed: no interval)")
            rows.append(f"{pair}, {kind}: {seeds}; mean {m['mean']:+.3f} {interval} ({label}); "
                        f"{above} of {nonzero} seeds above 0, sign test p = {p:.3f}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", help="report.json of each seed (one protocol)")
    parser.add_argument("--level", type=float, default=0.95, help="the interval's level before widening (0.95)")
    parser.add_argument("--looks", type=int, default=1, help="times the data were looked at as seeds were added (1)")
    args = parser.parse_args(argv)
    if not 0.0 < args.level < 1.0:
        parser.error(f"--level lies strictly between 0 and 1, not {args.level}")
    if not 1 <= args.looks <= len(args.reports):
        parser.error(f"--looks is a whole number from 1 to the number of seeds given ({len(args.reports)}): each "
                     f"look comes after at least one more seed; not {args.looks}")
    try:
        deltas = per_seed_deltas(args.reports)
    except CacheError as e:
        print(f"seeds_delta: {e}", file=sys.stderr)
        return 1
    if not deltas:
        print("seeds_delta: these reports hold no comparison in common; give the report.json of each seed of "
              "one `klas run` with select.compare", file=sys.stderr)
        return 1
    print("\n".join(delta_rows(deltas, args.level, args.looks)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
