"""Small-sample statistics for seed studies: mean ± std, Student-t intervals, paired t-tests,
and Holm's correction over a family of comparisons.

A study has 3-10 seeds per cell, so intervals use the Student t distribution (scipy.stats),
not the normal. Comparisons are paired by seed: the same seed fixes the data order of both
runs, so the difference removes the seed's share of the variance.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as scipy_stats


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
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2.0, n - 1)) * std / math.sqrt(n)
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
        return PairedTest(
            n, diff.mean, diff.mean, diff.mean, math.copysign(math.inf, diff.mean), 0.0
        )
    result = scipy_stats.ttest_rel(a_arr, b_arr)
    return PairedTest(
        n, diff.mean, diff.ci_low, diff.ci_high, float(result.statistic), float(result.pvalue)
    )


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given (NaN stays NaN, not counted).

    Controls the family-wise error rate over the comparisons made: the k-th smallest of m
    p-values is multiplied by (m - k + 1), and adjusted values never decrease in that order.
    """
    order = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[i] = running
    return adjusted
