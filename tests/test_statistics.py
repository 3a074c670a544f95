"""Seed statistics against scipy and against small examples worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from xaijax import statistics

A = [0.91, 0.88, 0.905, 0.87, 0.899]
B = [0.90, 0.885, 0.89, 0.86, 0.893]


def test_mean_std_matches_numpy_sample_std():
    mean, std = statistics.mean_std(A)
    assert mean == pytest.approx(np.mean(A))
    assert std == pytest.approx(np.std(A, ddof=1))


def test_mean_std_by_hand_and_of_one_value():
    # mean(1, 2, 4) = 7/3; squared deviations 16/9 + 1/9 + 25/9 = 42/9; / (n-1) = 7/3.
    mean, std = statistics.mean_std([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3)
    assert std == pytest.approx(math.sqrt(7 / 3))
    mean, std = statistics.mean_std([0.5])
    assert mean == 0.5 and math.isnan(std)


def test_paired_t_interval_matches_scipy():
    interval = statistics.paired_t_interval(A, B, confidence=0.9)
    d = np.subtract(A, B)
    n = len(d)
    half = scipy.stats.t.ppf(0.95, n - 1) * np.std(d, ddof=1) / math.sqrt(n)
    assert interval.n == n
    assert interval.mean == pytest.approx(d.mean())
    assert interval.std == pytest.approx(np.std(d, ddof=1))
    assert (interval.low, interval.high) == pytest.approx((d.mean() - half, d.mean() + half))
    ci = scipy.stats.ttest_rel(A, B).confidence_interval(confidence_level=0.9)
    assert (interval.low, interval.high) == pytest.approx((ci.low, ci.high))
    assert interval.method == statistics.T_METHOD and interval.confidence == 0.9


def test_paired_t_interval_by_hand():
    # d = (1, 3): mean 2, s = sqrt(2), n = 2, t_{0.975, 1} = 12.7062047...
    interval = statistics.paired_t_interval([2.0, 4.0], [1.0, 1.0])
    half = 12.706204736174698 * math.sqrt(2) / math.sqrt(2)
    assert (interval.mean, interval.std) == pytest.approx((2.0, math.sqrt(2)))
    assert (interval.low, interval.high) == pytest.approx((2.0 - half, 2.0 + half))
    assert statistics.verdict(interval) == "ties"


def test_equal_differences_give_a_point_interval():
    interval = statistics.paired_t_interval([0.5, 0.6, 0.7], [0.4, 0.5, 0.6])
    assert interval.low == pytest.approx(0.1) and interval.high == pytest.approx(0.1)
    assert statistics.verdict(interval) == "wins"


def test_bootstrap_agrees_with_scipy_percentile_bootstrap():
    rng = np.random.default_rng(3)
    a = rng.normal(0.9, 0.01, size=12)
    b = a - rng.normal(0.004, 0.006, size=12)
    ours = statistics.paired_bootstrap_interval(a, b, 0.95, num_resamples=20_000, seed=1)
    theirs = scipy.stats.bootstrap(
        (a, b),
        lambda x, y, axis: np.mean(x - y, axis=axis),
        paired=True,
        vectorized=True,
        method="percentile",
        confidence_level=0.95,
        n_resamples=20_000,
        random_state=np.random.default_rng(2),
    ).confidence_interval
    # Different random resamples: the bounds agree to Monte Carlo error (~1e-4 here).
    spread = np.std(a - b, ddof=1) / math.sqrt(len(a))
    assert ours.low == pytest.approx(theirs.low, abs=0.1 * spread)
    assert ours.high == pytest.approx(theirs.high, abs=0.1 * spread)
    assert ours.mean == pytest.approx(np.mean(a - b))
    assert ours.method == statistics.BOOTSTRAP_METHOD


def test_bootstrap_by_hand_two_pairs():
    # d = (-1, 3): a resample mean is -1 (p 1/4), 1 (p 1/2) or 3 (p 1/4); the 2.5% and 97.5%
    # quantiles of many resamples are -1 and 3.
    interval = statistics.paired_bootstrap_interval([0.0, 3.0], [1.0, 0.0], num_resamples=4000)
    assert (interval.low, interval.high, interval.mean) == (-1.0, 3.0, 1.0)
    again = statistics.paired_bootstrap_interval([0.0, 3.0], [1.0, 0.0], num_resamples=4000)
    assert again == interval  # seeded


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [(0.01, 0.02, "wins"), (-0.02, -0.01, "loses"), (-0.01, 0.02, "ties"), (0.0, 0.01, "ties")],
)
def test_verdict(low, high, expected):
    interval = statistics.Interval((low + high) / 2, low, high, 5, 0.01)
    assert statistics.verdict(interval) == expected


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: statistics.paired_t_interval([1.0, 2.0], [1.0]), "equal lengths"),
        (lambda: statistics.paired_t_interval([1.0], [2.0]), "at least 2 pairs"),
        (lambda: statistics.paired_t_interval([1.0, math.nan], [1.0, 2.0]), "a must be finite"),
        (lambda: statistics.paired_t_interval([1.0, 2.0], [1.0, math.inf]), "b must be finite"),
        (lambda: statistics.paired_t_interval([1.0, 2.0], [1.0, 2.0], 1.0), "confidence"),
        (lambda: statistics.paired_t_interval([1.0, 2.0], [1.0, 2.0], 0.0), "confidence"),
        (
            lambda: statistics.paired_bootstrap_interval([1.0, 2.0], [1.0, 2.0], 0.95, 0),
            "num_resamples",
        ),
        (lambda: statistics.mean_std([]), "at least one value"),
        (lambda: statistics.mean_std([1.0, math.inf]), "values must be finite"),
        (lambda: statistics.verdict(statistics.Interval(0, math.nan, 1, 2, 1)), "finite"),
        (lambda: statistics.verdict(statistics.Interval(0, 1, -1, 2, 1)), "exceeds"),
    ],
)
def test_bad_inputs_name_the_problem(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_allocation_differences_lists_only_disagreements_with_both_allocations():
    from xaijax.study import allocation_differences

    def row(seed, budget, method, bits, accuracy):
        return {
            "seed": seed,
            "stage": "quantize",
            "method": method,
            "setting": {"budget": budget},
            "layer_bits": bits,
            "accuracy": accuracy,
        }

    rows = [
        row(0, 3.0, "deeplift_sensitivity", {"a": 4, "b": 2}, 0.9),
        row(0, 3.0, "hessian", {"a": 4, "b": 2}, 0.9),
        row(1, 3.0, "deeplift_sensitivity", {"a": 2, "b": 4}, 0.8),
        row(1, 3.0, "hessian", {"a": 4, "b": 2}, 0.85),
        row(1, 3.0, "uniform", {"a": 3, "b": 3}, 0.7),
    ]
    text = allocation_differences(rows)
    assert "They differ in 1 of 2 (seed, budget) pairs." in text
    lines = [line for line in text.splitlines() if line.startswith("| 1 ")]
    assert lines == ["| 1 | 3 | no | a=2, b=4 | a=4, b=2 | 0.8000 | 0.8500 |"]
    assert allocation_differences(rows[:1]) == ""
