"""Masks by layer kind and iterative pruning.

:func:`masks_by_kind` gives conv and dense layers their own targets and granularity (units,
weights, or conv units with dense weights); :func:`iterative_prune` grows such masks over the
rounds of a schedule (:mod:`xaijax.pruning.schedule`), fine-tuning and re-scoring after each,
optionally ending at a parameter budget (:mod:`xaijax.pruning.budget`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from xaijax.models import LayerSpec
from xaijax.pruning.accounting import kernel_sparsity, nonzero_count
from xaijax.pruning.apply import Variables, mask_variables, params_mask
from xaijax.pruning.budget import _kept_at, match_sparsity
from xaijax.pruning.masks import UnitMasks, default_exclude, unit_masks, weight_masks
from xaijax.pruning.schedule import schedule_fractions
from xaijax.pruning.selection import Normalization, Scope, _check_choice, _check_sparsity

GRANULARITY_KINDS = {
    # granularity -> (layer kinds pruned by units, layer kinds pruned by weights)
    "unit": (("conv", "dense"), ()),
    "weight": ((), ("conv", "dense")),
    "hybrid": (("conv",), ("dense",)),
}


def masks_by_kind(
    specs: Sequence[LayerSpec],
    *,
    granularity: str,
    conv_sparsity: float,
    dense_sparsity: float,
    unit_scores: Mapping[str, Any] | None = None,
    weight_scores: Mapping[str, Mapping[str, Any]] | None = None,
    scope: Scope = "layer",
    exclude: Sequence[str] | None = None,
    min_units: int = 1,
    normalize: Normalization = "mean",
    pruned_units: Mapping[str, Any] | None = None,
    pruned_weights: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[UnitMasks | None, dict[str, dict[str, np.ndarray]] | None]:
    """Unit and weight keep-masks with separate targets for conv and dense layers.

    ``granularity``: ``"unit"`` (filters and neurons), ``"weight"`` (single weights) or
    ``"hybrid"`` (conv filters by units, dense layers by weights). Each kind of layer is ranked
    on its own (``scope="global"`` ranks all layers of one kind together). ``exclude`` defaults to
    the classifier. Returns ``(unit_masks or None, weight_masks or None)``.
    """
    _check_choice(granularity, tuple(GRANULARITY_KINDS), "granularity")
    by_kind = {
        "conv": _check_sparsity(conv_sparsity, "conv_sparsity"),
        "dense": _check_sparsity(dense_sparsity, "dense_sparsity"),
    }
    exclude = default_exclude(specs) if exclude is None else tuple(exclude)
    unit_kinds, weight_kinds = GRANULARITY_KINDS[granularity]
    names_of = {kind: [s.name for s in specs if s.kind == kind] for kind in by_kind}
    units = weights = None
    if unit_kinds:
        if unit_scores is None:
            raise ValueError(f"granularity {granularity!r} needs unit scores")
        units = {}
        for kind in unit_kinds:
            others = tuple(s.name for s in specs if s.kind != kind)
            masks = unit_masks(
                unit_scores,
                by_kind[kind],
                specs=specs,
                scope=scope,
                min_units=min_units,
                exclude=exclude + others,
                normalize=normalize,
                pruned=pruned_units,
            )
            units.update({name: masks[name] for name in names_of[kind]})
        units = {
            s.name: units.get(s.name, np.ones(np.shape(unit_scores[s.name]), bool)) for s in specs
        }
    if weight_kinds:
        if weight_scores is None:
            raise ValueError(f"granularity {granularity!r} needs weight scores")
        weights = {}
        for kind in weight_kinds:
            others = tuple(s.name for s in specs if s.kind != kind)
            masks = weight_masks(
                weight_scores,
                by_kind[kind],
                scope=scope,
                exclude=exclude + others,
                normalize=normalize,
                pruned=pruned_weights,
            )
            weights.update({name: masks[name] for name in names_of[kind]})
        weights = {
            name: weights.get(
                name, {"kernel": np.ones(np.shape(weight_scores[name]["kernel"]), bool)}
            )
            for name in weight_scores
        }
    return units, weights


@dataclasses.dataclass
class PruneResult:
    """Outcome of :func:`iterative_prune`: the fine-tuned masked variables and the final masks."""

    variables: dict[str, Any]
    unit_masks: UnitMasks | None
    weight_masks: dict[str, dict[str, np.ndarray]] | None
    params_mask: Any
    history: list[dict[str, Any]]


def iterative_prune(
    variables: Variables,
    *,
    specs: Sequence[LayerSpec],
    score_fn: Callable[[Variables, str], Mapping[str, Any]],
    finetune_fn: Callable[[Variables, Any], Variables],
    num_steps: int,
    target_sparsity: float | None = None,
    conv_sparsity: float | None = None,
    dense_sparsity: float | None = None,
    granularity: str = "unit",
    scope: Scope = "layer",
    schedule: str = "linear",
    exclude: Sequence[str] | None = None,
    min_units: int = 1,
    normalize: Normalization = "mean",
    param_budget: int | None = None,
) -> PruneResult:
    """Prune a step, fine-tune, re-score, repeat until the target sparsity.

    Round ``t`` scores the current (masked, fine-tuned) variables with ``score_fn(variables,
    "unit" | "weight")``, grows the masks to ``fraction_t * target`` (:func:`schedule_fractions`;
    anything pruned earlier stays pruned), zeroes the masked variables and calls
    ``finetune_fn(variables, params_mask)``, which must keep masked entries zero (e.g. an
    optimizer chained with :func:`keep_pruned`). Targets: ``conv_sparsity`` and
    ``dense_sparsity`` (each defaults to ``target_sparsity``); ``granularity`` as in
    :func:`masks_by_kind`. ``param_budget`` (equal size across criteria): the last round's dense
    sparsity is chosen (:func:`match_sparsity`) so that the model keeps at most, and as close as
    possible to, ``param_budget`` non-zero parameters, whatever units the criterion removed.
    ``history`` records each round's targets and the resulting fraction of zero kernel entries
    per layer.
    """
    conv_target = target_sparsity if conv_sparsity is None else conv_sparsity
    dense_target = target_sparsity if dense_sparsity is None else dense_sparsity
    if conv_target is None or dense_target is None:
        raise ValueError("give target_sparsity, or both conv_sparsity and dense_sparsity")
    _check_sparsity(conv_target, "conv_sparsity")
    _check_sparsity(dense_target, "dense_sparsity")
    _check_choice(granularity, tuple(GRANULARITY_KINDS), "granularity")
    fractions = schedule_fractions(num_steps, schedule)
    unit_kinds, weight_kinds = GRANULARITY_KINDS[granularity]
    current = dict(variables)
    units = weights = mask = None
    history = []
    for step, fraction in enumerate(fractions, start=1):
        masks_at = functools.partial(
            masks_by_kind,
            specs,
            granularity=granularity,
            conv_sparsity=conv_target * fraction,
            unit_scores=score_fn(current, "unit") if unit_kinds else None,
            weight_scores=score_fn(current, "weight") if weight_kinds else None,
            scope=scope,
            exclude=exclude,
            min_units=min_units,
            normalize=normalize,
            pruned_units=units,
            pruned_weights=weights,
        )
        dense = dense_target * fraction
        if param_budget is not None and step == len(fractions):
            kept_at = functools.partial(_kept_at, specs, current["params"], masks_at)
            dense = match_sparsity(kept_at, param_budget, "param_budget")
        units, weights = masks_at(dense_sparsity=dense)
        mask = params_mask(specs, current["params"], units, weight_masks=weights)
        current = mask_variables(specs, current, units, weight_masks=weights)
        current = dict(finetune_fn(current, mask))
        history.append(
            {
                "step": step,
                "conv_sparsity": conv_target * fraction,
                "dense_sparsity": dense,
                "kept_params": nonzero_count(mask),
                "kernel_sparsity": kernel_sparsity(specs, current["params"]),
            }
        )
    return PruneResult(current, units, weights, mask, history)
