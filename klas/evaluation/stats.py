"""Means with 95% intervals, for figures measured over several seeds or random draws."""
from __future__ import annotations

import math
from typing import Sequence

__all__ = ["mean_interval", "t_quantile_975"]


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
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
             12: 2.179, 15: 2.131, 19: 2.093, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}
    if dof in table:
        return table[dof]
    keys = sorted(table)
    if dof > keys[-1]:
        return 1.960
    lo = max(k for k in keys if k < dof)
    hi = min(k for k in keys if k > dof)
    return table[lo] + (table[hi] - table[lo]) * (dof - lo) / (hi - lo)
