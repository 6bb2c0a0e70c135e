"""Evaluation of a finetuned supernet and the curve measures (METHOD.md §6).

- `evaluate_routes`: top-1 of every route on a split, with its FLOPs and parameters;
- `pareto_frontier`: the routes no other route beats at lower or equal FLOPs;
- `frontier_auc`: area under the accuracy-FLOPs frontier with FLOPs normalised to [0, 1] over the
  anchors' range. The frontier is read as a step function: at a FLOPs budget, the best accuracy of
  any route within it (before the cheapest route: that route's accuracy). The integral of that step
  function over [0, 1] is the AUC, in accuracy points.
- `accuracy_gain_at_equal_flops` / `flops_saving_at_equal_accuracy`: the largest gap between two
  such step functions, read vertically and horizontally;
- `spearman`: rank correlation (average ranks for ties) between Γ and accuracy.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch

from klas import distributed as dist
from klas.compiling import compiled_parts, should_compile, supernet_parts
from klas.memory_format import channels_last_models
from klas.errors import UsageError
from klas.reading import whole_number
from klas.extraction.data import prefetched
from klas.progress import progress_bar
from klas.stitches import Route
from klas.stitching.stitch import StitchedSupernet

__all__ = ["RouteResult", "counts_agree", "evaluate_routes", "pareto_frontier", "frontier_auc", "accuracy_gain_at_equal_flops",
           "flops_saving_at_equal_accuracy", "spearman"]


@dataclass(frozen=True)
class RouteResult:
    name: str
    source: str
    target: str
    i: int
    j: int
    flops: int
    params: int
    top1: float  # percent
    correct: int
    total: int
    gamma: float | None = None  # Γ before finetuning, when the route was scored

    @property
    def route(self) -> Route:
        """The route evaluated (klas.stitches.Route)."""
        return Route.of(self)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "RouteResult":
        """The inverse of `to_json`, every field's type checked (ValueError / TypeError / KeyError otherwise)."""
        import math

        if not isinstance(d, dict) or set(d) != set(cls.__dataclass_fields__):
            raise ValueError("route entry fields differ")
        ints = ("i", "j", "flops", "params", "correct", "total")
        if not all(isinstance(d[k], str) for k in ("name", "source", "target")) or not all(
                whole_number(d[k]) for k in ints):
            raise ValueError("route entry has wrong types")
        for k in ("top1", "gamma"):
            v = d[k]
            if (v is not None or k == "top1") and (isinstance(v, bool) or not isinstance(v, (int, float))
                                                   or not math.isfinite(v)):
                raise ValueError(f"route entry {k} is not a finite number")
        if d["correct"] > d["total"] or not 0 <= d["top1"] <= 100 or not counts_agree(d["top1"], d["correct"], d["total"]):
            raise ValueError("route entry counts do not add up")
        return cls(**d)


def counts_agree(top1: float, correct: int, total: int) -> bool:
    """Whether a recorded top-1 (percent) is the one its own correct / total counts give."""
    return total > 0 and abs(top1 - 100.0 * correct / total) <= 1e-6


@torch.inference_mode()
def evaluate_routes(net: StitchedSupernet, loader, *, device: str = "cpu", progress: bool = True,
                    gammas: dict[str, float] | None = None) -> list[RouteResult]:
    """Top-1 of every route of `net` over `loader`'s (images, labels); `gammas` by route name.

    Under torchrun give each rank its share of the images: the counts are summed over the ranks.
    """
    net.to(device).eval()
    correct = torch.zeros(len(net), dtype=torch.int64)
    total = 0
    batches = prefetched(loader) if getattr(loader, "num_workers", 0) == 0 else loader
    images_in = len(loader.dataset) if hasattr(loader, "dataset") else len(loader)
    compiled = should_compile(training=False, image_passes=images_in * len(net))
    with channels_last_models([net], device), compiled_parts(supernet_parts(net), compiled):
        for images, labels in progress_bar(batches, total=len(loader), disable=not progress,
                                           desc=f"evaluate {len(net)} routes", unit="batch"):
            logits = net.forward_many(images.to(device))
            for k, z in logits.items():
                correct[k] += int((z.argmax(dim=1).cpu() == labels).sum())
            total += len(labels)
    counts = dist.all_reduce_sum(torch.cat([correct, torch.tensor([total])]))
    correct, total = counts[:-1], int(counts[-1])
    gammas = gammas or {}
    return [RouteResult(r.name, r.source, r.target, r.i, r.j, net.route_flops(k), net.route_params(k),
                        100.0 * int(correct[k]) / max(total, 1), int(correct[k]), total, gammas.get(r.name))
            for k, r in enumerate(net.routes)]


def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (FLOPs, accuracy) points on the frontier, cheapest first: each one more
    accurate than every cheaper point and than every other point of its FLOPs, except an exact
    twin (same FLOPs, same accuracy), which is on it as well."""
    order = sorted(range(len(points)), key=lambda k: (points[k][0], -points[k][1]))
    frontier, best = [], float("-inf")
    for k in order:
        if points[k][1] > best or (frontier and points[k] == points[frontier[-1]]):
            frontier.append(k)
            best = points[k][1]
    return frontier


def _step_curve(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    return [points[k] for k in pareto_frontier(points)]


def _best_within(curve: list[tuple[float, float]], flops: float) -> float:
    best = curve[0][1]
    for f, a in curve:
        if f <= flops:
            best = a
    return best


def frontier_auc(points: Sequence[tuple[float, float]], flops_range: tuple[float, float]) -> float:
    """∫₀¹ best accuracy within the budget lo + u·(hi − lo) du, in accuracy points."""
    lo, hi = flops_range
    if not hi > lo:
        raise UsageError(f"the FLOPs range must be increasing, got {flops_range}")
    curve = _step_curve(points)
    edges = sorted({0.0, 1.0} | {min(max((f - lo) / (hi - lo), 0.0), 1.0) for f, _ in curve})
    area = 0.0
    for a, b in zip(edges, edges[1:]):
        area += (b - a) * _best_within(curve, lo + a * (hi - lo) + 1e-9 * (hi - lo))
    return area


def accuracy_gain_at_equal_flops(ours: Sequence[tuple[float, float]], theirs: Sequence[tuple[float, float]],
                                 flops_range: tuple[float, float]) -> tuple[float, float]:
    """(largest accuracy gain of our step curve over theirs at one FLOPs budget, that budget)."""
    a, b = _step_curve(ours), _step_curve(theirs)
    lo, hi = flops_range
    budgets = sorted({f for f, _ in a + b if lo <= f <= hi} | {lo, hi})
    return max(((_best_within(a, f) - _best_within(b, f), f) for f in budgets), key=lambda t: t[0])


def flops_saving_at_equal_accuracy(ours: Sequence[tuple[float, float]], theirs: Sequence[tuple[float, float]]
                                   ) -> tuple[float, float]:
    """(largest ratio theirs/ours of the FLOPs each needs to reach an accuracy both reach, that accuracy)."""
    a, b = _step_curve(ours), _step_curve(theirs)

    def cheapest(curve, acc):
        return min((f for f, x in curve if x >= acc), default=None)

    best = (1.0, float("nan"))
    for acc in sorted({x for _, x in a + b}):
        fa, fb = cheapest(a, acc), cheapest(b, acc)
        if fa and fb is not None and fb / fa > best[0]:
            best = (fb / fa, acc)
    return best


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation of two equally long sequences (NaN when one is constant)."""
    from klas.evaluation.stats import spearman_rho

    if len(x) != len(y) or len(x) < 2:
        raise UsageError("spearman needs two sequences of the same length, at least 2")
    return spearman_rho(x, y)
