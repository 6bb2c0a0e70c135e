"""Each method of stored recovery tests against random picking, recomputed from the files alone.

    python tools/recovery_vs_random.py docs/results/recovery_*/recovery.json

For every method with picks: its good picks among its picks, and the exact share of random sets of
the same size (drawn from the evaluated configurations) holding at least as many good ones
(klas.evaluation.recovery.against_random, as `klas recovery` now reports it); "beats random" only
below 5%.
"""
from __future__ import annotations

import sys

from klas.errors import CacheError
from klas.evaluation.recovery import against_random
from klas.reading import read_json


def rows(path: str) -> list[str]:
    doc = read_json(path, what="recovery report", error=CacheError, fix="give a recovery.json of `klas recovery`")
    good = {tuple(c) for c in doc["good_set"]}
    evaluated = {(c["i"], c["j"]) for c in doc["configurations"]}
    out = [f"{path}: {len(evaluated)} configurations, {len(good)} good (δ = {doc['settings']['delta']})"]
    for name, m in doc["methods"].items():
        if "picked" not in m:
            continue
        picked = [tuple(c) for c in m["picked"] if tuple(c) in evaluated]
        hits = sum(c in good for c in picked)
        test = against_random({"good_found": hits, "picks": len(picked)}, len(good), len(evaluated))
        p = test["random_sets_at_least_as_good"]
        out.append(f"  {name:<14} {hits:>3} good of {len(picked):>3} picks   P(random >=) "
                   f"{'n/a' if p is None else f'{p:.3f}'}{'  beats random' if test['beats_random'] else ''}")
    return out


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print("\n".join(rows(arg)))
