"""The predictions file: one anchor pair's predicted stitch accuracies, as `klas-budget` reads them.

`<out>/predictions/<source>__<target>.json` (klas.evaluation.predict writes it)::

    {"format": "klas-predictions", "version": 1,
     "inputs": {"source", "target", "source_weights", "target_weights", "calibration_samples",
                "val_samples", "calibration_images", "seed"},
     "seconds": float,
     "configurations": [{"i", "j", "top1", "correct", "total"}, ...],
     "anchors": {name: {"top1", "correct", "total"}}}

Every top-1 is checked against its own counts; a file is used only for the pair it names and,
where the caller knows them, for exactly the inputs it records.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from klas.errors import CacheError
from klas.reading import read_json, whole_number

__all__ = ["PREDICTIONS", "FORMAT", "prediction_path", "prediction_problem", "read_predictions", "read_stored_predictions"]

PREDICTIONS = "predictions"  # the folder of a run (or of a recovery test) that holds one file per anchor pair
FORMAT = {"format": "klas-predictions", "version": 1}


def prediction_path(folder: Path, source: str, target: str) -> Path:
    """The file of the pair source -> target under a predictions folder."""
    return Path(folder) / f"{source}__{target}.json"


def _count_pair(d) -> bool:
    return isinstance(d, dict) and whole_number(d.get("correct")) and whole_number(d.get("total")) and 0 < d["total"] \
        and d["correct"] <= d["total"] and isinstance(d.get("top1"), (int, float)) \
        and abs(d["top1"] - 100.0 * d["correct"] / d["total"]) < 1e-6


def prediction_problem(doc: dict, source: str, target: str, configs: Sequence[tuple[int, int]],
                       inputs: dict | None = None) -> str | None:
    """Why a predictions file cannot stand for `configs` of source -> target (None: it can): another
    pair, other inputs (when given), a configuration missing, or a top-1 that disagrees with its counts."""
    if any(doc.get(k) != v for k, v in FORMAT.items()):
        return "not a klas predictions file (format klas-predictions, version 1)"
    recorded = doc.get("inputs")
    if not isinstance(recorded, dict) or (recorded.get("source"), recorded.get("target")) != (source, target):
        return f"it does not hold the predictions of {source} -> {target}"
    if inputs is not None and recorded != inputs:
        return "it was computed from other weights, samples or settings"
    seconds = doc.get("seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < float("inf"):
        return "its seconds are not a finite number >= 0"
    rows = doc.get("configurations")
    if not isinstance(rows, list) or not isinstance(doc.get("anchors"), dict):
        return "its configurations or anchors are malformed"
    have = {}
    for r in rows:
        if not (isinstance(r, dict) and type(r.get("i")) is int and type(r.get("j")) is int and _count_pair(r)):
            return f"configuration entry {str(r)[:80]} is malformed"
        have[(r["i"], r["j"])] = r
    missing = [c for c in configs if c not in have]
    if missing:
        return f"it lacks configuration {missing[0]}"
    for name in (source, target):
        if not _count_pair(doc["anchors"].get(name)):
            return f"its anchor entry for {name!r} is missing or malformed"
    return None


def read_predictions(path: Path, configs: Sequence[tuple[int, int]], *, inputs: dict | None = None,
                     pair: tuple[str, str] | None = None) -> dict:
    """The checked predictions at `path` as ``{"configurations": {(i, j): top-1}, "anchors": {name:
    top-1}, "images": the fewest images a configuration was counted on, "seconds": float}``; CacheError when it cannot stand for `configs` of the pair (given by
    `pair` or by `inputs`) with these inputs."""
    source, target = pair or (inputs["source"], inputs["target"])
    path = Path(path)
    doc = read_json(path, what="predictions file", error=CacheError, inside=path.parent,
                    fix=f"delete {path} to predict again")
    return _checked(path, doc, source, target, configs, inputs)


def read_stored_predictions(path: Path) -> tuple[str, str, dict]:
    """A stored predictions file for the pair and configurations it records itself (tools reading
    docs/results): (source, target, what `read_predictions` returns), checked the same way."""
    path = Path(path)
    doc = read_json(path, what="predictions file", error=CacheError, fix="give a predictions file of `klas run`")
    recorded = doc.get("inputs")
    if not isinstance(recorded, dict) or not all(isinstance(recorded.get(k), str) for k in ("source", "target")):
        raise CacheError(f"{path}: it names no anchor pair (inputs.source and inputs.target); give a predictions "
                         "file of `klas run`")
    rows = doc.get("configurations")
    configs = [(r.get("i"), r.get("j")) for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
    source, target = recorded["source"], recorded["target"]
    return source, target, _checked(path, doc, source, target, configs, None)


def _checked(path: Path, doc: dict, source: str, target: str, configs: Sequence[tuple[int, int]],
             inputs: dict | None) -> dict:
    problem = prediction_problem(doc, source, target, configs, inputs)
    if problem:
        raise CacheError(f"{path}: {problem}; delete it to predict again")
    return {"configurations": {(r["i"], r["j"]): float(r["top1"]) for r in doc["configurations"]},
            "anchors": {k: float(doc["anchors"][k]["top1"]) for k in (source, target)},
            "images": min(int(r["total"]) for r in doc["configurations"]) if doc["configurations"] else None,
            "seconds": float(doc["seconds"])}
