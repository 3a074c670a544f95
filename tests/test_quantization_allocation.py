"""Bit allocation: budgets, the exact knapsack solver vs brute force, strategies, sensitivities."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xaijax.quantization import (
    SUPPORTED_BITS,
    Budget,
    allocate_bits,
    allocation,
    allocation_bits,
    budget_in_bits,
    deeplift_sensitivity,
    fake_quantize,
    hessian_sensitivity,
    hutchinson_traces,
    layer_importance,
    solve_multiple_choice_knapsack,
)


def brute_force(costs: np.ndarray, values: np.ndarray, capacity: int) -> float:
    best = np.inf
    for pick in itertools.product(range(costs.shape[1]), repeat=costs.shape[0]):
        rows = np.arange(costs.shape[0])
        if costs[rows, pick].sum() <= capacity:
            best = min(best, values[rows, pick].sum())
    return best


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    rows=st.integers(1, 4),
    options=st.integers(1, 4),
    slack=st.floats(0.0, 1.0),
)
def test_knapsack_matches_brute_force(seed, rows, options, slack):
    rng = np.random.default_rng(seed)
    costs = rng.integers(0, 12, size=(rows, options)) * rng.integers(1, 4)
    values = rng.normal(size=(rows, options))
    low, high = costs.min(axis=1).sum(), costs.max(axis=1).sum()
    capacity = int(low + slack * (high - low))
    picked = solve_multiple_choice_knapsack(costs, values, capacity)
    rows_index = np.arange(rows)
    assert costs[rows_index, picked].sum() <= capacity
    np.testing.assert_allclose(
        values[rows_index, picked].sum(), brute_force(costs, values, capacity)
    )


def test_knapsack_infeasible_and_bad_input():
    costs = np.array([[3, 5], [4, 6]])
    with pytest.raises(ValueError, match="infeasible"):
        solve_multiple_choice_knapsack(costs, np.zeros((2, 2)), 6)
    with pytest.raises(ValueError, match="non-negative integers"):
        solve_multiple_choice_knapsack(costs * 1.0, np.zeros((2, 2)), 20)
    with pytest.raises(ValueError, match="equal 2-D shapes"):
        solve_multiple_choice_knapsack(costs, np.zeros((2, 3)), 20)


def test_knapsack_coarse_units_never_exceed_capacity():
    rng = np.random.default_rng(0)
    costs = rng.integers(1000, 5000, size=(5, 4)) * 7 + 1
    values = rng.normal(size=(5, 4))
    capacity = int(costs.mean(axis=1).sum())
    picked = solve_multiple_choice_knapsack(costs, values, capacity, max_units=64)
    assert costs[np.arange(5), picked].sum() <= capacity


SIZES = {"conv1": 150, "conv2": 2400, "fc1": 48000, "fc2": 10080, "fc3": 840}


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), average=st.floats(2.0, 8.0))
def test_strategies_never_exceed_budget(seed, average):
    rng = np.random.default_rng(seed)
    sensitivity = {
        name: dict(zip(SUPPORTED_BITS, np.sort(rng.exponential(size=7))[::-1], strict=True))
        for name in SIZES
    }
    importance = {name: float(rng.exponential()) for name in SIZES}
    total = budget_in_bits(average, SIZES)
    for strategy in ("uniform", "deeplift_rank", "deeplift_sensitivity", "hessian"):
        bits = allocate_bits(
            strategy, SIZES, average, sensitivity=sensitivity, importance=importance
        )
        assert set(bits) == set(SIZES)
        assert all(b in SUPPORTED_BITS for b in bits.values())
        assert allocation_bits(bits, SIZES) <= total


def test_optimal_allocation_matches_brute_force_over_layers():
    rng = np.random.default_rng(1)
    sizes = {"a": 30, "b": 70, "c": 45}
    sensitivity = {
        n: {b: float(rng.exponential() * 2.0**-b) for b in SUPPORTED_BITS} for n in sizes
    }
    for average in (2.0, 3.3, 5.0, 7.9):
        bits = allocate_bits("hessian", sizes, average, sensitivity=sensitivity)
        total = budget_in_bits(average, sizes)
        best = min(
            sum(sensitivity[n][b] for n, b in zip(sizes, pick, strict=True))
            for pick in itertools.product(SUPPORTED_BITS, repeat=3)
            if sum(sizes[n] * b for n, b in zip(sizes, pick, strict=True)) <= total
        )
        assert sum(sensitivity[n][bits[n]] for n in sizes) == pytest.approx(best)


def test_uniform_rule():
    assert allocate_bits("uniform", SIZES, 4.6) == dict.fromkeys(SIZES, 4)
    assert allocate_bits("uniform", SIZES, 8.0) == dict.fromkeys(SIZES, 8)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), average=st.floats(2.0, 8.0))
def test_rank_rule_is_lexicographic_in_importance_order(seed, average):
    """Brute force: the largest feasible bits vector, compared in importance order."""
    rng = np.random.default_rng(seed)
    importance = {name: float(rng.exponential()) for name in SIZES}
    bits = allocate_bits("deeplift_rank", SIZES, average, importance=importance)
    order = sorted(SIZES, key=lambda n: -importance[n])
    total = budget_in_bits(average, SIZES)
    best = max(
        pick
        for pick in itertools.product(SUPPORTED_BITS, repeat=len(order))
        if sum(SIZES[n] * b for n, b in zip(order, pick, strict=True)) <= total
    )
    assert tuple(bits[n] for n in order) == best


def test_rank_rule_worked_example():
    # 3 bits on average: 184,410 bits; conv1, conv2 and fc3 fit at 8 bits, fc2 gets 6 and
    # fc1 the rest: (184,410 - 8 * 3,390 - 6 * 10,080) / 48,000 = 2.0 bits.
    importance = {"conv1": 5.0, "conv2": 4.0, "fc1": 1.0, "fc2": 2.0, "fc3": 3.0}
    bits = allocate_bits("deeplift_rank", SIZES, 3.0, importance=importance)
    assert bits == {"conv1": 8, "conv2": 8, "fc3": 8, "fc2": 6, "fc1": 2}


def test_budget_in_bytes_equals_average_bits():
    n = sum(SIZES.values())
    assert budget_in_bits(Budget(n * 4 / 8, "bytes"), SIZES) == budget_in_bits(4.0, SIZES) == 4 * n
    assert allocate_bits("uniform", SIZES, Budget(n * 6 / 8, "bytes")) == dict.fromkeys(SIZES, 6)


@pytest.mark.parametrize("budget", [1.99, 8.01, -1.0, float("nan"), Budget(10, "bytes")])
def test_bad_budgets_raise(budget):
    with pytest.raises(ValueError, match="budget"):
        allocate_bits("uniform", SIZES, budget)


def test_bad_strategy_and_missing_inputs_raise():
    with pytest.raises(ValueError, match="unknown allocation strategy 'greedy'"):
        allocate_bits("greedy", SIZES, 4.0)
    with pytest.raises(ValueError, match="needs importance"):
        allocate_bits("deeplift_rank", SIZES, 4.0)
    with pytest.raises(ValueError, match="needs sensitivity"):
        allocate_bits("deeplift_sensitivity", SIZES, 4.0)
    with pytest.raises(ValueError, match="layer_sizes"):
        allocate_bits("uniform", {"a": 0}, 4.0)
    with pytest.raises(ValueError, match="bit width 9"):
        allocate_bits("uniform", SIZES, 4.0, bit_choices=(4, 9))


def test_deeplift_sensitivity_is_multiplier_times_error():
    """With S = mean|w * m|, the sensitivity is sum |m| * |w - Q(w)|, decreasing in the width."""
    key1, key2 = jax.random.split(jax.random.key(0))
    kernel = jax.random.normal(key1, (20, 4)).at[0, 0].set(0.0)
    multipliers = jnp.abs(jax.random.normal(key2, (20, 4)))
    scores = {"fc": {"kernel": jnp.abs(kernel) * multipliers}}
    table = deeplift_sensitivity({"fc": {"kernel": kernel}}, scores)
    for b in SUPPORTED_BITS:
        want = float(jnp.sum(multipliers * jnp.abs(kernel - fake_quantize(kernel, b))))
        assert table["fc"][b] == pytest.approx(want, rel=1e-4)
    values = [table["fc"][b] for b in SUPPORTED_BITS]
    assert all(b < a for a, b in itertools.pairwise(values))
    assert layer_importance(scores)["fc"] == pytest.approx(float(jnp.mean(scores["fc"]["kernel"])))


def test_hutchinson_trace_of_quadratic():
    """L = 1/2 sum_l w_l^T A_l w_l has layer traces tr(A_l); Rademacher is exact for diagonal A."""
    diag_a = jnp.arange(1.0, 7.0).reshape(3, 2)
    full_b = jnp.array([[2.0, 0.5], [0.5, 3.0]])
    params = {
        "a": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)},
        "b": {"kernel": jnp.ones((2, 1))},
    }

    def loss(p):
        quad_b = p["b"]["kernel"][:, 0] @ full_b @ p["b"]["kernel"][:, 0]
        return (
            0.5 * jnp.sum(diag_a * p["a"]["kernel"] ** 2)
            + 0.5 * quad_b
            + jnp.sum(p["a"]["bias"] ** 3)
        )

    traces = hutchinson_traces(loss, params, ["a", "b"], jax.random.key(0), num_samples=4)
    assert traces["a"] == pytest.approx(float(diag_a.sum()), rel=1e-5)
    # v^T B v = tr(B) + 2 B_01 v0 v1 has mean tr(B) and variance 1: 400 samples give sd 0.05.
    many = hutchinson_traces(loss, params, ["b"], jax.random.key(1), num_samples=400)
    assert many["b"] == pytest.approx(5.0, abs=0.2)
    kernel = jax.random.normal(jax.random.key(2), (3, 2))
    table = hessian_sensitivity({"a": {"kernel": kernel}}, {"a": traces["a"]})
    for b in SUPPORTED_BITS:
        delta = kernel - fake_quantize(kernel, b)
        assert table["a"][b] == pytest.approx(traces["a"] / 6 * float(jnp.sum(delta**2)), rel=1e-5)
    assert hessian_sensitivity({"a": {"kernel": kernel}}, {"a": -3.0})["a"][2] == 0.0


def test_a_registered_strategy_is_usable_by_name_and_gets_its_declared_table():
    from xaijax.quantization import Strategy, get_strategy, register_strategy

    seen = {}

    def least_important_first(sizes, total_bits, choices, table):
        seen["table"] = table
        inverted = {name: -value for name, value in table.items()}
        return allocation.rank_allocation(sizes, inverted, total_bits, choices)

    strategy = Strategy("test_least_important_first", least_important_first, "layer_importance")
    assert register_strategy(strategy) is get_strategy("test_least_important_first")
    importance = {name: float(i) for i, name in enumerate(SIZES)}
    bits = allocate_bits("test_least_important_first", SIZES, 4.0, importance=importance)
    assert seen["table"] is importance
    assert bits == allocation.rank_allocation(
        SIZES, {n: -v for n, v in importance.items()}, 4 * sum(SIZES.values()), SUPPORTED_BITS
    )
    with pytest.raises(ValueError, match="needs importance="):
        allocate_bits("test_least_important_first", SIZES, 4.0)
    with pytest.raises(ValueError, match="test_least_important_first"):
        allocate_bits("nope", SIZES, 4.0)
    with pytest.raises(ValueError, match="already registered"):
        register_strategy(Strategy("uniform", least_important_first))
