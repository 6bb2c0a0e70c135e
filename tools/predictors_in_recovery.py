"""How well each predictor ranks the configurations within a FLOPs bucket, from stored recovery tests.

    python tools/predictors_in_recovery.py docs/results/recovery_*/recovery.json

For every method that scores configurations, the within-bucket Spearman(score, finetuned top-1)
the test reported, beside the same figure for the least-squares stitch's own top-1 before any
training (each configuration's `top1_init`, counted on the test's images), computed by the same
code (klas.evaluation.recovery.score_method) with the score −top1_init, so that for every row
negative is good. Buckets of three or more configurations count, weighted by their size.
"""
from __future__ import annotations

import sys

from klas.errors import CacheError
from klas.evaluation.recovery import score_method
from klas.reading import read_json


def rows(path: str) -> list[str]:
    doc = read_json(path, what="recovery report", error=CacheError, fix="give a recovery.json of `klas recovery`")
    configs = {(c["i"], c["j"]): c for c in doc["configurations"]}
    acc = {k: c["top1"] for k, c in configs.items()}
    bucket = {k: c["bucket"] for k, c in configs.items()}
    good = {tuple(c) for c in doc["good_set"]}
    init = score_method(list(configs), acc, bucket, good, {k: -c["top1_init"] for k, c in configs.items()})
    out = [f"{path}: {len(configs)} configurations in {len(set(bucket.values()))} buckets",
           f"  {'least-squares top-1 (no training)':<36} {init['spearman_score_top1_within_buckets']:+.3f}"]
    for name, m in doc["methods"].items():
        rho = m.get("spearman_score_top1_within_buckets")
        if rho is not None:
            out.append(f"  {name:<36} {rho:+.3f}")
    return out


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    for p in paths:
        print("\n".join(rows(p)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
