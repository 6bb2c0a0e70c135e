"""A selection's picks scored against the ground truth of a stored recovery test.

    python tools/picks_in_recovery.py SELECTION.json RECOVERY.json

The recovery test trains every configuration of one anchor pair alone and stores each one's
top-1 and the good set. A selection made later for the same pair and the same anchors (the same
adapted weights: check that before reading anything into the figures) can be scored against it
without training anything again: precision, recall and points lost per pick against the best of
the pick's bucket (klas.evaluation.recovery.score_method, as `klas recovery` scores its methods),
and the exact share of random sets of its size holding at least as many good configurations.
"""
from __future__ import annotations

import sys

from klas.errors import CacheError
from klas.evaluation.recovery import against_random, score_method
from klas.reading import read_json
from klas.selection.select import read_selection


def rows(selection_path: str, recovery_path: str) -> list[str]:
    sel = read_selection(selection_path, legacy_flops=True)  # only its picks are used, not their FLOPs
    doc = read_json(recovery_path, what="recovery report", error=CacheError, fix="give a recovery.json of `klas recovery`")
    source, target = doc["pair"]["source"], doc["pair"]["target"]
    picks = [(c.i, c.j) for c in sel.selected if (c.source, c.target) == (source, target)]
    configs = {(c["i"], c["j"]): c for c in doc["configurations"]}
    acc = {k: c["top1"] for k, c in configs.items()}
    bucket = {k: c["bucket"] for k, c in configs.items()}
    good = {tuple(c) for c in doc["good_set"]}
    s = score_method(picks, acc, bucket, good)
    s.update(against_random(s, len(good), len(acc)))
    p = s["random_sets_at_least_as_good"]
    lost = s["mean_points_lost_per_pick"]
    return [f"{sel.method} on {source} -> {target}: {s['picks']} picks ({s['picks_outside_ground_truth']} outside the "
            f"test's {len(acc)} configurations), {s['good_found']} of {len(good)} good",
            f"  precision {s['precision'] or 0:.2f}, recall {s['recall'] or 0:.2f}, points lost per pick "
            f"{'n/a' if lost is None else f'{lost:.2f}'}, P(random >=) {'n/a' if p is None else f'{p:.3f}'}"
            + ("  beats random" if s["beats_random"] else "")]


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        sys.exit(2)
    print("\n".join(rows(sys.argv[1], sys.argv[2])))
