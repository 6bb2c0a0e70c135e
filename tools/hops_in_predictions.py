"""klas-budget's rule 3 on stored predictions: the first version against the one within the noise.

    python tools/hops_in_predictions.py PREDICTIONS.json [PREDICTIONS.json ...] [--ratio R]

For each predictions file of `klas run` (out/predictions/<f>__<g>.json, or the copies under
docs/results), prints the two anchors' top-1 on the D_v images, whether the hop pays under rule 3
as first committed (the costlier anchor strictly more accurate) and as it is now (the cheaper anchor
not better beyond 1.96 standard errors of the difference, klas.selection.budget.hop_pays), and how
many candidates are within reach of the cheaper anchor (rule 5, ratio R). A hop where the two
versions differ and no candidate is within reach keeps no stitch under either (docs/METHOD.md §8).
"""
from __future__ import annotations

import argparse

from klas.predictions import read_stored_predictions
from klas.selection.budget import MAX_ERROR_RATIO, hop_pays, within_reach


def line(path: str, ratio: float) -> str:
    source, target, pred = read_stored_predictions(path)
    anchors, images = pred["anchors"], pred["images"]
    first = hop_pays(source, target, anchors)  # no count: strictly more accurate
    now = hop_pays(source, target, anchors, images)
    reach = sum(within_reach(v, anchors[source], ratio) for v in pred["configurations"].values())
    return (f"{path}: {source} {anchors[source]:.1f}% / {target} {anchors[target]:.1f}% on {images} D_v images; "
            f"rule 3 first version {'pays' if first else 'stops'}, within the noise {'pays' if now else 'stops'}; "
            f"{reach} of {len(pred['configurations'])} candidates within reach (ratio {ratio:g})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("predictions", nargs="+")
    parser.add_argument("--ratio", type=float, default=MAX_ERROR_RATIO)
    args = parser.parse_args()
    print("\n".join(line(p, args.ratio) for p in args.predictions))
