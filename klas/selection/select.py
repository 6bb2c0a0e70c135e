"""Selection: the anchor chain, the stitch configurations, FLOPs buckets, τ, coverage, the set S.

METHOD.md §3 and §5, from the scores of `klas score`:

1. anchor chain: anchors sorted by FLOPs; among the chains from the cheapest to the costliest
   (each hop to a costlier anchor) take the one whose largest hop Θ (between the anchors' heads)
   is smallest; ties go to fewer hops. Rules are pluggable (`CHAIN_RULES`).
2. for each hop (f, g): every configuration (i, j), 1 ≤ i ≤ m_f − 1, 1 ≤ j ≤ m_g − 1, whose
   blocks have the same grid, with its FLOPs (stem_f + f_1..f_i + stitching layer + g_{j+1}..g_m +
   head_g), Ω, Σ and Γ;
3. the FLOPs range [FLOPs(f), FLOPs(g)] in equal-width buckets; per bucket τ_b = (1 + τ)·min Γ
   (relative) or τ (absolute); keep Γ ≤ τ_b and the argmin;
4. coverage: from m_g − 1 buckets, refine until every target block j is in a kept configuration
   or a cap is reached, then add the best configuration of each block still uncovered;
5. S = the union over hops, plus the anchors.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Sequence

import torch

from klas.anchors.base import FLOPS_UNIT
from klas.errors import UsageError
from klas.limits import FLOPS_RANGE_RULES, MAX_BUCKETS
from klas.reading import finite_number, plain_text, whole_number
from klas.selection.options import SelectSection as _Defaults  # each default declared once, there
from klas.stitches import Route, route_index_problem, scored_pairs, stitch_flops, stitched_flops
from klas.scoring.scores import AnchorEntry, Scores

__all__ = [
    "Config", "PairSelection", "Selection", "SelectedAnchor", "CHAIN_RULES", "anchor_chain", "configurations",
    "config_flops", "grid_valid_pairs", "grid_stages", "unscored_config", "select_pair", "select", "select_random", "size_matched",
    "snnet_nearest_pairs", "snnet_stitched_stages", "snnet_stage_configs", "snnet_stages",
    "select_snnet_nearest", "in_flops_range", "pair_candidates", "first_bucket_count", "config_from_json", "read_selection",
]


@dataclass(frozen=True)
class Config:
    """One stitch (i, j) between source f and target g (1-indexed, KLAS notation)."""

    source: str
    target: str
    i: int
    j: int
    flops: int
    omega: float
    sigma: float
    gamma: float
    bucket: int = -1

    @property
    def route(self) -> Route:
        """This stitch's identity (klas.stitches.Route; its `name` keys evaluations)."""
        return Route.of(self)


@dataclass(frozen=True)
class SelectedAnchor:
    """An anchor as a saved selection records it: name, spec, depth and total FLOPs per image (a
    live run's selection holds klas.scoring.scores.AnchorEntry instead, which has these four among
    its fields)."""

    name: str
    spec: str
    depth: int
    total_flops: int
    grids: tuple | None = None  # each block's output grid, where the file records it


@dataclass
class PairSelection:
    source: str
    target: str
    configs: list[Config]  # every valid configuration, bucket assigned
    selected: list[Config]
    edges: list[float]  # bucket edges in FLOPs, len = buckets + 1
    tau: list[float]  # threshold per bucket (nan for an empty bucket)
    uncovered_added: list[int] = field(default_factory=list)  # target blocks added by the coverage rule


@dataclass
class Selection:
    method: str
    chain: list[str]
    chain_rule: str
    tau: float
    tau_mode: str
    pairs: list[PairSelection]
    anchors: list[AnchorEntry] | list[SelectedAnchor]
    last_block: dict  # {"order": [...], "theta": [[...]]}
    notes: dict = field(default_factory=dict)  # a method's record of its decisions (plain JSON values)

    @property
    def selected(self) -> list[Config]:
        return [c for p in self.pairs for c in p.selected]

    @classmethod
    def from_json(cls, doc: dict) -> "Selection":
        """The inverse of `to_json`, for a document `read_selection` has checked (nulls -> NaN)."""
        nan = lambda x: math.nan if x is None else x  # noqa: E731
        pairs = [PairSelection(p["source"], p["target"], [config_from_json(c) for c in p["configurations"]],
                               [config_from_json(c) for c in p["selected"]], [nan(e) for e in p["bucket_edges"]],
                               [nan(t) for t in p["tau_per_bucket"]], list(p.get("coverage_added_blocks", [])))
                 for p in doc["pairs"]]
        anchors = [SelectedAnchor(a["name"], a["spec"], a["depth"], a["flops"],
                                  tuple(tuple(g) for g in a["grids"]) if a.get("grids") is not None else None)
                   for a in doc["anchors"]]
        return cls(method=doc["method"], chain=list(doc["chain"]), chain_rule=doc.get("chain_rule", ""),
                   tau=nan(doc.get("tau")), tau_mode=doc.get("tau_mode", ""), pairs=pairs, anchors=anchors,
                   last_block=doc.get("last_block", {}), notes=dict(doc.get("notes") or {}))

    def to_json(self) -> dict:
        doc = {
            "format": "klas-selection", "version": 1, "flops_unit": FLOPS_UNIT, "method": self.method, "chain": self.chain,
            "chain_rule": self.chain_rule, "tau": _number(self.tau), "tau_mode": self.tau_mode,
            "anchors": [{"name": a.name, "spec": a.spec, "depth": a.depth, "flops": a.total_flops,
                         **({"grids": [list(g) for g in a.grids]} if getattr(a, "grids", None) is not None else {})}
                        for a in self.anchors],
            "last_block": self.last_block,
            "pairs": [{
                "source": p.source, "target": p.target, "bucket_edges": p.edges,
                "tau_per_bucket": [_number(t) for t in p.tau],
                "coverage_added_blocks": p.uncovered_added,
                "selected": [_config_json(c) for c in p.selected],
                "configurations": [_config_json(c) for c in p.configs],
            } for p in self.pairs],
        }
        if self.notes:
            doc["notes"] = self.notes
        return doc


def _number(x: float) -> float | None:
    """JSON has no NaN: an undefined value (an unscored configuration's Γ, an empty bucket's τ) is null."""
    return None if x != x else x


def _config_json(c: Config) -> dict:
    return {k: _number(v) if isinstance(v, float) else v for k, v in asdict(c).items()}


def read_selection(path, *, legacy_flops: bool = False) -> Selection:
    """A selection.json file as a Selection, every field checked first (types, anchor names, block
    indices in range, finite numbers or null); CacheError naming the file otherwise. Specs in it
    are identifiers only: nothing here loads an anchor.

    legacy_flops: also accept a file of an older klas, whose FLOPs count each multiply-accumulate as
    two (no `flops_unit`); they are kept as recorded, so only for readers that use no FLOPs from it
    (which configurations were picked) or compare them only among themselves."""
    from pathlib import Path

    from klas.errors import CacheError
    from klas.reading import read_json

    path = Path(path)
    fix = "run `klas select` again"
    doc = read_json(path, what="klas selection", fix=fix, error=CacheError, inside=path.parent)
    problem = _selection_problem(doc, legacy_flops=legacy_flops)
    if problem:
        raise CacheError(f"{path}: {problem}; {fix}")
    return Selection.from_json(doc)


def _is_number_or_null(x) -> bool:
    return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x))


def _selection_problem(doc: dict, *, legacy_flops: bool = False) -> str | None:
    """What is wrong with a parsed selection.json (None if nothing); `legacy_flops`: see `read_selection`."""
    if doc.get("format") != "klas-selection" or doc.get("version") != 1:
        return "not a klas selection (format klas-selection, version 1)"
    if doc.get("flops_unit") != FLOPS_UNIT and not (legacy_flops and "flops_unit" not in doc):
        return (f"its FLOPs are not recorded as {FLOPS_UNIT!r} (multiply-accumulates) but as {doc.get('flops_unit')!r} "
                "(an older klas counted each multiply-add as two FLOPs); select again")
    if not isinstance(doc.get("method"), str) or not isinstance(doc.get("chain"), list):
        return "method or chain has the wrong type"
    if not isinstance(doc.get("notes", {}), dict):
        return "notes is not a mapping"
    anchors = doc.get("anchors")
    if not isinstance(anchors, list) or not anchors:
        return "anchors is not a list"
    depth = {}
    for a in anchors:
        if not (isinstance(a, dict) and plain_text(a.get("name"), 255) and plain_text(a.get("spec"))
                and whole_number(a.get("depth"), 2, 10_000) and whole_number(a.get("flops"))):
            return f"anchor entry {str(a)[:80]} is malformed"
        grids = a.get("grids")
        if grids is not None and not (isinstance(grids, list) and len(grids) == a["depth"] and all(
                isinstance(g, list) and 1 <= len(g) <= 2 and all(whole_number(v, 1, 10**6) for v in g) for g in grids)):
            return f"anchor {a['name']}'s grids are not one grid of 1 or 2 positive sizes per block"
        depth[a["name"]] = a["depth"]
    if len(depth) != len(anchors) or not all(isinstance(n, str) and n in depth for n in doc["chain"]):
        return "anchor names repeat, or the chain names an anchor not listed"
    flops = {a["name"]: a["flops"] for a in anchors}
    chain = doc["chain"]
    if any(flops[a] >= flops[b] for a, b in zip(chain, chain[1:])):
        return "the chain does not run from cheaper to costlier anchors (front and end swapped?)"
    pairs = doc.get("pairs")
    if not isinstance(pairs, list):
        return "pairs is not a list"
    hops = [[a, b] for a, b in zip(chain, chain[1:])]
    if [[p.get("source"), p.get("target")] if isinstance(p, dict) else None for p in pairs] != hops:
        return (f"its pairs are not the chain's hops {' -> '.join(chain)} in order, each from the cheaper anchor "
                "to the costlier (front and end swapped?)")
    keys = {f.name for f in Config.__dataclass_fields__.values()}
    for p in pairs:
        if (not isinstance(p, dict) or not isinstance(p.get("source"), str) or not isinstance(p.get("target"), str)
                or p["source"] not in depth or p["target"] not in depth):
            return f"a pair names anchors not listed ({str(p)[:80]})"
        f, g = depth[p["source"]], depth[p["target"]]
        lists = [p.get("selected"), p.get("configurations"), p.get("bucket_edges"), p.get("tau_per_bucket"),
                 p.get("coverage_added_blocks", [])]
        if not all(isinstance(x, list) for x in lists):
            return f"pair {p['source']} -> {p['target']} lacks its lists"
        if not all(_is_number_or_null(x) for x in p["bucket_edges"] + p["tau_per_bucket"]):
            return f"pair {p['source']} -> {p['target']} has non-numeric bucket edges or thresholds"
        for c in p["selected"] + p["configurations"]:
            if not (isinstance(c, dict) and set(c) == keys and c["source"] == p["source"]
                    and c["target"] == p["target"] and whole_number(c["flops"]) and whole_number(c["bucket"], -1, MAX_BUCKETS)
                    and all(_is_number_or_null(c[k]) for k in ("omega", "sigma", "gamma"))):
                return f"configuration {str(c)[:100]} of {p['source']} -> {p['target']} is malformed"
            problem = route_index_problem(c["i"], c["j"], f, g)
            if problem:
                return f"configuration {str(c)[:100]} of {p['source']} -> {p['target']}: {problem}"
    return None


def config_from_json(d: dict) -> Config:
    """The inverse of the selection.json form of a configuration (null -> NaN)."""
    return Config(**{k: (float("nan") if v is None else v) for k, v in d.items()})


# -- anchor chain -------------------------------------------------------------------------------

def _chain_minimax(theta: torch.Tensor, flops: Sequence[int]) -> list[int]:
    """Indices (in FLOPs order) of the chain cheapest -> costliest minimising the largest hop Θ,
    then the number of hops, then (ties) the lexicographically first. theta[a, b]: Θ between heads,
    row = source.

    Two passes, because (largest hop, hops) does not decompose over prefixes: first the smallest
    achievable largest hop, then the fewest hops using only hops no larger than it.
    """
    n = len(flops)
    hop = [[float(theta[a, b]) if flops[a] < flops[b] else math.inf for b in range(n)] for a in range(n)]
    bottleneck = [-math.inf] + [math.inf] * (n - 1)
    for b in range(1, n):
        bottleneck[b] = min((max(bottleneck[a], hop[a][b]) for a in range(b)), default=math.inf)
    limit = bottleneck[-1]
    if math.isinf(limit):
        raise UsageError("no chain of strictly increasing FLOPs joins the cheapest and the costliest anchor")
    fewest: list[list[int] | None] = [[0]] + [None] * (n - 1)
    for b in range(1, n):
        for a in range(b):
            if fewest[a] is None or hop[a][b] > limit:
                continue
            cand = fewest[a] + [b]
            if fewest[b] is None or (len(cand), cand) < (len(fewest[b]), fewest[b]):
                fewest[b] = cand
    return fewest[-1]


def _chain_nearest(theta: torch.Tensor, flops: Sequence[int]) -> list[int]:
    """Every anchor in FLOPs order (SN-Net's neighbouring pairs)."""
    return list(range(len(flops)))


CHAIN_RULES: dict[str, Callable[[torch.Tensor, Sequence[int]], list[int]]] = {
    "minimax": _chain_minimax,
    "nearest": _chain_nearest,
}


def anchor_chain(scores: Scores, rule: str = _Defaults.chain_rule) -> list[str]:
    """Anchor names along the chosen chain, cheapest first."""
    if rule not in CHAIN_RULES:
        raise UsageError(f"chain rule must be one of {sorted(CHAIN_RULES)}, got {rule!r}")
    flops = [a.total_flops for a in scores.anchors]
    return [scores.anchors[k].name for k in CHAIN_RULES[rule](scores.last_block(), flops)]


# -- configurations -----------------------------------------------------------------------------

def config_flops(f: AnchorEntry, g: AnchorEntry, i: int, j: int) -> int:
    """FLOPs of the network stem_f + f_1..f_i + stitching layer + g_{j+1}..g_m + head_g (j = 0:
    the whole of g after the stitch, which then maps to g's stem output width)."""
    stitch = stitch_flops(f.widths[i - 1], g.width_after(j), f.grids[i - 1], f.prefix_tokens, g.prefix_tokens)
    return stitched_flops(f.flops, i, stitch, g.flops, j)


def unscored_config(f: AnchorEntry, g: AnchorEntry, i: int, j: int) -> Config:
    """A configuration outside KLAS's scores (j = 0, or i = m_f): exact FLOPs, NaN Ω, Σ, Γ."""
    nan = float("nan")
    return Config(f.name, g.name, i, j, config_flops(f, g, i, j), nan, nan, nan)


def grid_valid_pairs(f: AnchorEntry, g: AnchorEntry) -> list[tuple[int, int]]:
    """The configurations KLAS scores between two anchors of the scores (klas.stitches.scored_pairs)."""
    return scored_pairs(f.grids, g.grids)


def configurations(scores: Scores, source: str, target: str, numerator: torch.Tensor | None = None, *,
                   capacity: bool = True) -> list[Config]:
    """Every valid (i, j) for source -> target with FLOPs, Ω, Σ, Γ (equal grids only).

    numerator: another distance ``[m_f − 1, m_g − 1]`` to use as Ω in place of Θ (metric baselines);
    Γ is then numerator / max(Σ, floor).
    capacity: False scores each configuration by its Ω alone (Γ = Ω, the ablation of Σ); Σ is still recorded.
    """
    f, g = scores.anchor(source), scores.anchor(target)
    sigma = scores.sigma(target)
    if numerator is None:
        theta = scores.theta(source, target)
        gamma = scores.gamma(source, target) if capacity else theta
    else:
        if tuple(numerator.shape) != (f.depth - 1, g.depth - 1):
            raise UsageError(f"numerator must be [{f.depth - 1}, {g.depth - 1}], got {list(numerator.shape)}")
        theta = numerator
        gamma = numerator / sigma.clamp_min(scores.floor)[None, :] if capacity else theta
    out = [Config(source, target, i, j, config_flops(f, g, i, j), float(theta[i - 1, j - 1]), float(sigma[j - 1]),
                  float(gamma[i - 1, j - 1])) for i, j in grid_valid_pairs(f, g)]
    if not out:
        raise UsageError(
            f"no valid configuration between {source} and {target}: their block grids never match "
            f"({sorted({tuple(x) for x in f.grids})} vs {sorted({tuple(x) for x in g.grids})})"
        )
    return out


# -- buckets, τ, coverage -----------------------------------------------------------------------

def bucket_index(flops: float, lo: float, hi: float, buckets: int) -> int:
    """The equal-width FLOPs bucket (0..buckets-1) of `flops` over [lo, hi]; outside: the end buckets."""
    if not hi > lo:
        return 0
    return min(max(int((flops - lo) // ((hi - lo) / buckets)), 0), buckets - 1)


def _bucketise(configs: list[Config], lo: float, hi: float, buckets: int) -> tuple[list[Config], list[float]]:
    width = (hi - lo) / buckets if hi > lo else 1.0
    edges = [lo + k * width for k in range(buckets + 1)]
    return [replace(c, bucket=bucket_index(c.flops, lo, hi, buckets)) for c in configs], edges


def _keep(configs: list[Config], buckets: int, tau: float, tau_mode: str) -> tuple[list[Config], list[float]]:
    kept, taus = [], []
    for b in range(buckets):
        members = [c for c in configs if c.bucket == b]
        if not members:
            taus.append(float("nan"))
            continue
        best = min(members, key=lambda c: (c.gamma, c.flops, c.i, c.j))
        t = (1.0 + tau) * best.gamma if tau_mode == "relative" else tau
        taus.append(t)
        kept += [c for c in members if c.gamma <= t or c == best]
    return kept, taus




def in_flops_range(configs: list[Config], lo: float, hi: float) -> list[Config]:
    """The configurations whose FLOPs lie within [lo, hi] (the anchors' range)."""
    return [c for c in configs if lo <= c.flops <= hi]


def first_bucket_count(target: AnchorEntry) -> int:
    """The coverage rule's first bucket count for a pair into `target`: m_g − 1, at least 1
    (klas-budget's and the recovery test's buckets too)."""
    return max(target.depth - 1, 1)


def pair_candidates(scores: Scores, source: str, target: str, numerator: torch.Tensor | None = None, *,
                    flops_range: str = _Defaults.flops_range, capacity: bool = True) -> tuple[list[Config], float, float]:
    """(the candidate configurations of one pair, the source's FLOPs, the target's FLOPs): every
    grid-valid configuration (`configurations`), those outside the anchors' FLOPs range dropped when
    `flops_range` is "exclude"."""
    if flops_range not in FLOPS_RANGE_RULES:
        raise UsageError(f"flops_range must be one of {FLOPS_RANGE_RULES}, got {flops_range!r}")
    f, g = scores.anchor(source), scores.anchor(target)
    configs = configurations(scores, source, target, numerator, capacity=capacity)
    lo, hi = float(f.total_flops), float(g.total_flops)
    if flops_range == "exclude":
        configs = in_flops_range(configs, lo, hi)
    return configs, lo, hi


def select_pair(scores: Scores, source: str, target: str, *, tau: float = _Defaults.tau,
                tau_mode: str = _Defaults.tau_mode, buckets: int | str = _Defaults.buckets, max_buckets: int | None = None,
                numerator: torch.Tensor | None = None, flops_range: str = _Defaults.flops_range,
                capacity: bool = True) -> PairSelection:
    """KLAS's candidate configurations for one anchor pair.

    flops_range: "exclude" (METHOD.md §5.2: a configuration cheaper than the source anchor or costlier
    than the target is not a candidate) or "end-buckets" (such configurations join the first or
    last bucket). capacity: see `configurations`.
    """
    finite_number(tau, "tau", error=UsageError, positive=True)
    if tau_mode not in ("relative", "absolute"):
        raise UsageError(f"tau_mode must be 'relative' or 'absolute', got {tau_mode!r}")
    g = scores.anchor(target)
    configs, lo, hi = pair_candidates(scores, source, target, numerator, flops_range=flops_range, capacity=capacity)
    if flops_range == "exclude":
        if not configs:
            raise UsageError(f"no configuration of {source} -> {target} lies within the anchors' FLOPs "
                             f"[{lo:.0f}, {hi:.0f}]; select with flops_range='end-buckets' to keep them")
    targets = {c.j for c in configs}
    if buckets == "auto":
        count = first_bucket_count(g)
        cap = max_buckets or 4 * count
    else:
        if isinstance(buckets, bool) or not isinstance(buckets, int) or not 1 <= buckets <= MAX_BUCKETS:
            raise UsageError(f"buckets must be 'auto' or an integer in [1, {MAX_BUCKETS}], got {buckets!r}")
        count, cap = buckets, buckets
    while True:
        placed, edges = _bucketise(configs, lo, hi, count)
        kept, taus = _keep(placed, count, tau, tau_mode)
        if targets <= {c.j for c in kept} or count >= cap:
            break
        count += 1
    added = []
    for j in sorted(targets - {c.j for c in kept}):
        best = min((c for c in placed if c.j == j), key=lambda c: (c.gamma, c.flops, c.i))
        kept.append(best)
        added.append(j)
    kept = sorted(set(kept), key=lambda c: (c.flops, c.i, c.j))
    return PairSelection(source, target, sorted(placed, key=lambda c: (c.flops, c.i, c.j)), kept, edges, taus, added)


def select(scores: Scores, *, tau: float = _Defaults.tau, tau_mode: str = _Defaults.tau_mode,
           buckets: int | str = _Defaults.buckets, chain_rule: str = _Defaults.chain_rule,
           numerators: Callable[[str, str], torch.Tensor] | None = None, method: str = "klas",
           flops_range: str = _Defaults.flops_range, capacity: bool = True) -> Selection:
    """KLAS selection over the anchor chain; `numerators(source, target)` swaps Θ for another distance
    ``[m_f − 1, m_g − 1]`` in Γ's numerator (the metric baselines); `capacity=False` drops Σ (Γ = Ω)."""
    chain = anchor_chain(scores, chain_rule)
    pairs = [select_pair(scores, f, g, tau=tau, tau_mode=tau_mode, buckets=buckets, flops_range=flops_range,
                         numerator=numerators(f, g) if numerators else None, capacity=capacity)
             for f, g in zip(chain, chain[1:])]
    order = [a.name for a in scores.anchors]
    return Selection(method=method, chain=chain, chain_rule=chain_rule, tau=tau, tau_mode=tau_mode, pairs=pairs,
                     anchors=scores.anchors, last_block={"order": order, "theta": scores.last_block().tolist()})


def select_random(scores: Scores, *, seed: int = 0, **klas_options) -> Selection:
    """For ablations: per anchor pair of KLAS's chain, a seeded random set of valid configurations
    as large as KLAS's own."""
    reference = select(scores, **klas_options)
    gen = torch.Generator().manual_seed(seed)
    pairs = []
    for p in reference.pairs:
        picks = torch.randperm(len(p.configs), generator=gen)[:len(p.selected)].tolist()
        chosen = sorted((p.configs[k] for k in picks), key=lambda c: (c.flops, c.i, c.j))
        pairs.append(PairSelection(p.source, p.target, p.configs, chosen, p.edges, p.tau))
    return Selection(method="random", chain=reference.chain, chain_rule=reference.chain_rule, tau=reference.tau,
                     tau_mode=reference.tau_mode, pairs=pairs, anchors=reference.anchors,
                     last_block=reference.last_block)


def size_matched(selection: Selection, size: int, method: str | None = None) -> Selection:
    """`selection` with `size` stitches in all: each bucket's configurations ranked by score (Γ,
    lowest first), and taken rank by rank over every bucket of every pair (cheapest bucket first)
    until `size` are kept; every bucket gets its best before any gets a second. The control for
    set size (METHOD.md §5: with one total budget, a larger set gives each stitch fewer steps)."""
    if size < 1:
        raise UsageError(f"a size-matched selection needs at least one stitch, got {size}")
    queues = []  # (pair index, bucket) -> configurations by score
    for k, p in enumerate(selection.pairs):
        by_bucket: dict[int, list[Config]] = {}
        for c in p.configs:
            by_bucket.setdefault(c.bucket, []).append(c)
        for b in sorted(by_bucket):
            ranked = sorted(by_bucket[b], key=lambda c: (math.isnan(c.gamma), c.gamma, c.flops, c.i, c.j))
            queues.append((k, ranked))
    chosen: list[list[Config]] = [[] for _ in selection.pairs]
    taken, rank = 0, 0
    while taken < size and any(rank < len(q) for _, q in queues):
        for k, ranked in queues:
            if rank < len(ranked) and taken < size:
                chosen[k].append(ranked[rank])
                taken += 1
        rank += 1
    pairs = [PairSelection(p.source, p.target, p.configs, sorted(chosen[k], key=lambda c: (c.flops, c.i, c.j)),
                           p.edges, p.tau, p.uncovered_added) for k, p in enumerate(selection.pairs)]
    return Selection(method=method or f"{selection.method}-size-matched", chain=selection.chain,
                     chain_rule=selection.chain_rule, tau=selection.tau, tau_mode=selection.tau_mode, pairs=pairs,
                     anchors=selection.anchors, last_block=selection.last_block)


# -- SN-Net nearest stitching (baseline) --------------------------------------------------------

def grid_stages(grids: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """(first block, block count) of each run of equal grids, 0-indexed."""
    runs = []
    for k, g in enumerate(grids):
        if runs and list(grids[runs[-1][0]]) == list(g):
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((k, 1))
    return runs


def snnet_stage_configs(d_f: int, d_g: int, *, hierarchical: bool) -> list[tuple[int, int, int]]:
    """SN-Net's configurations of one stage (or of a plain model), in its generator's order, with
    their stitching layers: [(a, b, layer)], 0-indexed and local to the stage."""
    out = []
    if d_f == d_g:  # paired: windows of 2 blocks, stride 1; a window that adds a pair adds a layer
        layer = -1
        for start in range(d_f):
            window = range(start, min(start + 2, d_f))
            new = [(a, b) for a in window for b in window
                   if (a, b) not in {(x, y) for x, y, _ in out} and not (hierarchical and (b == 0 or a >= b))]
            if new:
                layer += 1
                out += [(a, b, layer) for a, b in new]
        return out
    ends = torch.nn.functional.interpolate(torch.arange(d_f, dtype=torch.float32)[None, None], size=d_g)[0, 0]
    ends = [int(e) for e in ends]
    pairs = [(a, k) for a in range(d_f) for k in range(d_g) if ends[k] == a and a < k and not (hierarchical and k == 0)]
    return [(a, b, ends[n]) for n, (a, b) in enumerate(pairs)]  # the n-th configuration takes layer ends[n]


def _nearest_pairs(d_f: int, d_g: int, *, hierarchical: bool) -> list[tuple[int, int]]:
    """SN-Net's 0-indexed (a, b) within one stage (or one plain ViT), sorted: paired for equal depths,
    unpaired (nearest-neighbour interpolation of the front's blocks) otherwise (`snnet_stage_configs`)."""
    return sorted((a, b) for a, b, _ in snnet_stage_configs(d_f, d_g, hierarchical=hierarchical))


def snnet_stages(f, g) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The grid stages (`grid_stages`) of front f and end g; UsageError unless they have as many:
    SN-Net stitches stage to stage."""
    sf, sg = grid_stages(f.grids), grid_stages(g.grids)
    if len(sf) != len(sg):
        raise UsageError(f"{f.name} has {len(sf)} stages and {g.name} {len(sg)}: SN-Net stitches stage to stage")
    return sf, sg


def snnet_stitched_stages(count: int) -> list[int]:
    """The stages (0-indexed) SN-Net's code stitches in a model of `count` stages (METHOD.md §7): a
    4-stage model its middle two (ResNet; Swin's code also skips its last), a 3-stage model all but
    its last (LeViT, the CIFAR ResNets), a plain model (one grid) every block. By the same rules a
    2-stage model stitches its first stage and a model of 5 or more stages all but its first and last."""
    if count <= 1:
        return [0]
    if count == 2:
        return [0]
    if count == 3:
        return [0, 1]
    return list(range(1, count - 1))


def snnet_nearest_pairs(f: AnchorEntry, g: AnchorEntry, *, stage_skips: bool = True) -> list[tuple[int, int]]:
    """SN-Net's configurations for front f and end g as KLAS (i, j) = (a + 1, b), global indices.

    Plain models (one grid): the rules over all blocks. Hierarchical models (several grids): the
    rules within each stage, indices local to it; f and g need the same number of stages.
    stage_skips: leave out the stages SN-Net's code never stitches (`snnet_stitched_stages`).
    """
    sf, sg = snnet_stages(f, g)
    hierarchical = len(sf) > 1
    stitched = set(snnet_stitched_stages(len(sf))) if stage_skips else set(range(len(sf)))
    out = []
    for s, ((of, df), (og, dg)) in enumerate(zip(sf, sg)):
        if s in stitched:
            out += [(of + a + 1, og + b) for a, b in _nearest_pairs(df, dg, hierarchical=hierarchical)]
    return out


def select_snnet_nearest(scores: Scores, *, stage_skips: bool = True) -> Selection:
    """The SN-Net baseline: neighbouring anchors (by FLOPs), SN-Net's fixed configurations.

    Configurations with j = 0 or i = m_f (one anchor runs all its blocks) lie outside KLAS's scores: their
    Ω, Σ and Γ are NaN, their FLOPs are exact."""
    chain = anchor_chain(scores, "nearest")
    pairs = []
    for source, target in zip(chain, chain[1:]):
        f, g = scores.anchor(source), scores.anchor(target)
        scored = {(c.i, c.j): c for c in configurations(scores, source, target)}
        chosen = sorted((scored.get((i, j)) or unscored_config(f, g, i, j)
                         for i, j in snnet_nearest_pairs(f, g, stage_skips=stage_skips)),
                        key=lambda c: (c.flops, c.i, c.j))
        pairs.append(PairSelection(source, target, sorted(scored.values(), key=lambda c: (c.flops, c.i, c.j)),
                                   chosen, [float(f.total_flops), float(g.total_flops)], [float("nan")]))
    order = [a.name for a in scores.anchors]
    return Selection(method="snnet-nearest", chain=chain, chain_rule="nearest", tau=float("nan"), tau_mode="none",
                     pairs=pairs, anchors=scores.anchors,
                     last_block={"order": order, "theta": scores.last_block().tolist()})


def select_on_snnet_chain(scores: Scores, **klas_options) -> Selection:
    """The paper's Fig. 6 control: KLAS's block selection on SN-Net's chain (every anchor, each to
    the next costlier one), so that a difference from SN-Net comes from the blocks chosen alone."""
    klas_options = {k: v for k, v in klas_options.items() if k not in ("chain_rule", "method")}
    return select(scores, chain_rule="nearest", method="klas-snnet-chain", **klas_options)

