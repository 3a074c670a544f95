"""Damage tables ``D_l(p, b)`` of the joint pruning and bit allocation (``joint``).

Each table holds, for every layer and choice ``(p, b)``, a removal term ``R_l(p)`` for the filters
or weights pruned at level ``p`` plus a quantization term ``Q_l(p, b)`` for the weights kept,
quantized at ``b`` bits (errors ``delta`` of the *masked* kernel, so pruning and quantization
interact through the per-channel scales), minus ``Q_l(0, b_max)``: damage is counted from the
layer kept whole at the widest width, a constant per layer that moves no solution of the knapsack.

DeepLIFT (:func:`deeplift_damage`): both terms bound the expected change of the target logit
that DeepLIFT's multipliers predict to first order, in one unit. With ``C_n(w_i) = w_i m_n,i`` the
contribution of weight ``i`` (summed over positions for a conv) and ``S_i = E_n |C_n(w_i)|`` its
weight score, a change ``dw`` of the kernel moves the target by ``sum_i m_i dw_i`` to first order,
and ``E|sum_i m_i dw_i| <= sum_i S_i |dw_i| / |w_i|`` (triangle inequality).

* Removal sets ``dw_i = -w_i`` on the removed weights ``P``: ``R_l(p) = sum_{i in P} S_i``. As
  the layer's normalised removed mass ``phi_l(p) = R_l(p) / T_l`` (in [0, 1], comparable across
  layers) times the scale ``T_l = sum_i S_i`` (the bound for removing the whole layer) it is the
  same quantity. A filter's mass is the sum over its kernel slice (:func:`filter_scores`); masks
  drop the lowest masses, so each level's mask is the one minimising ``R_l``. (The filter-output
  score ``E|sum C|`` is tighter for removal but has no counterpart for independent rounding
  errors; mixing the two would put the terms on different footings.)
* Quantization sets ``dw_i = -delta_i`` on the kept weights: ``Q_l(p, b) = sum_{i kept} S_i
  |delta_i| / |w_i|``, the ``deeplift_sensitivity`` of the masked kernel.

Hessian (:func:`hessian_damage`, the baseline): second-order loss change at a minimum,
``1/2 sum_i h_ii e_i^2`` for weight errors ``e``, with ``h_ii`` approximated per layer by
``hbar_l = max(Tr(H_l), 0) / n_l`` (the Hutchinson trace of ``hutchinson_traces``; per-weight
Hutchinson diagonals from a few probes are dominated by off-diagonal noise). Removal sets
``e_i = w_i``: ``R_l(p) = 1/2 hbar_l sum_P w_i^2``; quantization is ``1/2`` the HAWQ-v2
``hessian_sensitivity`` of the masked kernel, ``1/2 hbar_l ||delta||^2``, so both terms are the
same expansion. Its masks drop the lowest saliency ``1/2 hbar_l w_i^2`` (per filter: summed).

Why the layers add: every term is a first-order (DeepLIFT) or diagonal second-order (Hessian)
estimate of one layer's perturbation; cross-layer terms are products of two layers'
perturbations, of higher order when each is small. Summing absolute first-order contributions is
an upper bound of the combined first-order change (triangle inequality).

Since ``|delta_i| <= |w_i|`` for every weight (``sensitivity``), dropping a weight raises ``R`` by
at least what it takes from ``Q`` (``S_i`` against ``S_i |delta_i| / |w_i|``, and ``w_i^2``
against ``delta_i^2``); for structured levels (per-channel scales of the kept filters unchanged)
both tables are therefore non-decreasing in ``p``. Unstructured pruning that drops a channel's
largest weight (but not the whole channel) shrinks its scale, which can lower ``Q`` by more.
Monotonicity in ``b`` is typical, not guaranteed: the grids of two widths are not nested.

Mask scores: :func:`filter_scores` of DeepLIFT weight scores (``joint_deeplift``), the Hessian
saliencies (:func:`hessian_scores`) and magnitudes (:func:`magnitude_scores`: L1 per filter,
``|w|`` per weight; the uniform baseline).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from xaijax.quantization.joint import (
    Choice,
    JointTable,
    LayerGeometry,
    layer_choices,
    removed_count,
)
from xaijax.quantization.numerics import SUPPORTED_BITS
from xaijax.quantization.sensitivity import (
    deeplift_sensitivity,
    hessian_sensitivity,
    layer_kernel,
)


def removal_order(scores: Any) -> np.ndarray:
    """Indices lowest score first, ties by index: the order ``xaijax.pruning`` removes them in."""
    flat = np.asarray(scores, np.float64).ravel()
    return np.lexsort((np.arange(flat.size), flat))


def kept_kernel(kernel: Any, geometry: LayerGeometry, removed: np.ndarray) -> np.ndarray:
    """``kernel`` with the removed filters (structured) or entries (unstructured) zeroed."""
    kept = np.array(kernel, np.float32)
    if geometry.granularity == "unit":
        kept[..., removed] = 0.0
    elif geometry.granularity == "weight":
        kept.reshape(-1)[removed] = 0.0
    return kept


def _table(
    params: Mapping[str, Any],
    geometry: Mapping[str, LayerGeometry],
    removal_scores: Mapping[str, Any],
    quantization: Any,
    levels: Sequence[float],
    bit_choices: Sequence[int],
) -> JointTable:
    """``R_l(p) + Q_l(p, b) - Q_l(0, b_max)``; ``removal_scores[l]`` ranks and weighs what level
    ``p`` removes; ``quantization(name, kept_kernel, bits) -> {b: Q}``."""
    table: JointTable = {}
    for name, g in geometry.items():
        choices = layer_choices(g, levels, bit_choices)
        kernel = np.asarray(layer_kernel(params, name))
        scores = None if g.granularity is None else np.asarray(removal_scores[name], np.float64)
        order = None if scores is None else removal_order(scores)
        widths = sorted({c.bits for c in choices})
        row: dict[Choice, float] = {}
        for level in sorted({c.level for c in choices}):
            removed = np.empty(0, np.int64) if order is None else order[: removed_count(g, level)]
            mass = 0.0 if scores is None else float(scores.ravel()[removed].sum())
            quantized = quantization(name, kept_kernel(kernel, g, removed), widths)
            for bits in widths:
                row[Choice(level, bits)] = mass + quantized[bits]
        reference = row[Choice(0.0, widths[-1])]
        table[name] = {c: row[c] - reference for c in choices}
    return table


def filter_scores(weight_scores: Mapping[str, Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Per output unit, the sum of its kernel slice's weight scores (all axes but the last)."""
    return {
        name: np.asarray(tree["kernel"], np.float64)
        .reshape(-1, np.shape(tree["kernel"])[-1])
        .sum(0)
        for name, tree in weight_scores.items()
    }


def magnitude_scores(
    params: Mapping[str, Any], geometry: Mapping[str, LayerGeometry]
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
    """Magnitude masks' scores: L1 norm per filter and ``|w|`` per weight."""
    weights = {
        name: {"kernel": np.abs(np.asarray(layer_kernel(params, name)))} for name in geometry
    }
    return filter_scores(weights), weights


def deeplift_damage(
    params: Mapping[str, Any],
    geometry: Mapping[str, LayerGeometry],
    weight_scores: Mapping[str, Mapping[str, Any]],
    levels: Sequence[float],
    bit_choices: Sequence[int] = SUPPORTED_BITS,
) -> JointTable:
    """DeepLIFT damage (module docstring) from weight scores ``{layer: {"kernel": S}}``."""
    for name in geometry:
        if name not in weight_scores:
            raise ValueError(f"weight_scores miss layer {name!r}")
        shape = np.shape(layer_kernel(params, name))
        if np.shape(weight_scores[name]["kernel"]) != shape:
            raise ValueError(
                f"weight_scores[{name!r}] has shape {np.shape(weight_scores[name]['kernel'])}, "
                f"expected {shape}"
            )
    units = filter_scores({name: weight_scores[name] for name in geometry})
    removal = {
        name: units[name] if g.granularity == "unit" else weight_scores[name]["kernel"]
        for name, g in geometry.items()
        if g.granularity is not None
    }

    def quantization(name: str, kept: np.ndarray, widths: Sequence[int]) -> dict[int, float]:
        table = deeplift_sensitivity({name: {"kernel": kept}}, {name: weight_scores[name]}, widths)
        return table[name]

    return _table(params, geometry, removal, quantization, levels, bit_choices)


def hessian_scores(
    params: Mapping[str, Any],
    geometry: Mapping[str, LayerGeometry],
    traces: Mapping[str, float],
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
    """Saliencies ``1/2 hbar_l w_i^2``: per filter (summed over its kernel slice) and per weight."""
    weights = {}
    for name, g in geometry.items():
        if name not in traces:
            raise ValueError(f"traces miss layer {name!r}")
        kernel = np.asarray(layer_kernel(params, name), np.float64)
        saliency = 0.5 * max(float(traces[name]), 0.0) / g.weights * kernel**2
        weights[name] = {"kernel": saliency}
    return filter_scores(weights), weights


def hessian_damage(
    params: Mapping[str, Any],
    geometry: Mapping[str, LayerGeometry],
    traces: Mapping[str, float],
    levels: Sequence[float],
    bit_choices: Sequence[int] = SUPPORTED_BITS,
) -> JointTable:
    """Hessian damage (module docstring) from per-layer Hessian traces."""
    units, weights = hessian_scores(params, geometry, traces)
    removal = {
        name: units[name] if g.granularity == "unit" else weights[name]["kernel"]
        for name, g in geometry.items()
        if g.granularity is not None
    }

    def quantization(name: str, kept: np.ndarray, widths: Sequence[int]) -> dict[int, float]:
        table = hessian_sensitivity({name: {"kernel": kept}}, {name: traces[name]}, widths)
        return {b: 0.5 * s for b, s in table[name].items()}

    return _table(params, geometry, removal, quantization, levels, bit_choices)
