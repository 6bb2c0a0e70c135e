"""How far below the cheaper anchor each finetuned stitch ended, against its predicted D_v error.

    python tools/reach_in_routes.py PREDICTIONS.json ROUTES.csv [ROUTES.csv ...] [--ratio R]

klas-budget gives room only to stitches whose least-squares stitch's predicted D_v error is at most
R (`select.budget_max_error_ratio`, 2) times the cheaper anchor's (docs/METHOD.md §8, rule 5).
This prints, for every stitch of the predictions' pair in each routes.csv of `klas run`, its
predicted error as a multiple of the cheaper anchor's and its finetuned top-1 minus that anchor's
top-1 in the same supernet, then, per side of R, how many stitches ended at or above the anchor.
The predictions should come from the same adapted anchors as the routes (or say how they differ).
"""
from __future__ import annotations

import argparse
import csv
import math

from klas.errors import CacheError
from klas.predictions import read_stored_predictions


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise CacheError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise CacheError(f"{where}: {text!r} is not finite")
    return value


def stitch_gaps(predictions: dict, source: str, target: str, routes_path: str) -> dict[str, list]:
    """Per method of `routes_path`: [(i, j, error ratio, top-1 − cheaper anchor's top-1)], sorted by ratio."""
    anchor_error = 100.0 - predictions["anchors"][source]
    with open(routes_path, newline="") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, list] = {}
    for method in sorted({r["method"] for r in rows}):
        mine = [r for r in rows if r["method"] == method]
        anchor = [r for r in mine if r["source"] == r["target"] == source]
        if len(anchor) != 1:
            raise CacheError(f"{routes_path}: {method} has {len(anchor)} routes of anchor {source}, not 1")
        base = _number(anchor[0]["top1"], f"{routes_path} {method} {source}")
        gaps = []
        for r in mine:
            if (r["source"], r["target"]) != (source, target):
                continue
            key = (int(_number(r["i"], routes_path)), int(_number(r["j"], routes_path)))
            if key not in predictions["configurations"]:
                continue  # not a klas-budget candidate (outside the hop's FLOPs range)
            ratio = (100.0 - predictions["configurations"][key]) / max(anchor_error, 1e-9)
            gaps.append((key[0], key[1], ratio, _number(r["top1"], routes_path) - base))
        out[method] = sorted(gaps, key=lambda g: (g[2], g[0], g[1]))
    return out


def lines(predictions_path: str, routes_paths: list[str], ratio: float) -> list[str]:
    source, target, pred = read_stored_predictions(predictions_path)
    out = [f"{source} -> {target}: cheaper anchor {pred['anchors'][source]:.1f}% on D_v; ratio = predicted "
           f"error / its error; gap = finetuned top-1 - its finetuned top-1 (points)"]
    tally = {True: [], False: []}
    for path in routes_paths:
        for method, gaps in stitch_gaps(pred, source, target, path).items():
            out.append(f"{path} {method}: " + " ".join(f"({i},{j}) {r:.2f}:{g:+.1f}" for i, j, r, g in gaps))
            for _, _, r, g in gaps:
                tally[r <= ratio + 1e-9].append(g)
    for inside, gaps in ((True, tally[True]), (False, tally[False])):
        if gaps:
            out.append(f"ratio {'<=' if inside else '> '} {ratio:g}: {len(gaps)} stitches, {sum(g >= 0 for g in gaps)} "
                       f"at or above the anchor, gap {min(gaps):+.1f} to {max(gaps):+.1f}, "
                       f"median {sorted(gaps)[len(gaps) // 2]:+.1f}")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("predictions")
    parser.add_argument("routes", nargs="+")
    parser.add_argument("--ratio", type=float, default=2.0)
    args = parser.parse_args()
    print("\n".join(lines(args.predictions, args.routes, args.ratio)))
