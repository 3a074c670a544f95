"""Per-layer bit allocation under a weight-storage budget.

A budget counts the bits of the quantized kernels only: layer ``l`` with ``n_l`` weights at ``b_l``
bits costs ``n_l * b_l`` bits (per-channel scales and biases are float32 and reported separately).
Strategies:

* ``uniform``: the widest single width every layer can take within the budget.
* ``deeplift_rank``: the paper's rule, more bits to more important layers. Layers are ranked by
  DeepLIFT importance per weight and served in that order: each takes the widest width that still
  leaves the narrowest width for every later layer (the lexicographically largest allocation in
  ranking order that fits the budget).
* ``deeplift_sensitivity`` and ``hessian``: minimise ``sum_l s_l(b_l)`` subject to
  ``sum_l n_l * b_l <= budget`` exactly, by dynamic programming over integer cost units (a
  multiple-choice knapsack); the two differ only in the sensitivity table ``s`` (see
  ``xaijax.quantization.sensitivity``).

Strategies are registered :class:`Strategy` objects: each names the per-layer table it reads
(``layer_importance``, ``deeplift_sensitivity``, ``hessian_sensitivity`` or none), so adding one is
a function and a :func:`register_strategy` call; the quantization experiment hands every strategy
the table it declares.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

from xaijax.quantization.numerics import SUPPORTED_BITS, check_bits

SensitivityTable = Mapping[str, Mapping[int, float]]


class Budget(NamedTuple):
    """A weight-storage budget: ``value`` average bits per weight, or total bytes of kernels."""

    value: float
    unit: Literal["avg_bits", "bytes"] = "avg_bits"


def _check_layer_sizes(layer_sizes: Mapping[str, int]) -> dict[str, int]:
    if not layer_sizes:
        raise ValueError("layer_sizes is empty: there is nothing to allocate bits to")
    sizes = {}
    for name, size in layer_sizes.items():
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
            raise ValueError(f"layer_sizes[{name!r}] must be a positive integer, got {size!r}")
        sizes[name] = int(size)
    return sizes


def _check_bit_choices(bit_choices: Sequence[int]) -> tuple[int, ...]:
    if not bit_choices:
        raise ValueError("bit_choices is empty")
    return tuple(sorted({check_bits(b, "bit_choices") for b in bit_choices}))


def budget_in_bits(
    budget: float | Budget,
    layer_sizes: Mapping[str, int],
    bit_choices: Sequence[int] = SUPPORTED_BITS,
) -> int:
    """The budget as a whole number of kernel bits; raises if outside what ``bit_choices`` allow.

    A budget below every layer at the narrowest width, or above every layer at the widest, is an
    error (for the default choices: below 2 or above 8 average bits per weight).
    """
    sizes = _check_layer_sizes(layer_sizes)
    choices = _check_bit_choices(bit_choices)
    if not isinstance(budget, Budget):
        budget = Budget(budget)
    if budget.unit not in ("avg_bits", "bytes"):
        raise ValueError(f"budget unit must be 'avg_bits' or 'bytes', got {budget.unit!r}")
    value = float(budget.value)
    if not math.isfinite(value):
        raise ValueError(f"budget must be a finite number, got {budget.value!r}")
    total_weights = sum(sizes.values())
    total_bits = value * total_weights if budget.unit == "avg_bits" else value * 8.0
    average = total_bits / total_weights
    if average < choices[0] - 1e-9:
        raise ValueError(
            f"budget {value:g} {budget.unit} is {average:.4g} bits per weight, below the "
            f"{choices[0]}-bit minimum width"
        )
    if average > choices[-1] + 1e-9:
        raise ValueError(
            f"budget {value:g} {budget.unit} is {average:.4g} bits per weight, above the "
            f"{choices[-1]}-bit maximum width"
        )
    return math.floor(total_bits + 1e-6)


def allocation_bits(bits_per_layer: Mapping[str, int], layer_sizes: Mapping[str, int]) -> int:
    """Total kernel bits of an allocation: ``sum_l n_l * b_l``."""
    return sum(int(layer_sizes[name]) * int(b) for name, b in bits_per_layer.items())


def uniform_allocation(
    layer_sizes: Mapping[str, int], total_bits: int, bit_choices: Sequence[int]
) -> dict[str, int]:
    """Every layer at the widest single width ``b`` with ``b * sum_l n_l <= total_bits``."""
    n = sum(layer_sizes.values())
    fitting = [b for b in bit_choices if b * n <= total_bits]
    if not fitting:
        raise ValueError(f"no uniform width fits {total_bits} bits for {n} weights")
    return dict.fromkeys(layer_sizes, max(fitting))


def rank_allocation(
    layer_sizes: Mapping[str, int],
    importance: Mapping[str, float],
    total_bits: int,
    bit_choices: Sequence[int],
) -> dict[str, int]:
    """Lexicographic by importance: each layer in turn (most important first) takes the widest
    width that still leaves every later layer its narrowest width within ``total_bits``."""
    missing = sorted(set(layer_sizes) - set(importance))
    if missing:
        raise ValueError(f"importance is missing layers {missing}")
    order = sorted(layer_sizes, key=lambda name: -float(importance[name]))
    narrowest = bit_choices[0]
    reserved = narrowest * sum(layer_sizes.values())
    if reserved > total_bits:
        raise ValueError(
            f"the budget of {total_bits} bits is below every layer at {narrowest} bits"
        )
    remaining = total_bits
    bits = {}
    for name in order:
        reserved -= narrowest * layer_sizes[name]
        bits[name] = max(b for b in bit_choices if layer_sizes[name] * b + reserved <= remaining)
        remaining -= layer_sizes[name] * bits[name]
    return {name: bits[name] for name in layer_sizes}


def solve_multiple_choice_knapsack(
    costs: np.ndarray, values: np.ndarray, capacity: int, *, max_units: int = 2**22
) -> np.ndarray:
    """Pick one option per row minimising the summed ``values`` with summed ``costs <= capacity``.

    ``costs`` (non-negative integers) and ``values`` are ``[rows, options]``. Exact dynamic
    programming: ``best_r[c] = min_k best_{r-1}[c - costs[r, k]] + values[r, k]`` with
    ``best_0 = 0`` ("total cost at most c"), then backtracking from ``c = capacity``. Costs are
    first divided by their greatest common divisor. O(rows * options * capacity) time,
    ``rows * capacity`` bytes. If the capacity still exceeds ``max_units`` units, costs are
    coarsened to units of ``ceil(capacity / max_units)`` rounding each cost up: the answer still
    fits the capacity and is optimal for the rounded costs. Returns the chosen option index per
    row; raises if nothing fits.
    """
    costs = np.asarray(costs)
    values = np.asarray(values, dtype=np.float64)
    if costs.ndim != 2 or costs.shape != values.shape:
        raise ValueError(
            f"costs and values must be equal 2-D shapes, got {costs.shape}, {values.shape}"
        )
    if not np.issubdtype(costs.dtype, np.integer) or np.any(costs < 0):
        raise ValueError("costs must be non-negative integers")
    if not np.all(np.isfinite(values)):
        raise ValueError("values must be finite")
    if capacity < 0:
        raise ValueError(f"capacity must be non-negative, got {capacity}")
    rows, options = costs.shape
    if options > 127:
        raise ValueError(f"at most 127 options per row are supported, got {options}")
    cheapest = int(costs.min(axis=1).sum())
    if cheapest > capacity:
        raise ValueError(
            f"infeasible: the cheapest choice costs {cheapest}, more than the capacity {capacity}"
        )
    unit = math.gcd(*(int(c) for c in costs.ravel())) or 1
    if capacity // unit > max_units:
        unit = -(-capacity // max_units)
    costs = -(-costs // unit)
    capacity = capacity // unit
    if int(costs.min(axis=1).sum()) > capacity:
        raise ValueError(
            f"infeasible after rounding costs to units of {unit}; raise max_units (now {max_units})"
        )
    best = np.zeros(capacity + 1)
    choice = np.zeros((rows, capacity + 1), dtype=np.int8)
    for r in range(rows):
        # Running minimum over the options (memory O(capacity), not O(options * capacity));
        # a strict '<' keeps the first minimising option, as an argmin over them would.
        row_best = np.full(capacity + 1, np.inf)
        for k in range(options):
            cost = int(costs[r, k])
            if cost <= capacity:
                candidate = best[: capacity + 1 - cost] + values[r, k]
                better = np.flatnonzero(candidate < row_best[cost:]) + cost
                row_best[better] = candidate[better - cost]
                choice[r, better] = k
        best = row_best
    picked = np.empty(rows, dtype=np.int64)
    c = capacity
    for r in reversed(range(rows)):
        picked[r] = choice[r, c]
        c -= int(costs[r, picked[r]])
    return picked


def optimal_allocation(
    layer_sizes: Mapping[str, int],
    sensitivity: SensitivityTable,
    total_bits: int,
    bit_choices: Sequence[int],
) -> dict[str, int]:
    """The allocation minimising ``sum_l sensitivity[l][b_l]`` within ``total_bits`` (exact)."""
    names = list(layer_sizes)
    for name in names:
        if name not in sensitivity:
            raise ValueError(f"sensitivity is missing layer {name!r}")
        absent = [b for b in bit_choices if b not in sensitivity[name]]
        if absent:
            raise ValueError(f"sensitivity[{name!r}] is missing bit widths {absent}")
    costs = np.array([[layer_sizes[n] * b for b in bit_choices] for n in names], dtype=np.int64)
    values = np.array([[float(sensitivity[n][b]) for b in bit_choices] for n in names])
    picked = solve_multiple_choice_knapsack(costs, values, total_bits)
    return {name: bit_choices[k] for name, k in zip(names, picked, strict=True)}


@dataclasses.dataclass(frozen=True)
class Strategy:
    """A bit-allocation strategy: ``allocate(layer_sizes, total_bits, bit_choices, table)`` returns
    bits per layer within ``total_bits``; ``table`` is the per-layer table the strategy declares
    in ``needs`` (``"layer_importance"``: layer -> importance; a sensitivity table: layer -> bits
    -> expected loss), or None when ``needs`` is None."""

    name: str
    allocate: Callable[[dict[str, int], int, tuple[int, ...], Any], dict[str, int]]
    needs: str | None = None


_REGISTRY: dict[str, Strategy] = {}


def register_strategy(strategy: Strategy) -> Strategy:
    """Make ``strategy`` available by name to :func:`allocate_bits` and the experiments."""
    if strategy.name in _REGISTRY and _REGISTRY[strategy.name] != strategy:
        raise ValueError(f"an allocation strategy named {strategy.name!r} is already registered")
    _REGISTRY[strategy.name] = strategy
    return strategy


def get_strategy(name: str) -> Strategy:
    """The registered strategy ``name``; ``ValueError`` naming the registered ones otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown allocation strategy {name!r}; choose one of {tuple(_REGISTRY)}")
    return _REGISTRY[name]


def _uniform(sizes: dict[str, int], total: int, choices: tuple[int, ...], _: Any) -> dict:
    return uniform_allocation(sizes, total, choices)


def _by_rank(sizes: dict[str, int], total: int, choices: tuple[int, ...], table: Any) -> dict:
    return rank_allocation(sizes, table, total, choices)


def _optimal(sizes: dict[str, int], total: int, choices: tuple[int, ...], table: Any) -> dict:
    return optimal_allocation(sizes, table, total, choices)


register_strategy(Strategy("uniform", _uniform))
register_strategy(Strategy("deeplift_rank", _by_rank, "layer_importance"))
register_strategy(Strategy("deeplift_sensitivity", _optimal, "deeplift_sensitivity"))
register_strategy(Strategy("hessian", _optimal, "hessian_sensitivity"))

#: The built-in strategies (others may be registered).
STRATEGIES: tuple[str, ...] = tuple(_REGISTRY)


def allocate_bits(
    strategy: str,
    layer_sizes: Mapping[str, int],
    budget: float | Budget,
    *,
    table: Any = None,
    sensitivity: SensitivityTable | None = None,
    importance: Mapping[str, float] | None = None,
    bit_choices: Sequence[int] = SUPPORTED_BITS,
) -> dict[str, int]:
    """Bits per layer for ``strategy`` within ``budget`` (average bits per weight or a ``Budget``).

    ``layer_sizes`` maps layer name -> number of kernel weights. The strategy's declared table
    (:class:`Strategy`) is ``table``; ``importance`` (layer -> DeepLIFT importance per weight) and
    ``sensitivity`` (layer -> bits -> expected loss of quantizing that layer at that width) name
    it for the built-in strategies. The result never exceeds the budget.
    """
    chosen = get_strategy(strategy)
    sizes = _check_layer_sizes(layer_sizes)
    choices = _check_bit_choices(bit_choices)
    total_bits = budget_in_bits(budget, sizes, choices)
    if table is None:
        table = importance if chosen.needs == "layer_importance" else sensitivity
    if chosen.needs is not None and table is None:
        keyword = "importance" if chosen.needs == "layer_importance" else "sensitivity"
        raise ValueError(f"strategy {strategy!r} needs {keyword}= (its {chosen.needs} table)")
    return chosen.allocate(sizes, total_bits, choices, table)
