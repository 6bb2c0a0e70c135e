"""Statistics of the comparisons, through scipy.stats: means with 95% t intervals (seeds, repeats),
Spearman's rank correlation, and the exact test of a pick set against random sets of its size."""
from __future__ import annotations

import math
import warnings
from typing import Sequence

__all__ = ["mean_interval", "t_quantile", "sign_test", "spearman_rho", "within_group_spearman", "random_sets_at_least_as_good"]


def mean_interval(values: Sequence[float], level: float = 0.95) -> dict:
    """Mean and a two-sided `level` interval (t distribution; 95% unless told) of independent values."""
    vals = [v for v in values if v is not None]
    n = len(vals)
    if n == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    mean = sum(vals) / n
    if n == 1:
        return {"mean": mean, "low": None, "high": None, "n": 1}
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = t_quantile(n - 1, level) * sd / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


def t_quantile(dof: int, level: float = 0.95) -> float:
    """The quantile of Student's t with `dof` degrees of freedom that bounds a two-sided `level` interval."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"an interval's level lies strictly between 0 and 1, not {level!r}")
    from scipy.stats import t

    return float(t.ppf((1.0 + level) / 2.0, dof))


def sign_test(values: Sequence[float]) -> tuple[int, int, float]:
    """(values above 0, nonzero values, two-sided exact binomial p of that count under a median of 0)."""
    nonzero = [v for v in values if v != 0]
    above = sum(v > 0 for v in nonzero)
    if not nonzero:
        return 0, 0, 1.0
    from scipy.stats import binomtest

    return above, len(nonzero), float(binomtest(above, len(nonzero), 0.5).pvalue)


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (ties take their average rank); NaN when either side is constant."""
    from scipy.stats import ConstantInputWarning, spearmanr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        return float(spearmanr(x, y).statistic)


def within_group_spearman(groups: dict, min_size: int = 3) -> tuple[float | None, list[tuple]]:
    """Spearman's rho within each group (FLOPs bucket) and their mean weighted by group size.

    groups: key -> [(score, accuracy), ...]. A group of fewer than `min_size` members, or whose
    scores or accuracies are all equal (no ranking), has no rho and is left out. Returns (the
    weighted mean, or None when no group has a rho; [(key, members, rho)] of the groups that do).
    A few groups carry no t interval: the per-group values are the honest record."""
    per_group = []
    for key, pairs in groups.items():
        if len(pairs) >= min_size:
            rho = spearman_rho([p[0] for p in pairs], [p[1] for p in pairs])
            if not math.isnan(rho):
                per_group.append((key, len(pairs), rho))
    if not per_group:
        return None, []
    return sum(n * rho for _, n, rho in per_group) / sum(n for _, n, _ in per_group), per_group


def random_sets_at_least_as_good(hits: int, picks: int, good: int, population: int) -> float | None:
    """The share of all sets of `picks` configurations drawn from `population` (of which `good` are
    good) that hold at least `hits` good ones: the exact (hypergeometric) chance that a random set of
    the method's size does as well as the method on precision and recall. None without picks."""
    from scipy.stats import hypergeom

    if picks <= 0 or population <= 0:
        return None
    return float(hypergeom.sf(hits - 1, population, good, picks))
