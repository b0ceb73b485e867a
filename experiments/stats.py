"""Small-sample statistics for seed sweeps: mean ± std, Student-t intervals, paired t-tests.

A sweep has 3-10 seeds per cell, so intervals use the Student t distribution, not the normal.
The t CDF and quantile are computed here (regularised incomplete beta by continued fraction,
quantile by bisection) rather than with scipy, which is not a dependency of the package; they
agree with scipy.stats.t to ~1e-12 for the degrees of freedom a sweep produces.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

_EPS = 1e-15
_TINY = 1e-300


@dataclasses.dataclass(frozen=True)
class Summary:
    """Mean, sample std (ddof=1) and the Student-t interval for the mean of `n` values.

    With n < 2 the std and interval are NaN (not zero): one seed says nothing about spread.
    """

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


@dataclasses.dataclass(frozen=True)
class PairedTest:
    """Paired t-test of a - b over `n` pairs: mean difference, its interval, t and two-sided p."""

    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    t: float
    p: float


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz evaluation)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        for numerator in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                          -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            step = d * c
            h *= step
        if abs(step - 1.0) < _EPS:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    # The continued fraction converges fast only for x < (a + 1) / (a + b + 2); use the
    # symmetry I_x(a, b) = 1 - I_{1-x}(b, a) on the other side.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_ppf(q: float, df: float) -> float:
    """The q-quantile of Student's t with `df` degrees of freedom (0 < q < 1)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"t_ppf needs 0 < q < 1, got q={q}.")
    if q < 0.5:
        return -t_ppf(1.0 - q, df)
    if q == 0.5:
        return 0.0
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < q:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * hi:
            break
    return 0.5 * (lo + hi)


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Mean ± sample std and the two-sided Student-t `confidence` interval of the mean."""
    x = np.asarray(values, dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n < 2:
        return Summary(n, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = t_ppf(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def paired_test(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> PairedTest:
    """Paired t-test of `a` against `b` (same seeds, same order): is mean(a - b) nonzero?

    When every difference is equal (std 0) the t statistic is ±inf with p = 0, or, for all
    differences zero, NaN with p = 1: the limits of the test, rather than a division error.
    """
    a_arr, b_arr = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"paired_test needs equal lengths, got {a_arr.size} and {b_arr.size}.")
    diff = summarize(a_arr - b_arr, confidence)
    n = diff.n
    if n < 2:
        return PairedTest(n, diff.mean, math.nan, math.nan, math.nan, math.nan)
    if diff.std == 0.0:
        if diff.mean == 0.0:
            return PairedTest(n, 0.0, 0.0, 0.0, math.nan, 1.0)
        return PairedTest(n, diff.mean, diff.mean, diff.mean, math.copysign(math.inf, diff.mean),
                          0.0)
    t = diff.mean / (diff.std / math.sqrt(n))
    p = betainc((n - 1) / 2.0, 0.5, (n - 1) / (n - 1 + t * t))
    return PairedTest(n, diff.mean, diff.ci_low, diff.ci_high, t, p)
