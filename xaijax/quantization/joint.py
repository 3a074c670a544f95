"""Joint pruning and bit allocation under one byte budget, solved exactly.

Every layer ``l`` picks one :class:`Choice` ``(p_l, b_l)``: a pruning level ``p_l`` from a grid
of fractions and a kernel width ``b_l`` from ``SUPPORTED_BITS``. Conv layers are pruned
structurally (``p`` of their filters), Dense layers unstructured (``p`` of their kernel entries);
the classifier (unless asked) and conv layers tied by residual additions are not pruned (level 0
only). Removed counts follow ``xaijax.pruning`` exactly (``floor(p * n)``, at least one unit or
weight kept), so :func:`choice_masks` realises the costed choice.

Storage (bits; the float32 model stores 32 per parameter). With ``n_l`` kernel entries, ``u_l``
output units, ``f_l`` float32 parameters per unit besides the kernel (bias, BatchNorm scale and
offset) and ``k_l`` kept units:

* kernel values: ``b_l`` per kept entry (packed integers, as ``model_size_bytes``);
* index: a structurally pruned layer is stored physically narrower (``xaijax.pruning.shrink``),
  so it needs none; an unstructured layer whose own mask drops an entry stores a 1-bit presence
  mask per stored entry (as ``xaijax.pruning.storage_bits``);
* ``32 * k_l * (1 + f_l)``: a float32 scale per kept output channel, and its bias and BatchNorm;
* every other parameter at 32 bits (``fixed_bits``).

The solver's per-layer cost :func:`choice_cost_bits` counts the kernel at full fan-in. Filters
pruned in the producer also remove input channels of its consumers (their kernel entries and
presence bits), which only lowers the stored size, so the measured :func:`size_bits` is at most
``fixed_bits + sum_l cost_l(p_l, b_l)``. The two are equal when no pruned layer feeds another.
When one does, the bound can be far above the measured size (the small VGG: 90% of conv4's
filters pruned leave fc1 a tenth of its inputs, but its cost counts them all; 5.7 kB measured
against a 32.3 kB bound), so :func:`fit_to_budget` raises the solver's capacity by bisection
until the *measured* size meets the budget, and :func:`improve_within_budget` then spends what a
jump in the measured size left on single-layer changes: allocations compared at one budget are
then of about equal measured bytes (not exactly: the measured size is not additive, and these
two steps are not exact).

:func:`solve_joint` minimises ``sum_l D_l(p_l, b_l)`` subject to ``sum_l cost_l <= capacity``
with the exact multiple-choice knapsack of ``xaijax.quantization.allocation`` (damage
tables: ``xaijax.quantization.joint_damage``); :func:`uniform_joint` is the baseline of one level
and one width for every layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import jax
import numpy as np

from xaijax import pruning
from xaijax.models import LayerSpec
from xaijax.models.costs import flat_by_path, module_leaves
from xaijax.quantization.allocation import solve_multiple_choice_knapsack
from xaijax.quantization.numerics import SUPPORTED_BITS, check_bits

Granularity = Literal["unit", "weight"]
DEFAULT_LEVELS = (0.0, 0.25, 0.5, 0.75, 0.9)
FLOAT_BITS = 32


class InfeasibleBudgetError(ValueError):
    """Even the cheapest choice of every layer does not fit the byte budget."""


class Choice(NamedTuple):
    """One layer's choice: the pruned fraction ``level`` and the kernel width ``bits``."""

    level: float
    bits: int


class LayerGeometry(NamedTuple):
    """What the cost of a layer's choice depends on.

    ``granularity``: ``"unit"`` (filters pruned structurally), ``"weight"`` (kernel entries
    pruned) or None (not pruned); ``units``: output channels; ``weights``: kernel entries;
    ``floats_per_unit``: float32 parameters per output unit besides the kernel.
    """

    name: str
    kind: str
    granularity: Granularity | None
    units: int
    weights: int
    floats_per_unit: int


JointTable = dict[str, dict[Choice, float]]


def _unit_leaves(flat: Mapping[str, Any], spec: LayerSpec) -> list[np.ndarray]:
    """The layer's non-kernel parameters and its BatchNorm's parameters (``flat``: the params
    flattened by module path, ``flat_by_path``)."""
    leaves = [np.asarray(flat[k]) for k in module_leaves(flat, spec.name) if _leaf(k) != "kernel"]
    if spec.bn is not None:
        leaves += [np.asarray(flat[k]) for k in module_leaves(flat, spec.bn)]
    return leaves


def _leaf(key: str) -> str:
    """The leaf name of a ``flat_by_path`` key (``"Block_0/Conv_1/kernel"`` -> ``"kernel"``)."""
    return key.rsplit("/", 1)[-1]


def _module(key: str) -> str:
    """The module path of a ``flat_by_path`` key (``"Block_0/Conv_1"``)."""
    return key.rsplit("/", 1)[0]


def layer_geometry(
    specs: Sequence[LayerSpec],
    params: Mapping[str, Any],
    *,
    exclude: Sequence[str] | None = None,
) -> dict[str, LayerGeometry]:
    """Geometry of every layer of ``specs``; ``exclude`` (default: the classifier) is not pruned.

    Conv layers are pruned by filters unless tied (residual groups keep one mask, so they are
    left whole); Dense layers by single weights.
    """
    names = [spec.name for spec in specs]
    exclude = pruning.default_exclude(specs) if exclude is None else tuple(exclude)
    unknown = sorted(set(exclude) - set(names))
    if unknown:
        raise ValueError(f"exclude names unknown layers {unknown}; known layers: {names}")
    geometry = {}
    flat = flat_by_path(params)
    for spec in specs:
        if f"{spec.name}/kernel" not in flat:
            raise ValueError(f"params has no kernel for layer {spec.name!r}")
        shape = np.shape(flat[f"{spec.name}/kernel"])
        units = int(shape[-1])
        extra = _unit_leaves(flat, spec)
        if any(leaf.shape != (units,) for leaf in extra):
            raise ValueError(
                f"layer {spec.name!r}: bias / BatchNorm parameters must have shape ({units},), "
                f"got {[leaf.shape for leaf in extra]}"
            )
        granularity: Granularity | None = None
        if spec.name not in exclude:
            if spec.kind == "dense":
                granularity = "weight"
            elif spec.tied_group is None:
                granularity = "unit"
        geometry[spec.name] = LayerGeometry(
            spec.name, spec.kind, granularity, units, int(np.prod(shape)), len(extra)
        )
    return geometry


def check_levels(levels: Sequence[float], what: str = "levels") -> tuple[float, ...]:
    """``levels`` sorted, distinct, in ``[0, 1)`` and containing 0 (every layer may stay whole)."""
    if not levels:
        raise ValueError(f"{what} is empty")
    checked = []
    for level in levels:
        if isinstance(level, bool) or not isinstance(level, int | float | np.number):
            raise ValueError(f"{what} must hold numbers in [0, 1), got {level!r}")
        if not 0.0 <= float(level) < 1.0:
            raise ValueError(f"{what} must hold numbers in [0, 1), got {level!r}")
        checked.append(float(level))
    if 0.0 not in checked:
        raise ValueError(f"{what} must contain 0.0 (a layer left whole), got {tuple(levels)}")
    return tuple(sorted(set(checked)))


def removed_count(geometry: LayerGeometry, level: float) -> int:
    """Units (structured) or weights (unstructured) removed at ``level``, as ``xaijax.pruning``
    counts them: ``floor(level * n)``, never all."""
    if geometry.granularity is None:
        if level != 0.0:
            raise ValueError(f"layer {geometry.name!r} is not pruned; its level must be 0")
        return 0
    size = geometry.units if geometry.granularity == "unit" else geometry.weights
    return min(pruning.prune_count(level, size), size - 1)


def choice_cost_bits(geometry: LayerGeometry, choice: Choice) -> int:
    """Upper bound of the layer's stored bits at ``choice`` (module docstring): kept kernel
    entries at full fan-in times ``bits``, presence bits when unstructured pruning drops an entry,
    and ``32 * (1 + f)`` per kept unit."""
    bits = check_bits(choice.bits, f"layer {geometry.name!r}")
    removed = removed_count(geometry, choice.level)
    kept_units, kept_weights, index = geometry.units, geometry.weights, 0
    if geometry.granularity == "unit":
        kept_units -= removed
        kept_weights = kept_units * (geometry.weights // geometry.units)
    elif geometry.granularity == "weight":
        kept_weights -= removed
        index = geometry.weights if removed else 0
    return bits * kept_weights + index + FLOAT_BITS * kept_units * (1 + geometry.floats_per_unit)


def fixed_bits(specs: Sequence[LayerSpec], params: Mapping[str, Any]) -> int:
    """Bits of the parameters outside every layer and its BatchNorm (stored as float32)."""
    owned = {spec.name for spec in specs} | {spec.bn for spec in specs if spec.bn is not None}
    return FLOAT_BITS * sum(
        int(np.size(leaf))
        for key, leaf in flat_by_path(params).items()
        if _module(key) not in owned
    )


def float_model_bytes(params: Any) -> int:
    """Bytes of the float32 model: 4 per parameter."""
    return 4 * sum(int(np.size(leaf)) for leaf in jax.tree.leaves(params))


def layer_choices(
    geometry: LayerGeometry, levels: Sequence[float], bit_choices: Sequence[int] = SUPPORTED_BITS
) -> list[Choice]:
    """Every ``(level, bits)`` the layer may take (level 0 only when it is not pruned)."""
    widths = sorted({check_bits(b, "bit_choices") for b in bit_choices})
    grid = check_levels(levels) if geometry.granularity is not None else (0.0,)
    return [Choice(level, bits) for level in grid for bits in widths]


def cost_table(
    geometry: Mapping[str, LayerGeometry],
    levels: Sequence[float],
    bit_choices: Sequence[int] = SUPPORTED_BITS,
) -> dict[str, dict[Choice, int]]:
    """``{layer: {choice: bits}}`` over every layer's choices (:func:`choice_cost_bits`)."""
    return {
        name: {c: choice_cost_bits(g, c) for c in layer_choices(g, levels, bit_choices)}
        for name, g in geometry.items()
    }


def capacity_bits(budget_bytes: float, fixed: int) -> int:
    """Bits left to the layers by ``budget_bytes`` once the fixed parameters are stored."""
    if not math.isfinite(budget_bytes) or budget_bytes <= 0:
        raise ValueError(f"the byte budget must be a positive number, got {budget_bytes!r}")
    capacity = math.floor(8 * budget_bytes + 1e-6) - fixed
    if capacity < 0:
        raise InfeasibleBudgetError(
            f"a budget of {budget_bytes:g} bytes is below the {fixed / 8:g} bytes of the "
            "parameters outside the layers"
        )
    return capacity


def _check_feasible(costs: Mapping[str, Mapping[Choice, int]], capacity: int) -> None:
    cheapest = sum(min(row.values()) for row in costs.values())
    if cheapest > capacity:
        raise InfeasibleBudgetError(
            f"the cheapest choice of every layer needs {cheapest} bits ({cheapest / 8:g} bytes), "
            f"more than the {capacity} bits ({capacity / 8:g} bytes) the budget leaves the layers"
        )


def solve_joint(
    costs: Mapping[str, Mapping[Choice, int]], damage: JointTable, capacity: int
) -> dict[str, Choice]:
    """``argmin sum_l damage[l][c_l]`` s.t. ``sum_l costs[l][c_l] <= capacity`` (exact).

    One row of the multiple-choice knapsack per layer, one option per choice (rows with fewer
    choices repeat their last one). Raises :class:`InfeasibleBudgetError` when nothing fits.
    """
    if not costs:
        raise ValueError("costs is empty: there is no layer to allocate")
    for name, row in costs.items():
        if not row:
            raise ValueError(f"costs[{name!r}] has no choice")
        missing = [c for c in row if c not in damage.get(name, {})]
        if missing:
            raise ValueError(f"damage[{name!r}] misses choices {missing}")
    _check_feasible(costs, capacity)
    names = list(costs)
    width = max(len(row) for row in costs.values())
    options = {name: list(costs[name]) for name in names}
    padded = {name: opts + [opts[-1]] * (width - len(opts)) for name, opts in options.items()}
    cost = np.array([[costs[n][c] for c in padded[n]] for n in names], dtype=np.int64)
    value = np.array([[float(damage[n][c]) for c in padded[n]] for n in names])
    picked = solve_multiple_choice_knapsack(cost, value, capacity)
    return {name: padded[name][k] for name, k in zip(names, picked, strict=True)}


def uniform_joint(
    geometry: Mapping[str, LayerGeometry],
    costs: Mapping[str, Mapping[Choice, int]],
    capacity: int,
    levels: Sequence[float],
    bit_choices: Sequence[int] = SUPPORTED_BITS,
) -> dict[str, Choice]:
    """One level (for every pruned layer) and one width (for every layer): of the pairs that fit,
    the one storing the most bits; ties go to the lower level, then the wider width."""
    _check_feasible(costs, capacity)
    fitting = []
    for level in check_levels(levels):
        for bits in sorted({check_bits(b, "bit_choices") for b in bit_choices}):
            allocation = {
                n: Choice(level if g.granularity else 0.0, bits) for n, g in geometry.items()
            }
            total = allocation_cost_bits(costs, allocation)
            if total <= capacity:
                fitting.append(((total, -level, bits), allocation))
    if not fitting:
        raise InfeasibleBudgetError(
            f"no single (level, bits) pair for every layer fits {capacity} bits"
        )
    return max(fitting, key=lambda item: item[0])[1]


def fit_to_budget(
    solve: Callable[[int], dict[str, Choice]],
    measure: Callable[[dict[str, Choice]], int],
    costs: Mapping[str, Mapping[Choice, int]],
    capacity: int,
    budget_bits: int,
    *,
    tolerance: float = 1e-3,
) -> tuple[dict[str, Choice], int]:
    """``(solve(C), C)`` for the largest capacity ``C`` found, by bisection on
    ``[capacity, sum_l max cost_l]``, whose allocation's measured size ``measure(solve(C))``
    (bits, the whole model) is within ``budget_bits``.

    ``solve(capacity)`` must fit: its bound, and so its measured size, is within the budget
    (``capacity = capacity_bits(budget, fixed)``). The bisection stops when the bracket is below
    ``tolerance * budget_bits`` bits (at least one). An exact solver's damage does not grow with
    ``C``, so the largest fitting capacity probed is the least damaging fitting allocation
    probed; the measured size need not grow with ``C``, so a larger fitting one may exist
    between the probes.
    """
    low, best = capacity, solve(capacity)
    if measure(best) > budget_bits:
        raise ValueError(
            f"the allocation at capacity {capacity} measures {measure(best)} bits, more than the "
            f"budget's {budget_bits}: the capacity must leave the fixed parameters their bits"
        )
    high = sum(max(row.values()) for row in costs.values())
    if high <= low:
        return best, low
    top = solve(high)
    if measure(top) <= budget_bits:
        return top, high
    step = max(1, int(tolerance * budget_bits))
    while high - low > step:
        middle = (low + high) // 2
        allocation = solve(middle)
        if measure(allocation) <= budget_bits:
            low, best = middle, allocation
        else:
            high = middle
    return best, low


def improve_within_budget(
    allocation: Mapping[str, Choice],
    costs: Mapping[str, Mapping[Choice, int]],
    damage: JointTable,
    measure: Callable[[dict[str, Choice]], int],
    budget_bits: int,
) -> dict[str, Choice]:
    """``allocation`` improved by single-layer changes, greedily: each step takes, of the choices
    of one layer that lower the summed damage and keep the measured size within
    ``budget_bits``, the one lowering it most; stops when none is left. Fills what
    :func:`fit_to_budget` leaves where the measured size jumps between two capacities (a
    producer pruned less widens its consumer at once). The damage never grows."""
    current = dict(allocation)
    if measure(current) > budget_bits:
        raise ValueError(f"the allocation measures more than the budget's {budget_bits} bits")
    while True:
        best_gain, best = 0.0, None
        for name, row in costs.items():
            here = damage[name][current[name]]
            for choice in row:
                gain = here - damage[name][choice]
                if gain <= best_gain:
                    continue
                candidate = {**current, name: choice}
                if measure(candidate) <= budget_bits:
                    best_gain, best = gain, candidate
        if best is None:
            return current
        current = best


def allocation_cost_bits(
    costs: Mapping[str, Mapping[Choice, int]], allocation: Mapping[str, Choice]
) -> int:
    """``sum_l costs[l][allocation[l]]``: the solver's bound for the layers."""
    return sum(int(costs[name][choice]) for name, choice in allocation.items())


def choice_masks(
    specs: Sequence[LayerSpec],
    geometry: Mapping[str, LayerGeometry],
    allocation: Mapping[str, Choice],
    unit_scores: Mapping[str, Any] | None,
    weight_scores: Mapping[str, Mapping[str, Any]] | None,
) -> tuple[dict[str, np.ndarray] | None, dict[str, dict[str, np.ndarray]] | None]:
    """Unit and weight keep-masks that realise ``allocation``: per layer, the lowest-scored
    filters (structured layers, ``unit_scores``) or weights (``weight_scores``) at its level,
    ties by index (``xaijax.pruning`` layer scope). None where no layer of that kind is pruned."""
    missing = sorted(set(geometry) - set(allocation))
    if missing:
        raise ValueError(f"allocation misses layers {missing}")
    structured = {n: c.level for n, c in allocation.items() if geometry[n].granularity == "unit"}
    unstructured = {
        n: c.level for n, c in allocation.items() if geometry[n].granularity == "weight"
    }
    units = weights = None
    if any(structured.values()):
        if unit_scores is None:
            raise ValueError("pruning filters needs unit_scores")
        scores = {
            n: np.asarray(unit_scores[n]) if n in structured else np.ones(g.units)
            for n, g in geometry.items()
        }
        units = pruning.unit_masks(
            scores,
            structured,
            specs=specs,
            exclude=tuple(n for n in geometry if n not in structured),
        )
    if any(unstructured.values()):
        if weight_scores is None:
            raise ValueError("pruning weights needs weight_scores")
        weights = pruning.weight_masks(
            {n: {"kernel": np.asarray(weight_scores[n]["kernel"])} for n in unstructured},
            unstructured,
        )
    return units, weights


def size_bits(
    specs: Sequence[LayerSpec],
    params: Mapping[str, Any],
    bits_per_layer: Mapping[str, int],
    unit_masks: Mapping[str, Any] | None = None,
    weight_masks: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, int]:
    """Measured storage of the masked, quantized model (module docstring), in bits per part.

    Stored kernel entries are those no unit mask removes (of the layer or of its producers); kept
    entries are those no mask removes. ``bits_per_layer`` covers the quantized layers; any other
    kernel counts at 32 bits without scales.
    """
    structural = flat_by_path(pruning.params_mask(specs, params, unit_masks))
    full = flat_by_path(pruning.params_mask(specs, params, unit_masks, weight_masks=weight_masks))
    layers = {spec.name for spec in specs}
    parts = {"kernels": 0, "index": 0, "scales": 0, "floats": 0}
    for key, leaf in structural.items():
        name = _module(key)
        stored = int(np.count_nonzero(np.asarray(leaf)))
        if not (_leaf(key) == "kernel" and name in layers):
            parts["floats"] += FLOAT_BITS * stored
            continue
        kept = int(np.count_nonzero(np.asarray(full[key])))
        if name not in bits_per_layer:
            parts["kernels"] += FLOAT_BITS * kept
            continue
        parts["kernels"] += check_bits(bits_per_layer[name], f"layer {name!r}") * kept
        parts["index"] += stored if kept < stored else 0
        unit_mask = (unit_masks or {}).get(name, np.ones(np.shape(leaf)[-1], bool))
        parts["scales"] += FLOAT_BITS * int(np.count_nonzero(np.asarray(unit_mask)))
    return {**parts, "total": sum(parts.values())}
