"""Statistics for the benchmark's samples: percentiles, medians and how far repeated runs differ.

NaN stands for "no measurement" throughout, so a missing gateway or an empty sample list shows up
as ``n/a`` in the report instead of raising half-way through rendering it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable


def pct(values: list[float], q: float) -> float:
    """Percentile with linear interpolation (q in 0..1); NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    k = (len(s) - 1) * q
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def ms(seconds: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.{digits}f}"


def median(values: Iterable[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def spread(values: list[float]) -> float:
    """(max - min) / median: how far repeated runs of the same thing lie apart."""
    values = [v for v in values if not math.isnan(v)]
    return (max(values) - min(values)) / statistics.median(values) if len(values) > 1 else math.nan


def median_ci(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Distribution-free confidence interval of the median: (low, high, its coverage).

    The order statistics x(k), x(n-k+1) with the largest k whose coverage, 1 - 2 P(Binomial(n, 1/2)
    < k), is still >= ``level``; with few values that is (min, max) and a lower coverage.
    """
    v = sorted(x for x in values if not math.isnan(x))
    n = len(v)
    if not n:
        return math.nan, math.nan, 0.0

    def coverage(k: int) -> float:
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n

    k = 1
    while k < (n + 1) // 2 and coverage(k + 1) >= level:
        k += 1
    return v[k - 1], v[n - k], coverage(k)
