"""Statistics of the comparisons, through scipy.stats: means with 95% t intervals (seeds, repeats),
Spearman's rank correlation, and the exact test of a pick set against random sets of its size."""
from __future__ import annotations

import math
import warnings
from typing import Sequence

__all__ = ["mean_interval", "t_quantile_975", "spearman_rho", "random_sets_at_least_as_good"]


def mean_interval(values: Sequence[float]) -> dict:
    """Mean and a 95% interval (t distribution) of independent values."""
    vals = [v for v in values if v is not None]
    n = len(vals)
    if n == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    mean = sum(vals) / n
    if n == 1:
        return {"mean": mean, "low": None, "high": None, "n": 1}
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


def t_quantile_975(dof: int) -> float:
    """The 97.5% quantile of Student's t with `dof` degrees of freedom (for 95% intervals)."""
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (ties take their average rank); NaN when either side is constant."""
    from scipy.stats import ConstantInputWarning, spearmanr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        return float(spearmanr(x, y).statistic)


def random_sets_at_least_as_good(hits: int, picks: int, good: int, population: int) -> float | None:
    """The share of all sets of `picks` configurations drawn from `population` (of which `good` are
    good) that hold at least `hits` good ones: the exact (hypergeometric) chance that a random set of
    the method's size does as well as the method on precision and recall. None without picks."""
    from scipy.stats import hypergeom

    if picks <= 0 or population <= 0:
        return None
    return float(hypergeom.sf(hits - 1, population, good, picks))
