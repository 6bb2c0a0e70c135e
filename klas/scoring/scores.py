"""Scoring: Θ for every pair of probe distributions over D_v, Σ per target block, Γ per anchor pair.

For anchor g with m blocks the distributions are P^g_1 … P^g_{m-1} (its probes) and P^g_m (its
own head). One streaming pass over all anchors' D_v caches gives Θ between every pair of these
distributions of every anchor (one ``[K, K]`` matrix, K = Σ m). From it:

- ``theta[f, g]`` ``[m_f, m_g]``: Θ(P^f_i ‖ P^g_j) for each ordered pair, cheaper anchor f first;
- ``last_block`` ``[A, A]``: Θ between the anchors' heads, every ordered pair (for the anchor chain);
- ``sigma[g]`` ``[m_g − 1]``: Σ_j = Θ(P^g_j ‖ P^g_{j+1}), the capacity of target block j+1;
- ``gamma[f, g]`` ``[m_f − 1, m_g − 1]``: Γ(i, j) = Ω / Σ = Θ(P^f_i ‖ P^g_j) / max(Σ_j, floor).

Written as ``scores.safetensors`` + ``scores.json`` (+ a heatmap PNG per anchor pair).
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from klas import distributed as dist
from klas.anchors.base import FLOPS_UNIT, LOGITS, MAX_PREFIX_TOKENS, PartCounts, stitch_sources
from klas.cache import CacheReader
from klas.cache.pairing import check_held_out, check_same_samples, check_same_weights
from klas.errors import CacheError, UsageError
from klas.scoring.features import CacheFeatures
from klas.files import save_safetensors_atomic, write_json_atomic
from klas.scoring.kl import check_temperature, kl_matrix_from_features
from klas.scoring.probes import load_probes
from klas.limits import MAX_TEMPERATURE, MIN_TEMPERATURE
from klas.reading import finite_number, plain_text, read_tensor_file_pair, whole_number
from klas.scoring.settings import ScoreSection
from klas.stitches import scored_pairs

__all__ = ["stitch_scores", "floored_blocks", "AnchorEntry", "Scores", "score", "score_sets", "load_scores",
           "DEFAULT_FLOOR"]

DEFAULT_FLOOR = ScoreSection.floor  # each default declared once, in the score section


def floored_blocks(theta_target_next: torch.Tensor, floor: float = DEFAULT_FLOOR) -> list[int]:
    """1-indexed target blocks j whose Σ_j is below the floor."""
    return [j + 1 for j in torch.nonzero(theta_target_next < floor).flatten().tolist()]


def stitch_scores(theta_cross: torch.Tensor, theta_target_next: torch.Tensor, *,
                  floor: float = DEFAULT_FLOOR) -> torch.Tensor:
    """Γ ``[m_f − 1, m_g − 1]`` from Θ ``[m_f, m_g]`` (blocks 1..m, the last being the head) and
    Σ ``[m_g − 1]`` (Σ_j = Θ(P^g_j ‖ P^g_{j+1})).

    Γ(i, j) = Θ(P^f_i ‖ P^g_j) / max(Σ_j, floor). Blocks whose Σ was floored are reported with a
    warning (and by `floored_blocks`).
    """
    if theta_cross.dim() != 2 or theta_target_next.dim() != 1:
        raise UsageError("theta_cross must be [m_f, m_g] and theta_target_next [m_g - 1]")
    m_f, m_g = theta_cross.shape
    if theta_target_next.shape[0] != m_g - 1:
        raise UsageError(f"theta_target_next has {theta_target_next.shape[0]} entries; a target of {m_g} "
                         f"blocks has {m_g - 1} (Σ_j for j = 1..{m_g - 1})")
    if m_f < 2 or m_g < 2:
        raise UsageError("both anchors need at least 2 blocks to be stitched")
    finite_number(floor, "floor", error=UsageError, positive=True)
    for what, t in (("theta_cross (Θ)", theta_cross), ("theta_target_next (Σ)", theta_target_next)):
        if not torch.isfinite(t).all() or (t < 0).any():
            raise UsageError(f"{what} holds NaN, Inf or negative values; a KL divergence is finite and >= 0 "
                             "(check the logits it was computed from)")
    low = floored_blocks(theta_target_next, floor)
    if low:
        warnings.warn(f"Σ below the floor {floor:g} at target block(s) j = {low}: Γ uses the floor there",
                      stacklevel=2)
    sigma = theta_target_next.clamp_min(floor)
    return theta_cross[:-1, :-1] / sigma[None, :]


@dataclass(frozen=True)
class AnchorEntry:
    name: str
    spec: str
    depth: int
    flops: PartCounts  # FLOPs of one image through the stem, each block, the head
    widths: list
    grids: list  # spatial grid of every block's output
    offset: int  # first row/column of this anchor in theta_all
    probe_val_acc: list = field(default_factory=list)
    head_val_acc: float | None = None
    prefix_tokens: int = 0  # class tokens before the patch tokens (token layouts)
    stem_width: int | None = None  # the stem's output width where it differs from block 1's (else None)

    @property
    def total_flops(self) -> int:
        return self.flops.total

    def width_after(self, k: int) -> int:
        """Width of the activation after block k (k = 0: the stem's output, which a stitch at j = 0 maps to)."""
        if k >= 1:
            return self.widths[k - 1]
        return self.stem_width if self.stem_width is not None else self.widths[0]

    def to_json(self) -> dict:
        return {**self.__dict__, "flops": self.flops.to_json()}

    @classmethod
    def from_anchor(cls, anchor, offset: int = 0) -> "AnchorEntry":
        """A loaded Anchor as the scores file describes it (what selection computes FLOPs from)."""
        return cls(name=anchor.name, spec=anchor.spec, depth=anchor.depth, flops=anchor.flops,
                   widths=[b.width for b in anchor.block_info], grids=[list(b.grid) for b in anchor.block_info],
                   offset=offset, prefix_tokens=anchor.prefix_tokens,
                   stem_width=anchor.stem_width)


@dataclass
class Scores:
    anchors: list[AnchorEntry]  # sorted by FLOPs, cheapest first
    theta_all: torch.Tensor  # [K, K]
    floor: float
    temperature: float
    split: str
    caches: dict  # anchor name -> manifest fingerprint
    probe_labels: str = "true"
    # diagnostic of Σ_{m-1}, the denominator at the last target block: anchor name -> {"head": Θ(P_{m-1} ‖
    # head), "last_probe": Θ(P_{m-1} ‖ P_m), "last_probe_vs_head": Θ(P_m ‖ head)} (empty: not measured)
    sigma_last_block: dict = field(default_factory=dict)

    def __post_init__(self):
        """The checks a hand-built Scores needs: Θ square over every anchor's blocks, each anchor's
        rows where the order puts them, anchors cheapest first (`Scores.build` derives the offsets)."""
        total = sum(a.depth for a in self.anchors)
        if not isinstance(self.theta_all, torch.Tensor) or tuple(self.theta_all.shape) != (total, total):
            shape = tuple(self.theta_all.shape) if isinstance(self.theta_all, torch.Tensor) else type(self.theta_all)
            raise UsageError(f"theta_all must be [K, K] with K = {total}, the anchors' blocks together, got {shape}")
        offset = 0
        for a in self.anchors:
            if a.offset != offset:
                raise UsageError(f"anchor {a.name}'s rows start at {a.offset}, not at {offset} where the order of "
                                 "the anchors puts them; build the scores with Scores.build, which derives the offsets")
            offset += a.depth
        flops = [a.total_flops for a in self.anchors]
        if flops != sorted(flops):
            raise UsageError(f"the anchors must come cheapest first (FLOPs {flops}); Scores.build orders them")

    @classmethod
    def build(cls, anchors: list[AnchorEntry], theta_all: torch.Tensor, **fields) -> "Scores":
        """Scores over `anchors` given in the order of Θ's blocks, `theta_all` ``[K, K]`` (K = Σ depths,
        each anchor's blocks then its head in turn): the offsets derived from the depths, anchors and Θ's
        rows and columns reordered cheapest first. `fields`: floor, temperature, split, caches, ..."""
        import dataclasses

        starts, k = [], 0
        for a in anchors:
            starts.append(k)
            k += a.depth
        order = sorted(range(len(anchors)), key=lambda n: anchors[n].total_flops)
        index = torch.cat([torch.arange(starts[n], starts[n] + anchors[n].depth) for n in order]) if anchors \
            else torch.zeros(0, dtype=torch.long)
        if not isinstance(theta_all, torch.Tensor) or tuple(theta_all.shape) != (k, k):
            raise UsageError(f"theta_all must be [K, K] with K = {k}, the anchors' blocks together")
        placed, offset = [], 0
        for n in order:
            placed.append(dataclasses.replace(anchors[n], offset=offset))
            offset += anchors[n].depth
        return cls(anchors=placed, theta_all=theta_all[index][:, index], **fields)

    def valid(self, f: str, g: str) -> torch.Tensor:
        """Γ's grid-validity mask ``[m_f − 1, m_g − 1]``: True where source block i's output and target
        block j's lie on the same spatial grid (a stitch between them needs no resampling)."""
        a, b = self.anchor(f), self.anchor(g)
        mask = torch.zeros(a.depth - 1, b.depth - 1, dtype=torch.bool)
        for i, j in scored_pairs(a.grids, b.grids):
            mask[i - 1, j - 1] = True
        return mask

    def anchor(self, name: str) -> AnchorEntry:
        for a in self.anchors:
            if a.name == name:
                return a
        raise KeyError(f"no anchor {name!r} in these scores (have {[a.name for a in self.anchors]})")

    def theta(self, f: str, g: str) -> torch.Tensor:
        """Θ(P^f_i ‖ P^g_j) ``[m_f, m_g]``."""
        a, b = self.anchor(f), self.anchor(g)
        return self.theta_all[a.offset:a.offset + a.depth, b.offset:b.offset + b.depth]

    def sigma(self, g: str) -> torch.Tensor:
        """Σ_j for j = 1..m_g − 1."""
        t = self.theta(g, g)
        return t.diagonal(offset=1).clone()

    def gamma(self, f: str, g: str) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # reported once, in scores.json and by `score`
            return stitch_scores(self.theta(f, g), self.sigma(g), floor=self.floor)

    def last_block(self) -> torch.Tensor:
        """Θ between the anchors' own heads ``[A, A]`` (row = source)."""
        idx = torch.tensor([a.offset + a.depth - 1 for a in self.anchors])
        return self.theta_all[idx][:, idx]

    def pairs(self) -> list[tuple[str, str]]:
        """Ordered pairs (cheaper, costlier)."""
        return [(f.name, g.name) for i, f in enumerate(self.anchors) for g in self.anchors[i + 1:]
                if f.total_flops < g.total_flops]

    def save(self, out: str | os.PathLike, *, plots: bool = True) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {"theta_all": self.theta_all.contiguous(), "last_block": self.last_block().contiguous()}
        for a in self.anchors:
            tensors[f"sigma/{a.name}"] = self.sigma(a.name)
        for f, g in self.pairs():
            tensors[f"theta/{f}/{g}"] = self.theta(f, g).contiguous()
            tensors[f"gamma/{f}/{g}"] = self.gamma(f, g).contiguous()
        save_safetensors_atomic(tensors, out / "scores.safetensors")
        meta = {
            "format": "klas-scores", "version": 1, "split": self.split, "temperature": self.temperature,
            "floor": self.floor, "probe_labels": self.probe_labels, "caches": self.caches,
            "flops_unit": FLOPS_UNIT, "anchors": [a.to_json() for a in self.anchors],
            "pairs": [{"source": f, "target": g} for f, g in self.pairs()],
            "floored": {a.name: floored_blocks(self.sigma(a.name), self.floor) for a in self.anchors},
            "last_block": {"order": [a.name for a in self.anchors], "theta": self.last_block().tolist()},
            "sigma_last_block": self.sigma_last_block,
        }
        write_json_atomic(out / "scores.json", meta)
        if plots:
            from klas.plots import pair_heatmap

            for f, g in self.pairs():
                pair_heatmap(self.theta(f, g), self.gamma(f, g), f, g, out / "heatmaps" / f"{f}__{g}.png")
        return out


def load_scores(out: str | os.PathLike) -> Scores:
    """Reads the scores `Scores.save` wrote, checking scores.json's fields and the tensors against
    them (shapes from the anchors' depths, finite values); CacheError naming the file otherwise."""
    out = Path(out)
    meta_path, tensor_path = out / "scores.json", out / "scores.safetensors"
    fix = "re-run `klas score`"
    meta, tensors = read_tensor_file_pair(meta_path, tensor_path, what="scores file", fix=fix, error=CacheError,
                                          missing=f"no scores in {out}; run `klas score` first")

    def bad(what: str):
        raise CacheError(f"{meta_path}: {what}; {fix}")

    if meta.get("format", "klas-scores") != "klas-scores":
        bad("not a klas scores file")
    if meta.get("flops_unit") != FLOPS_UNIT:
        bad(f"its FLOPs are not recorded as {FLOPS_UNIT!r} (multiply-accumulates) but as {meta.get('flops_unit')!r} "
            "(an older klas counted each multiply-add as two FLOPs)")
    try:
        floor = finite_number(meta.get("floor"), "floor", error=CacheError, positive=True)
        temperature = finite_number(meta.get("temperature"), "temperature", error=CacheError, low=MIN_TEMPERATURE,
                                    high=MAX_TEMPERATURE)
    except CacheError as e:
        bad(str(e))
    if meta.get("split") not in ("train", "val", "test") or not isinstance(meta.get("caches"), dict):
        bad("split or caches has the wrong type")
    if not isinstance(meta.get("probe_labels", "true"), str):
        bad("probe_labels is not a string")
    raw = meta.get("anchors")
    if not isinstance(raw, list) or len(raw) < 2:
        bad("anchors is not a list of at least two anchors")
    anchors, offset = [], 0
    for a in raw:
        entry = _anchor_entry(a, offset)
        if entry is None:
            bad(f"anchor entry {str(a)[:80]} is malformed (fields {_ANCHOR_FIELDS}, offsets in order, depths >= 2, "
                "FLOPs and grids per block)")
        anchors.append(entry)
        offset += entry.depth
    if len({a.name for a in anchors}) != len(anchors):
        bad("names an anchor twice")
    theta = tensors.get("theta_all")
    if theta is None or theta.dim() != 2 or tuple(theta.shape) != (offset, offset):
        raise CacheError(f"{tensor_path}: theta_all is {None if theta is None else list(theta.shape)}, scores.json's "
                         f"anchors need [{offset}, {offset}]; {fix}")
    theta = theta.to(torch.float64) if theta.dtype != torch.float32 else theta
    if not torch.isfinite(theta).all() or bool((theta < -1e-3).any()):
        raise CacheError(f"{tensor_path}: theta_all holds NaN, Inf or negative divergences; {fix}")
    return Scores(anchors=anchors, theta_all=theta.float(), floor=floor, temperature=temperature, split=meta["split"],
                  caches=meta["caches"], probe_labels=meta.get("probe_labels", "true"),
                  sigma_last_block=_sigma_last_block(meta.get("sigma_last_block", {}), anchors, bad))


_ANCHOR_FIELDS = ("name", "spec", "depth", "flops", "widths", "grids", "offset")


def _anchor_entry(a, offset: int) -> AnchorEntry | None:
    """An AnchorEntry from scores.json if every field has its type and size; else None."""
    def count(x) -> bool:
        return whole_number(x, 0, 2**62 - 1)

    try:
        if not isinstance(a, dict) or not set(_ANCHOR_FIELDS) <= set(a):
            return None
        depth, flops = a["depth"], a["flops"]
        ok = (plain_text(a["name"], 255) and "/" not in a["name"] and plain_text(a["spec"])
              and count(depth) and 2 <= depth <= 10_000 and a["offset"] == offset
              and isinstance(flops, dict) and count(flops["stem"]) and count(flops["head"])
              and isinstance(flops["blocks"], list) and len(flops["blocks"]) == depth
              and all(count(f) for f in flops["blocks"])
              and isinstance(a["widths"], list) and len(a["widths"]) == depth
              and all(count(w) and w > 0 for w in a["widths"])
              and isinstance(a["grids"], list) and len(a["grids"]) == depth
              and all(isinstance(g, list) and len(g) <= 4 and all(count(x) for x in g) for g in a["grids"]))
        acc = a.get("probe_val_acc", [])
        head = a.get("head_val_acc")
        prefix = a.get("prefix_tokens", 0)
        ok = ok and count(prefix) and prefix < MAX_PREFIX_TOKENS
        stem_width = a.get("stem_width")
        ok = ok and (stem_width is None or count(stem_width) and stem_width > 0)
        ok = ok and isinstance(acc, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in acc)
        ok = ok and (head is None or isinstance(head, (int, float)) and not isinstance(head, bool))
        if not ok:
            return None
        return AnchorEntry(name=a["name"], spec=a["spec"], depth=depth, flops=PartCounts.from_json(flops),
                           widths=a["widths"], grids=a["grids"], offset=offset, probe_val_acc=acc, head_val_acc=head,
                           prefix_tokens=prefix, stem_width=stem_width)
    except (KeyError, TypeError):
        return None


class _Lockstep:
    """Several CacheFeatures over the same samples, read together as one feature list."""

    def __init__(self, streams: Sequence[CacheFeatures]):
        self.streams = list(streams)

    @property
    def num_blocks(self) -> int:
        return sum(s.num_blocks for s in self.streams)

    @property
    def widths(self) -> list[int]:
        return [w for s in self.streams for w in s.widths]

    def chunks(self, chunk: int):
        for parts in zip(*(s.chunks(chunk) for s in self.streams)):
            yield [t for p in parts for t in p]


_SIGMA_KEYS = ("head", "last_probe", "last_probe_vs_head")


def _sigma_last_block(raw, anchors, bad) -> dict:
    """The Σ diagnostic read back: known anchors, the three finite non-negative values each."""
    names = {a.name for a in anchors}
    if not isinstance(raw, dict) or not all(
            name in names and isinstance(v, dict) and set(v) == set(_SIGMA_KEYS)
            and all(isinstance(v[k], (int, float)) and not isinstance(v[k], bool) and math.isfinite(v[k])
                    and v[k] >= -1e-6 for k in _SIGMA_KEYS) for name, v in raw.items()):
        bad("sigma_last_block is malformed")
    return {name: {k: float(v[k]) for k in _SIGMA_KEYS} for name, v in raw.items()}


def last_block_sigmas(readers: dict, *, temperature: float, backend: str, device, chunk_size: int | None = None) -> dict:
    """For every anchor (name -> (CacheReader, ProbeSet)), Σ at its last block two ways: Θ(P_{m-1} ‖ head),
    which Γ uses, and Θ(P_{m-1} ‖ P_m) with the last block's own probe, and Θ(P_m ‖ head) between the
    two (METHOD.md §4: the head's divergence from the last probe sets the denominator there)."""
    ctx, out = dist.context(), {}
    for name, (reader, ps) in readers.items():
        depth = len(reader.manifest.block_entries)
        if depth < 2:
            continue
        feats = CacheFeatures(reader, [depth - 1, depth, LOGITS], device=device, rank=ctx.rank,
                              world_size=ctx.world_size)
        probes = [(w.to(device), b.to(device)) for w, b in ps.probes()[depth - 2:depth]] + [None]
        theta = kl_matrix_from_features(feats, probes, feats, probes, temperature=temperature, backend=backend,
                                        chunk_size=chunk_size, across_ranks=ctx.distributed).cpu()
        out[name] = {"head": float(theta[0, 2]), "last_probe": float(theta[0, 1]),
                     "last_probe_vs_head": float(theta[1, 2])}
    return out


def _check_probe_shapes(ps, reader: CacheReader, path: str | Path) -> None:
    """CacheError unless the probes fit the cache: one per block, [num_classes, width] each."""
    m = reader.manifest
    widths = [b.width for b in m.block_entries]
    have = [tuple(w.shape) for w in ps.weights]
    if have != [(m.num_classes, w) for w in widths]:
        raise CacheError(f"{path}: probe shapes {have[:3]}... do not fit {reader.dir} ({len(widths)} blocks of widths "
                         f"{widths[:3]}..., {m.num_classes} classes); re-run `klas probes`")


def score_sets(readers: dict, *, split: str = "val", temperature: float = ScoreSection.temperature,
               floor: float = DEFAULT_FLOOR, backend: str = ScoreSection.backend, device: str = "cpu",
               chunk_size: int | None = None, probes_where: str = "the probes") -> Scores:
    """Θ, Σ and Γ from `readers`: anchor name -> (its `split` cache reader, its ProbeSet), every pair
    checked first (split, anchor, weights, samples, D_t against D_v). The one computation behind
    `score` (caches and probes on disk) and klas.pipeline.tensors (features in memory)."""
    finite_number(floor, "floor", error=UsageError, positive=True)
    check_temperature(temperature)
    anchors = list(readers)
    if len(anchors) < 2:
        raise UsageError(f"scores need at least two anchors, got {anchors}")
    for name, (reader, ps) in readers.items():
        if reader.manifest.split != split:
            raise CacheError(f"{reader.dir} holds the {reader.manifest.split!r} split, not {split!r}: extract the "
                             f"{split} split into it again")
        if ps.anchor != reader.manifest.anchor:
            raise CacheError(f"probes {name!r} were trained for {ps.anchor!r} but {reader.dir} caches "
                             f"{reader.manifest.anchor!r}; re-run `klas probes`")
        check_same_weights(reader, ps.weights_digest, f"the probes {probes_where}/{name}")
        _check_probe_shapes(ps, reader, f"{probes_where}/{name}.safetensors")
    counts = {r.num_samples for r, _ in readers.values()}
    if len(counts) != 1:
        raise CacheError(f"the {split} caches hold different sample counts {sorted(counts)}")
    check_same_samples([r for r, _ in readers.values()], split)
    for name, (reader, ps) in readers.items():
        if ps.train_split is not None:
            check_held_out(ps.train_split, f"the D_t the probes {probes_where}/{name} were trained on", reader)
    # what extraction recorded of each anchor: its spec is an identifier, compared, never loaded
    facts = {n: readers[n][0].manifest.anchor_facts(readers[n][0].dir / "manifest.json") for n in anchors}
    ordered = sorted(anchors, key=lambda n: facts[n].flops.total)
    entries, streams, probes, caches = [], [], [], {}
    offset, ctx = 0, dist.context()
    for name in ordered:
        reader, ps = readers[name]
        m = reader.manifest
        depth = len(m.block_entries)
        entries.append(AnchorEntry(
            name=name, spec=m.anchor, depth=depth, flops=facts[name].flops,
            widths=[b.width for b in m.block_entries], grids=[list(b.grid) for b in m.block_entries],
            offset=offset, probe_val_acc=ps.val_acc, head_val_acc=ps.head_val_acc,
            prefix_tokens=facts[name].prefix_tokens, stem_width=facts[name].stem_width,
        ))
        offset += depth
        # blocks 1..m-1 through their probes, block m through the anchor's own head
        streams.append(CacheFeatures(reader, [*stitch_sources(depth), LOGITS], device=device,
                                     rank=ctx.rank, world_size=ctx.world_size))
        probes += [(w.to(device), b.to(device)) for w, b in ps.probes()[:-1]] + [None]
        caches[name] = reader.fingerprint()
    feats = _Lockstep(streams)
    theta_all = kl_matrix_from_features(feats, probes, feats, probes, temperature=temperature, backend=backend,
                                        chunk_size=chunk_size, across_ranks=ctx.distributed)
    labels = {readers[n][1].labels for n in anchors}
    sigmas = last_block_sigmas({n: readers[n] for n in ordered}, temperature=temperature, backend=backend,
                               device=device, chunk_size=chunk_size)
    return Scores(anchors=entries, theta_all=theta_all.cpu(), floor=floor, temperature=temperature, split=split,
                  caches=caches, probe_labels=labels.pop() if len(labels) == 1 else "mixed", sigma_last_block=sigmas)


def score(
    cache_root: str | os.PathLike,
    probes_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    anchors: Sequence[str] | None = None,
    split: str = "val",
    temperature: float = ScoreSection.temperature,
    floor: float = DEFAULT_FLOOR,
    backend: str = ScoreSection.backend,
    device: str = "cpu",
    chunk_size: int | None = None,
    plots: bool = True,
) -> Scores:
    """Θ, Σ and Γ for every anchor pair from the `split` caches and the trained probes.

    Args:
        cache_root: the extraction output (``<root>/<anchor>/<split>``).
        probes_dir: where `klas probes` saved the probes.
        out: where to write the scores (nothing is written when None).
        anchors: anchor names to score (default: every anchor with probes and a cache).

    Under torchrun each rank streams its share of the samples and the partial sums are added
    across ranks; every rank returns the scores, rank 0 writes them.
    """
    finite_number(floor, "floor", error=UsageError, positive=True)
    check_temperature(temperature)
    cache_root, probes_dir = Path(cache_root), Path(probes_dir)
    if anchors is None:
        anchors = sorted(p.stem for p in probes_dir.glob("*.safetensors"))
    if len(anchors) < 2:
        raise CacheError(f"need probes of at least two anchors in {probes_dir}, found {list(anchors)}")
    readers = {}
    for name in anchors:
        cache_dir = cache_root / name / split
        reader = CacheReader(cache_dir)
        readers[name] = (reader, load_probes(probes_dir, name))
    result = score_sets(readers, split=split, temperature=temperature, floor=floor, backend=backend, device=device,
                        chunk_size=chunk_size, probes_where=str(probes_dir))
    if out is not None and dist.is_main():
        result.save(out, plots=plots)
    return result
