"""What a set of anchors offers for stitching, before any data is read (`klas anchors SPEC ...`).

For each anchor: its blocks (layout, width, spatial grid, FLOPs) and stages (runs of one grid). For
each pair, cheaper to costlier: the grids they share, how many configurations (i, j) are grid-valid
and how many of those lie inside the pair's FLOPs range (the candidates of METHOD.md §5.2), and whether
SN-Net's stage-to-stage rules apply (the same number of stages) with how many configurations they give.
"""
from __future__ import annotations

from typing import Sequence

from klas.errors import UsageError
from klas.scoring.scores import AnchorEntry
from klas.selection.select import config_flops, grid_stages, grid_valid_pairs, snnet_nearest_pairs

__all__ = ["describe_anchors", "describe_lines"]


def _stages(grids: Sequence[Sequence[int]]) -> list[dict]:
    """Each run of one grid (selection's `grid_stages`) with its first and last block, 1-indexed."""
    return [{"grid": list(grids[first]), "blocks": [first + 1, first + count]} for first, count in grid_stages(grids)]


def describe_anchors(anchors: Sequence) -> dict:
    """{"anchors": [...], "pairs": [...]} for loaded Anchors (see the module docstring)."""
    entries = sorted((AnchorEntry.from_anchor(a) for a in anchors), key=lambda e: e.total_flops)
    by_name = {a.name: a for a in anchors}
    doc = {"anchors": [], "pairs": []}
    for e in entries:
        a = by_name[e.name]
        doc["anchors"].append({
            "name": e.name, "spec": e.spec, "depth": e.depth, "flops": e.total_flops, "prefix_tokens": e.prefix_tokens,
            "stages": _stages(e.grids),
            "blocks": [{"index": b.index, "name": b.name, "layout": b.layout, "width": b.width, "grid": list(b.grid),
                        "flops": a.flops.blocks[b.index - 1]} for b in a.block_info]})
    for n, f in enumerate(entries):
        for g in entries[n + 1:]:
            valid = grid_valid_pairs(f, g)
            lo, hi = f.total_flops, g.total_flops
            inside = [c for c in valid if lo <= config_flops(f, g, *c) <= hi]
            try:
                snnet = len(snnet_nearest_pairs(f, g))
            except UsageError:
                snnet = None
            doc["pairs"].append({
                "source": f.name, "target": g.name,
                "shared_grids": sorted({tuple(x) for x in f.grids} & {tuple(x) for x in g.grids}),
                "grid_valid": len(valid), "in_flops_range": len(inside), "snnet_nearest": snnet})
    return doc


def describe_lines(doc: dict) -> list[str]:
    """The same as plain text."""
    lines = []
    for a in doc["anchors"]:
        stages = ", ".join(f"{'x'.join(map(str, s['grid']))} (blocks {s['blocks'][0]}-{s['blocks'][1]})"
                           for s in a["stages"])
        lines.append(f"{a['name']} ({a['spec']}): {a['depth']} blocks, {a['flops'] / 1e6:.1f} MFLOPs, "
                     f"stages {stages}" + (f", {a['prefix_tokens']} class token(s)" if a["prefix_tokens"] else ""))
        for b in a["blocks"]:
            lines.append(f"  {b['index']:>4} {b['name']:<28} {b['layout']:<5} width {b['width']:>5}  grid "
                         f"{'x'.join(map(str, b['grid'])):<7} {b['flops'] / 1e6:8.2f} MFLOPs")
    if doc["pairs"]:
        lines.append("pairs (cheaper -> costlier): grid-valid configurations, those inside the pair's FLOPs range, "
                     "SN-Net's")
    for p in doc["pairs"]:
        shared = ", ".join("x".join(map(str, g)) for g in p["shared_grids"]) or "none"
        snnet = "n/a (stage counts differ)" if p["snnet_nearest"] is None else p["snnet_nearest"]
        lines.append(f"  {p['source']} -> {p['target']}: shared grids {shared}; {p['grid_valid']} valid, "
                     f"{p['in_flops_range']} in range; SN-Net {snnet}")
    return lines
