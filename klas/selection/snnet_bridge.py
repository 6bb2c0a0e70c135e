"""SN-Net's own structures, both ways: a selection as the configuration list SN-Net's `SNNet`
builds in its `__init__`, that list read back, and SN-Net's own config files read for their anchors.

SN-Net's list (`SNNet.stitch_configs`, in order; the JSON that `to_snnet_configs` writes holds it
under "stitch_configs")::

    {"comb_id": [k], "stitch_cfgs": [], "stitch_layers": []}                 # anchor k alone, first
    {"comb_id": [f, g], "stitch_cfgs": [[a, b]], "stitch_layers": [l]}       # plain models (DeiT)
    {"comb_id": [f, g], "stage_id": s, "stitch_cfgs": [[a, b]], "stitch_layers": [l]}  # ResNet / Swin

f, g index the anchors, cheapest first; (a, b) are 0-indexed: the front runs its blocks 0..a, the
stitching layer, then the end runs its blocks b.. (klas's (i, j) = (a + 1, b)). In hierarchical
models (several grids) a and b are local to stage s, the stage's blocks counted from 0 (b may be
the stage's depth: the end resumes after the whole stage, a place SN-Net's rules never pick). l is the
stitching layer, shared by neighbouring configurations as SN-Net's sliding window shares it (equal
depths: windows of 2 blocks, stride 1; unequal: the k-th configuration of a stage takes layer
e_k, e the nearest-neighbour map of the front's blocks onto the end's); a configuration that
SN-Net's rules do not generate gets a layer of its own after those.

The patch point in SN-Net's code: in `SNNet.__init__`, where the list comes from its generator
(`get_stitch_configs(...)`), take "stitch_configs" from this file instead (tuples for comb_id and
each stitch_cfgs entry), and size each combination's stitching layers by "num_stitches" (one
entry per stage and combination: the largest layer id + 1). Nothing else changes: its forward,
least-squares initialisation and training read only these fields.
"""
from __future__ import annotations

from pathlib import Path

from klas.errors import UsageError
from klas.reading import whole_number
from klas.scoring.scores import Scores
from klas.selection.export import imported_pair, imported_selection
from klas.selection.select import Selection, configurations, snnet_stage_configs, snnet_stages, unscored_config

__all__ = ["snnet_stage_configs", "to_snnet_configs", "from_snnet_configs", "snnet_config_anchors",
           "snnet_rules_selection", "SNNET_CONFIGS_FORMAT"]

SNNET_CONFIGS_FORMAT = "klas-snnet-configs"


def _stages(f, g):
    if getattr(f, "grids", None) is None or getattr(g, "grids", None) is None:
        raise UsageError(f"the selection does not record the grids of {f.name} and {g.name} (written by an older "
                         "klas): run `klas select` again to export it in SN-Net's form")
    return snnet_stages(f, g)


def _local(f, g, sf, sg, i: int, j: int):
    """(stage or None, a, b local) of klas's (i, j) between f and g, whose stages are sf and sg
    (`_stages`): the stage is the one of f's block a = i − 1 and of g's block j − 1, whose outputs
    the stitch joins; b counts g's blocks from the stage's first (b = the stage's depth: g resumes
    after the whole stage). UsageError where SN-Net cannot say it (j = 0, or the two blocks in
    different stages)."""
    a, b = i - 1, j
    if len(sf) == 1:
        return None, a, b
    s = next(k for k, (o, d) in enumerate(sf) if o <= a < o + d)
    og, dg = sg[s]
    if not og < b <= og + dg:
        raise UsageError(f"configuration ({i}, {j}) of {f.name} -> {g.name} leaves stage {s} of {f.name} but enters "
                         f"{g.name} outside its stage {s}: SN-Net stitches within a stage")
    return s, a - sf[s][0], b - og


def to_snnet_configs(selection: Selection) -> dict:
    """SN-Net's configuration list of `selection` (module docstring), with the anchors' specs."""
    anchors = list(selection.anchors)
    index = {a.name: k for k, a in enumerate(anchors)}
    configs = [{"comb_id": [k], "stitch_cfgs": [], "stitch_layers": []} for k in range(len(anchors))]
    rows, sizes = [], {}
    for pair in selection.pairs:
        f, g = next(a for a in anchors if a.name == pair.source), next(a for a in anchors if a.name == pair.target)
        sf, sg = _stages(f, g)
        hierarchical = len(sf) > 1
        comb = [index[f.name], index[g.name]]
        by_stage = {}  # SN-Net's configurations of each stage (of the plain model: key None)
        for c in pair.selected:
            s, a, b = _local(f, g, sf, sg, c.i, c.j)
            if s not in by_stage:
                d_f, d_g = (sf[s][1], sg[s][1]) if hierarchical else (f.depth, g.depth)
                by_stage[s] = snnet_stage_configs(d_f, d_g, hierarchical=hierarchical)
            known = by_stage[s]
            spot = next((n for n, (x, y, _) in enumerate(known) if (x, y) == (a, b)), None)
            rows.append(((s if s is not None else -1), comb, spot, a, b, known))
    for s, comb, spot, a, b, known in sorted(rows, key=lambda r: (r[0], r[1], r[2] is None, r[2] or 0, r[3], r[4])):
        key = (s, tuple(comb))
        if spot is not None:
            layer = known[spot][2]
        else:  # not one of SN-Net's: a layer of its own after those of its rules
            first = max((x[2] for x in known), default=-1) + 1
            layer = max(first, sizes.get(key, first))
        sizes[key] = max(sizes.get(key, 0), layer + 1)
        configs.append({"comb_id": comb, **({"stage_id": s} if s >= 0 else {}), "stitch_cfgs": [[a, b]],
                        "stitch_layers": [layer]})
    return {"format": SNNET_CONFIGS_FORMAT, "version": 1, "method": selection.method,
            "anchors": [a.spec for a in anchors], "stitch_configs": configs,
            "num_stitches": [{"comb_id": list(k[1]), **({"stage_id": k[0]} if k[0] >= 0 else {}), "count": n}
                             for k, n in sorted(sizes.items())]}


def from_snnet_configs(doc: dict, scores: Scores, where: str = "the SN-Net configuration list") -> Selection:
    """The selection an SN-Net configuration list (as `to_snnet_configs` writes it, or SN-Net's own
    list with its anchors' specs beside it) describes, scored with `scores`: method "imported"."""
    def refuse(what: str):
        raise UsageError(f"{where}: {what}")

    if not isinstance(doc, dict) or not isinstance(doc.get("anchors"), list) \
            or not isinstance(doc.get("stitch_configs"), list):
        refuse("needs 'anchors' (spec strings, cheapest first) and 'stitch_configs' (SN-Net's list)")
    specs = doc["anchors"]
    by_spec = {a.spec: a for a in scores.anchors}
    missing = [s for s in specs if s not in by_spec]
    if missing:
        refuse(f"the scores have no anchor(s) {missing}; score those anchors first")
    picks: dict[tuple[str, str], list] = {}
    for n, entry in enumerate(doc["stitch_configs"]):
        comb = entry.get("comb_id") if isinstance(entry, dict) else None
        if not isinstance(comb, list) or not 1 <= len(comb) <= 2 or not all(
                whole_number(k, 0, len(specs) - 1) for k in comb):
            refuse(f"entry {n}: comb_id must list one or two indices into its {len(specs)} anchors")
        if len(comb) == 1:
            continue
        cfgs = entry.get("stitch_cfgs")
        if (not isinstance(cfgs, list) or len(cfgs) != 1 or not isinstance(cfgs[0], list) or len(cfgs[0]) != 2
                or not all(whole_number(v) for v in cfgs[0])):
            refuse(f"entry {n}: stitch_cfgs must hold one pair [a, b] of block indices")
        f, g = by_spec[specs[comb[0]]], by_spec[specs[comb[1]]]
        if f.total_flops >= g.total_flops:
            refuse(f"entry {n}: front {f.name} is not cheaper than end {g.name}")
        sf, sg = _stages(f, g)
        a, b = cfgs[0]
        stage = entry.get("stage_id")
        if len(sf) > 1:
            if isinstance(stage, bool) or not isinstance(stage, int) or not 0 <= stage < len(sf):
                refuse(f"entry {n}: stage_id must be a stage of {f.name} (0..{len(sf) - 1})")
            if not (a < sf[stage][1] and 0 < b <= sg[stage][1]):
                refuse(f"entry {n}: (a={a}, b={b}) lies outside stage {stage} ({sf[stage][1]} and {sg[stage][1]} blocks)")
            a, b = a + sf[stage][0], b + sg[stage][0]
        elif not (a < f.depth and b < g.depth):
            refuse(f"entry {n}: (a={a}, b={b}) lies outside {f.name} -> {g.name} ({f.depth} and {g.depth} blocks)")
        picks.setdefault((f.name, g.name), []).append((a + 1, b))
    pairs = []
    for (source, target), chosen in picks.items():
        f, g = scores.anchor(source), scores.anchor(target)
        scored = {(c.i, c.j): c for c in configurations(scores, source, target)}
        pairs.append(imported_pair(scores, source, target, scored,
                                   [scored.get(k) or unscored_config(f, g, *k) for k in sorted(set(chosen))]))
    return imported_selection(scores, pairs, refuse)


def snnet_config_anchors(doc: dict, where: str = "the SN-Net config") -> list[str]:
    """The anchor specs an SN-Net config file names: "anchors" (timm model names, DeiT's and
    ResNet/Swin's JSON) or MODEL.WEIGHTS (checkpoint paths, Swin's YAML: the file name up to its
    resolution, e.g. swin_tiny_patch4_window7_224), each as `timm:NAME`. One line naming a name
    timm does not know."""
    import timm

    from klas.anchors.timm_models import close_timm_names

    names = doc.get("anchors") if isinstance(doc, dict) else None
    if names is None and isinstance(doc, dict) and isinstance(doc.get("MODEL"), dict):
        weights = doc["MODEL"].get("WEIGHTS")
        if isinstance(weights, list) and all(isinstance(w, str) for w in weights):
            names = []
            for w in weights:
                stem = Path(w).stem
                cut = stem.find("_224")
                names.append(stem[:cut + 4] if cut >= 0 else stem)
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise UsageError(f"{where}: names no anchors (expected 'anchors': [timm names] or MODEL.WEIGHTS)")
    for n in names:
        if not timm.is_model(n):
            close = close_timm_names(n)
            raise UsageError(f"{where}: anchor {n!r} is not a timm model name klas knows"
                             + (f" (similar: {', '.join(close)})" if close else "")
                             + "; score it under a spec and import a configuration list instead")
    return [f"timm:{n}" for n in names]


def snnet_rules_selection(scores: Scores, specs: list[str], where: str = "the SN-Net config") -> Selection:
    """SN-Net's own configurations for the anchors `specs` (its generator's rules, `snnet-nearest`),
    as an imported selection over `scores`, which must hold exactly those anchors."""
    from klas.selection.select import select_snnet_nearest

    have = sorted(a.spec for a in scores.anchors)
    if sorted(specs) != have:
        raise UsageError(f"{where}: names anchors {specs}; the scores hold {have}: score the config's anchors")
    sel = select_snnet_nearest(scores)
    sel.method = "imported"
    return sel

