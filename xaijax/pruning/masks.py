"""Keep-masks from importance scores: whole units (:func:`unit_masks`) or single kernel entries
(:func:`weight_masks`).

Masks are computed on the host by pure functions, under the counting, normalisation and tie rules
of :mod:`xaijax.pruning.selection`. Tied groups (ResNet residual additions) are one pruning
candidate: the group's score per channel is the sum of its layers' scores, and every layer of the
group gets the same mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from xaijax.models import LayerSpec
from xaijax.pruning.selection import (
    NORMALIZATIONS,
    SCOPES,
    Normalization,
    Scope,
    _as_bool_array,
    _Candidate,
    _check_choice,
    _check_known,
    _layer_sparsities,
    _select,
)

UnitMasks = dict[str, np.ndarray]


def pruning_groups(specs: Sequence[LayerSpec]) -> list[tuple[str, ...]]:
    """Layers pruned together, in forward order: singletons, and one tuple per tied group."""
    groups: dict[str, list[str]] = {}
    for spec in specs:
        groups.setdefault(spec.tied_group or f"layer:{spec.name}", []).append(spec.name)
    return [tuple(layers) for layers in groups.values()]


def default_exclude(specs: Sequence[LayerSpec]) -> tuple[str, ...]:
    """The classifier layers (never pruned structurally by default)."""
    return tuple(spec.name for spec in specs if spec.is_classifier)


def unit_masks(
    scores: Mapping[str, Any],
    sparsity: float | Mapping[str, float],
    *,
    specs: Sequence[LayerSpec],
    scope: Scope = "layer",
    min_units: int = 1,
    exclude: Sequence[str] | None = None,
    normalize: Normalization = "mean",
    pruned: Mapping[str, Any] | None = None,
) -> UnitMasks:
    """Keep-masks ``{layer: bool[units]}`` for every layer of ``specs`` (see module docstring).

    Args:
      scores: ``{layer: [units]}`` non-negative importance for every non-excluded layer (extra
        excluded layers such as the classifier may be present).
      sparsity: fraction of units to remove, in ``[0, 1)``: one number, or (``scope="layer"``) a
        mapping layer -> fraction (absent layers: 0; tied layers must agree).
      specs: ``xaijax.models.layer_specs(model)``.
      scope: ``"layer"`` (each layer / tied group at its own sparsity) or ``"global"``.
      min_units: units every layer keeps at least.
      exclude: layers kept whole (default: the classifier).
      normalize: per-layer score normalisation for global ranking.
      pruned: a previous unit mask (True = kept); its pruned units stay pruned.
    """
    _check_choice(scope, SCOPES, "scope")
    _check_choice(normalize, NORMALIZATIONS, "normalize")
    names = [spec.name for spec in specs]
    if not isinstance(min_units, int) or min_units < 1:
        raise ValueError(f"min_units must be a positive integer, got {min_units!r}")
    exclude = default_exclude(specs) if exclude is None else tuple(exclude)
    _check_known(exclude, names, "exclude")
    _check_known(scores, names, "scores")
    _check_known(pruned or {}, names, "pruned")
    targets = _layer_sparsities(sparsity, names, scope)
    global_sparsity = 0.0 if isinstance(sparsity, Mapping) else float(sparsity)

    candidates, excluded_groups = [], []
    for group in pruning_groups(specs):
        if any(name in exclude for name in group):
            excluded_groups.append(group)
            continue
        missing = [name for name in group if name not in scores]
        if missing:
            raise ValueError(f"scores miss layers {missing}")
        arrays = [np.asarray(scores[name], np.float64) for name in group]
        size = arrays[0].shape
        if any(a.ndim != 1 or a.shape != size for a in arrays):
            raise ValueError(
                f"unit scores of {list(group)} must be 1-D of one length, got "
                f"{[a.shape for a in arrays]}"
            )
        if any(np.any(a < 0) or not np.all(np.isfinite(a)) for a in arrays):
            raise ValueError(f"unit scores of {list(group)} must be finite and non-negative")
        if len({targets[name] for name in group}) != 1:
            raise ValueError(f"tied layers {list(group)} must share one sparsity")
        previous = [
            _as_bool_array(pruned[name], size, f"pruned[{name!r}]")
            for name in group
            if pruned is not None and name in pruned
        ]
        was_pruned = ~np.logical_and.reduce(previous) if previous else np.zeros(size, bool)
        candidates.append(
            _Candidate(
                group, np.sum(arrays, axis=0), size, targets[group[0]], min_units, was_pruned
            )
        )
    for group in excluded_groups:
        if any(targets[name] > 0 for name in group) and isinstance(sparsity, Mapping):
            raise ValueError(f"layers {list(group)} are excluded but given a sparsity")

    keep = _select(candidates, scope, global_sparsity, normalize)
    masks: UnitMasks = {}
    for c, kept in zip(candidates, keep, strict=True):
        for name in c.layers:
            masks[name] = kept.copy()
    for group in excluded_groups:
        for name in group:
            if name not in scores:
                raise ValueError(f"scores miss layer {name!r} (needed for its unit count)")
            masks[name] = np.ones(np.shape(scores[name]), bool)
    return {name: masks[name] for name in names}


def weight_masks(
    scores: Mapping[str, Mapping[str, Any]],
    sparsity: float | Mapping[str, float],
    *,
    scope: Scope = "layer",
    exclude: Sequence[str] = (),
    min_weights: int = 1,
    normalize: Normalization = "mean",
    pruned: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Keep-masks ``{layer: {"kernel": bool[...]}}`` of single kernel entries.

    ``scores`` is ``{layer: {"kernel": array}}`` (weight-granularity importance). Same conventions
    as :func:`unit_masks` with weights in place of units; ``exclude`` layers are kept whole.
    """
    _check_choice(scope, SCOPES, "scope")
    _check_choice(normalize, NORMALIZATIONS, "normalize")
    if not isinstance(min_weights, int) or min_weights < 0:
        raise ValueError(f"min_weights must be a non-negative integer, got {min_weights!r}")
    names = list(scores)
    _check_known(exclude, names, "exclude")
    _check_known(pruned or {}, names, "pruned")
    targets = _layer_sparsities(sparsity, names, scope)
    global_sparsity = 0.0 if isinstance(sparsity, Mapping) else float(sparsity)
    candidates = []
    for name in names:
        if not isinstance(scores[name], Mapping) or set(scores[name]) != {"kernel"}:
            raise ValueError(f"weight scores[{name!r}] must be {{'kernel': array}}")
        if name in exclude:
            continue
        values = np.asarray(scores[name]["kernel"], np.float64)
        if np.any(values < 0) or not np.all(np.isfinite(values)):
            raise ValueError(f"weight scores of {name!r} must be finite and non-negative")
        was_pruned = (
            ~_as_bool_array(pruned[name]["kernel"], values.shape, f"pruned[{name!r}]").ravel()
            if pruned is not None and name in pruned
            else np.zeros(values.size, bool)
        )
        candidates.append(
            _Candidate(
                (name,),
                values.ravel(),
                values.shape,
                targets[name],
                min(min_weights, values.size),
                was_pruned,
            )
        )
    keep = _select(candidates, scope, global_sparsity, normalize)
    masks = {
        c.layers[0]: {"kernel": kept.reshape(c.shape)}
        for c, kept in zip(candidates, keep, strict=True)
    }
    for name in exclude:
        masks[name] = {"kernel": np.ones(np.shape(scores[name]["kernel"]), bool)}
    return {name: masks[name] for name in names}
