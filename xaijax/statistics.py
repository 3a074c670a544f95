"""Seed statistics for studies: mean ± std, paired intervals and a verdict.

A study repeats every method on the same seeds, so two methods are compared on the per-seed
differences ``d_i = a_i - b_i`` (same seed, same baseline model): the seed-to-seed variation both
methods share cancels. The sign convention is *higher is better*: ``a`` is the method under test,
so a positive mean difference favours it (pass ``b, a`` for a lower-is-better metric).

Every function checks its inputs (equal lengths, finite values, enough seeds, a confidence in
``(0, 1)``) and raises ``ValueError`` naming the problem.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import scipy.stats

T_METHOD = "paired t"
BOOTSTRAP_METHOD = "paired percentile bootstrap"
VERDICTS = ("wins", "ties", "loses")


class Interval(NamedTuple):
    """A confidence interval for the mean paired difference ``mean(a - b)``."""

    mean: float  # mean(d)
    low: float
    high: float
    n: int  # number of pairs (seeds)
    std: float  # std(d, ddof=1)
    confidence: float = 0.95
    method: str = T_METHOD


def _as_values(values: Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of numbers, got shape {array.shape}")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(
            f"{name} must be finite; {bad.size} value(s) are not, first at index {bad[0]} "
            f"({array[bad[0]]})"
        )
    return array


def _check_confidence(confidence: float) -> float:
    if isinstance(confidence, bool) or not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return float(confidence)


def paired_differences(a: Sequence[float], b: Sequence[float], *, minimum: int = 2) -> np.ndarray:
    """``d = a - b`` elementwise (pairs share an index, e.g. a seed); needs ``minimum`` pairs."""
    a_values, b_values = _as_values(a, "a"), _as_values(b, "b")
    if a_values.shape != b_values.shape:
        raise ValueError(
            f"paired samples must have equal lengths, got {a_values.size} and {b_values.size}"
        )
    if a_values.size < minimum:
        raise ValueError(
            f"a paired interval needs at least {minimum} pairs (seeds), got {a_values.size}"
        )
    return a_values - b_values


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """``(mean, s)`` with the sample standard deviation ``s = sqrt(sum((x - mean)^2) / (n - 1))``.

    With one value ``s`` is undefined (``n - 1 = 0``) and returned as ``nan``, never 0: a single
    seed says nothing about the spread. Raises ``ValueError`` for no values or non-finite ones.
    """
    array = _as_values(values, "values")
    if array.size == 0:
        raise ValueError("mean_std needs at least one value")
    std = float(np.std(array, ddof=1)) if array.size > 1 else math.nan
    return float(np.mean(array)), std


def paired_t_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Interval:
    """Paired t-interval for ``mean(a - b)``.

    ``d = a - b`` over ``n >= 2`` pairs; ``mean(d) ± t_{(1+c)/2, n-1} * s_d / sqrt(n)`` with
    ``s_d = std(d, ddof=1)`` and ``t_{q, n-1}`` the ``q`` quantile of Student's t with ``n - 1``
    degrees of freedom. Equal differences (``s_d = 0``) give the point interval ``[d, d]``.
    """
    confidence = _check_confidence(confidence)
    d = paired_differences(a, b)
    n = d.size
    mean, std = float(np.mean(d)), float(np.std(d, ddof=1))
    half = float(scipy.stats.t.ppf((1.0 + confidence) / 2.0, n - 1)) * std / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, std, confidence, T_METHOD)


def paired_bootstrap_interval(
    a: Sequence[float],
    b: Sequence[float],
    confidence: float = 0.95,
    num_resamples: int = 10_000,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval for ``mean(a - b)``.

    Pairs are resampled together: each of ``num_resamples`` resamples draws ``n`` indices with
    replacement (``numpy.random.default_rng(seed)``) and takes ``m* = mean(d[idx])``; the interval
    is the ``(1-c)/2`` and ``(1+c)/2`` quantiles of the ``m*`` (numpy's linear interpolation).
    With few seeds it is narrower than the t-interval (it ignores the ``n - 1`` correction and can
    never reach beyond ``[min(d), max(d)]``).
    """
    confidence = _check_confidence(confidence)
    if isinstance(num_resamples, bool) or not isinstance(num_resamples, int) or num_resamples < 1:
        raise ValueError(f"num_resamples must be an integer >= 1, got {num_resamples!r}")
    d = paired_differences(a, b)
    n = d.size
    indices = np.random.default_rng(seed).integers(0, n, size=(num_resamples, n))
    means = d[indices].mean(axis=1)
    low, high = np.quantile(means, [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0])
    return Interval(
        float(np.mean(d)),
        float(low),
        float(high),
        n,
        float(np.std(d, ddof=1)),
        confidence,
        BOOTSTRAP_METHOD,
    )


def verdict(interval: Interval) -> str:
    """``wins`` when the whole interval is above 0 (``low > 0``), ``loses`` when it is below 0
    (``high < 0``), else ``ties`` (the interval covers 0). Higher is better for ``a``."""
    if not (math.isfinite(interval.low) and math.isfinite(interval.high)):
        raise ValueError(f"interval bounds must be finite, got [{interval.low}, {interval.high}]")
    if interval.low > interval.high:
        raise ValueError(f"interval low {interval.low} exceeds high {interval.high}")
    if interval.low > 0:
        return "wins"
    if interval.high < 0:
        return "loses"
    return "ties"
