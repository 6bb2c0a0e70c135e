"""Exchange formats for selections: SN-Net's configuration form, a flat CSV, and the reverse import.

SN-Net form (JSON, written by `to_snnet`, read by `from_snnet`)::

    {"format": "snnet-stitch-configs", "version": 1,
     "anchors": ["cifar-resnet:20", ...],                      # anchor specs, cheapest first
     "stitch_configs": [{"front": 0, "end": 2,                 # indices into "anchors"
                         "configs": [[a, b], ...]}]}           # 0-indexed: front blocks 0..a, end blocks b..m-1

A KLAS configuration (i, j) (1-indexed) is SN-Net's (a, b) = (i − 1, j).
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from klas.errors import UsageError
from klas.scoring.scores import Scores
from klas.selection.select import PairSelection, Selection, configurations, unscored_config
from klas.stitches import route_index_problem

__all__ = ["to_snnet", "write_csv", "from_snnet", "SNNET_FORMAT"]

SNNET_FORMAT = "snnet-stitch-configs"


def to_snnet(selection: Selection) -> dict:
    """SN-Net's form of a selection."""
    specs = [a.spec for a in selection.anchors]
    index = {a.name: k for k, a in enumerate(selection.anchors)}
    return {
        "format": SNNET_FORMAT, "version": 1, "anchors": specs, "method": selection.method,
        "stitch_configs": [{
            "front": index[p.source], "end": index[p.target],
            "configs": [[c.i - 1, c.j] for c in p.selected],
        } for p in selection.pairs],
    }


def write_csv(selection: Selection, path: str | os.PathLike) -> Path:
    """One row per selected configuration: anchor pair, i, j (KLAS), a, b (SN-Net), FLOPs, Ω, Σ, Γ, bucket."""
    from klas.files import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", "target", "i", "j", "snnet_a", "snnet_b", "flops", "omega", "sigma", "gamma", "bucket"])
        for c in selection.selected:
            w.writerow([c.source, c.target, c.i, c.j, c.i - 1, c.j, c.flops, _cell(c.omega), _cell(c.sigma),
                        _cell(c.gamma), c.bucket])
    return path


def _cell(x: float):
    """A CSV cell: an undefined score (NaN) is left empty, as selection.json writes it null."""
    return "" if x != x else x


def from_snnet(snnet: dict, scores: Scores, where: str = "the SN-Net configuration") -> Selection:
    """Scores someone else's SN-Net candidate set with our Θ: a Selection of method "imported".

    Anchors are matched by spec (compared as text, never loaded); configurations with b = 0
    (outside KLAS's scores) keep NaN Ω, Σ, Γ. Every index is checked to lie in range.
    """
    def refuse(what: str):
        raise UsageError(f"{where}: {what}")

    if not isinstance(snnet, dict) or snnet.get("format") != SNNET_FORMAT:
        refuse(f"not an SN-Net configuration file (expected format {SNNET_FORMAT!r})")
    specs, entries = snnet.get("anchors"), snnet.get("stitch_configs")
    if not isinstance(specs, list) or not all(isinstance(x, str) for x in specs) or not isinstance(entries, list):
        refuse("anchors must be a list of spec strings and stitch_configs a list")
    by_spec = {a.spec: a for a in scores.anchors}
    missing = [s for s in specs if s not in by_spec]
    if missing:
        refuse(f"the scores have no anchor(s) {missing}; score those anchors first")

    def index(x, what: str) -> int:
        if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < len(specs):
            refuse(f"{what} {x!r} is not an index into its {len(specs)} anchors (0..{len(specs) - 1})")
        return x

    pairs = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("configs"), list):
            refuse(f"stitch_configs entry {str(entry)[:80]} needs front, end and configs")
        f = by_spec[specs[index(entry.get("front"), "front")]]
        g = by_spec[specs[index(entry.get("end"), "end")]]
        if f.total_flops >= g.total_flops:
            refuse(f"front {f.name} is not cheaper than end {g.name}: a stitch runs from the cheaper anchor into "
                   "the costlier one (front and end swapped?)")
        scored = {(c.i, c.j): c for c in configurations(scores, f.name, g.name)}
        chosen = []
        for item in entry["configs"]:
            if (not isinstance(item, list) or len(item) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) for v in item)):
                refuse(f"configuration {str(item)[:40]} is not a pair of integers [a, b]")
            a, b = item
            i, j = a + 1, b
            if route_index_problem(i, j, f.depth, g.depth):
                refuse(f"configuration (a={a}, b={b}) is outside {f.name} -> {g.name} (a in 0..{f.depth - 1}, "
                       f"b in 0..{g.depth - 1})")
            if (i, j) not in scored and j > 0 and list(f.grids[i - 1]) != list(g.grids[j - 1]):
                refuse(f"configuration (a={a}, b={b}) joins different grids {f.grids[i - 1]} and {g.grids[j - 1]}")
            chosen.append(scored.get((i, j)) or unscored_config(f, g, i, j))
        pairs.append(imported_pair(scores, f.name, g.name, scored, chosen))
    return imported_selection(scores, pairs, refuse)


def imported_pair(scores: Scores, source: str, target: str, scored: dict, chosen) -> PairSelection:
    """One anchor pair of an imported selection: every scored configuration, the chosen ones
    (Configs), cheapest first."""
    f, g = scores.anchor(source), scores.anchor(target)
    return PairSelection(source, target, sorted(scored.values(), key=lambda c: (c.flops, c.i, c.j)),
                         sorted(chosen, key=lambda c: (c.flops, c.i, c.j)),
                         [float(f.total_flops), float(g.total_flops)], [math.nan])


def imported_selection(scores: Scores, pairs: list[PairSelection], refuse) -> Selection:
    """A selection of method "imported" from its pairs, which must chain the anchors from cheaper to
    costlier (`refuse(message)` otherwise)."""
    pairs = sorted(pairs, key=lambda p: scores.anchor(p.source).total_flops)
    chain = [pairs[0].source] if pairs else []
    for p in pairs:
        if p.source != chain[-1]:
            refuse(f"the configurations do not form a chain of anchors from cheaper to costlier (the pair "
                   f"{p.source} -> {p.target} does not start where the previous one ends, {chain[-1]})")
        chain.append(p.target)
    return Selection(method="imported", chain=chain, chain_rule="imported", tau=math.nan, tau_mode="none", pairs=pairs,
                     anchors=scores.anchors,
                     last_block={"order": [a.name for a in scores.anchors], "theta": scores.last_block().tolist()})
