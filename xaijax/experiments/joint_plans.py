"""The plans of the joint stage's strategies: what each strategy scores, the damage table it
solves, and the masks, widths and size of its allocation at one byte budget.

* ``joint_deeplift``: DeepLIFT damage from weight scores (a filter's score: the sum over its
  kernel slice), solved exactly;
* ``joint_hessian``: Hessian-trace damage and saliency masks, solved exactly;
* ``uniform``: one level and one width for every layer (the largest that fits), magnitude masks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import ml_collections
from etils import epath

from xaijax import data, models, pruning
from xaijax.experiments import qat
from xaijax.quantization import joint, joint_damage

STRATEGIES = ("joint_deeplift", "joint_hessian", "uniform")


def scores(
    config: ml_collections.ConfigDict,
    j: ml_collections.ConfigDict,
    model: nn.Module,
    variables: Mapping[str, Any],
    train: data.Dataset,
    names: list[str],
    directory: epath.Path,
) -> dict[str, Any]:
    """What the listed strategies' tables need, and its wall time: DeepLIFT weight scores
    (``joint_deeplift``), Hutchinson traces of the kernels' Hessian blocks (``joint_hessian``);
    kept in ``directory`` for a resumed run (``qat.scores``)."""
    return qat.scores(
        config,
        j,
        model,
        variables,
        train,
        names,
        directory,
        deeplift="joint_deeplift" in j.strategies,
        hessian="joint_hessian" in j.strategies,
    )


def plan(
    strategy: str,
    j: ml_collections.ConfigDict,
    params: Mapping[str, Any],
    geometry: Mapping[str, joint.LayerGeometry],
    inputs: Mapping[str, Any],
) -> tuple[joint.JointTable | None, Any, Any]:
    """``(damage table or None for uniform, unit scores, weight scores)`` of ``strategy``."""
    levels, widths = tuple(j.levels), tuple(j.bit_choices)
    if strategy == "joint_deeplift":
        weights = inputs["deeplift"]
        damage = joint_damage.deeplift_damage(params, geometry, weights, levels, widths)
        return damage, joint_damage.filter_scores(weights), weights
    if strategy == "joint_hessian":
        units, weights = joint_damage.hessian_scores(params, geometry, inputs["traces"])
        damage = joint_damage.hessian_damage(params, geometry, inputs["traces"], levels, widths)
        return damage, units, weights
    return (None, *joint_damage.magnitude_scores(params, geometry))


def allocation_key(strategy: str, allocation: Mapping[str, joint.Choice]) -> str:
    """``<strategy>_<percent pruned>x<bits>_...`` in layer order."""
    parts = (f"{round(100 * c.level)}x{c.bits}" for c in allocation.values())
    return f"{strategy}_" + "_".join(parts)


class Allocation(NamedTuple):
    """One strategy's allocation at one budget: the choice per layer, the widths, the measured
    size (bits), the solver's bound (bits) and the capacity it was solved at (bits, for the
    layers), the predicted damage (None for ``uniform``), the
    parameter mask and the masked variables."""

    choices: dict[str, joint.Choice]
    bits: dict[str, int]
    size: dict[str, Any]
    bound: int
    capacity: int
    predicted_damage: float | None
    mask: Any
    masked: dict[str, Any]


def allocate(
    strategy: str,
    planned: tuple[joint.JointTable | None, Any, Any],
    budget_bytes: float,
    *,
    j: ml_collections.ConfigDict,
    specs: Sequence[models.LayerSpec],
    variables: Mapping[str, Any],
    geometry: Mapping[str, joint.LayerGeometry],
    costs: Any,
    fixed: int,
) -> Allocation:
    """The allocation of ``strategy`` (its :func:`plan` ``planned``) within ``budget_bytes``:
    solved exactly on the damage table, or uniform, at the largest solver capacity whose
    allocation's *measured* size fits the budget (``joint.fit_to_budget``; the solver's additive
    bound over-counts the inputs a producer's pruned filters remove), then, with a damage table,
    improved by single-layer changes that still fit (``joint.improve_within_budget``).
    ``RuntimeError`` unless the measured size is within the budget and the bound."""
    damage, units, weights = planned
    params = variables["params"]
    budget_bits = math.floor(8 * budget_bytes + 1e-6)

    def solve(capacity: int) -> dict[str, joint.Choice]:
        if damage is None:
            return joint.uniform_joint(
                geometry, costs, capacity, tuple(j.levels), tuple(j.bit_choices)
            )
        return joint.solve_joint(costs, damage, capacity)

    def realised(choices: Mapping[str, joint.Choice]) -> tuple[Any, Any, dict[str, int]]:
        unit_masks, weight_masks = joint.choice_masks(specs, geometry, choices, units, weights)
        bits = {name: c.bits for name, c in choices.items()}
        size = joint.size_bits(specs, params, bits, unit_masks, weight_masks)
        return unit_masks, weight_masks, size

    def measure(choices: dict[str, joint.Choice]) -> int:
        return realised(choices)[2]["total"]

    capacity = joint.capacity_bits(budget_bytes, fixed)
    choices, capacity = joint.fit_to_budget(solve, measure, costs, capacity, budget_bits)
    if damage is not None:
        choices = joint.improve_within_budget(choices, costs, damage, measure, budget_bits)
    unit_masks, weight_masks, size = realised(choices)
    bits = {name: c.bits for name, c in choices.items()}
    bound = fixed + joint.allocation_cost_bits(costs, choices)
    if not size["total"] <= min(bound, budget_bits):
        raise RuntimeError(
            f"{strategy} at {budget_bytes:g} bytes: measured {size['total']} bits, bound "
            f"{bound} bits; the measured size must be within the budget and the bound"
        )
    return Allocation(
        choices=dict(choices),
        bits=bits,
        size=size,
        bound=bound,
        capacity=capacity,
        predicted_damage=None if damage is None else sum(damage[n][c] for n, c in choices.items()),
        mask=pruning.params_mask(specs, params, unit_masks, weight_masks=weight_masks),
        masked=pruning.mask_variables(specs, variables, unit_masks, weight_masks=weight_masks),
    )
