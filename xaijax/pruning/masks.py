"""Pruning masks from importance scores, mask application, iterative pruning and physical shrinking.

Structured (unit) pruning removes whole conv filters / dense neurons; unstructured (weight) pruning
removes single kernel entries. Masks are computed on the host from scores by pure functions:

* :func:`unit_masks` -> ``{layer: bool[units]}`` (True = kept) for every layer of ``specs``;
* :func:`weight_masks` -> ``{layer: {"kernel": bool[*kernel.shape]}}``;
* :func:`params_mask` turns them into a 0/1 pytree shaped like ``params`` for the training loop's
  ``mask`` hook (``xaijax.training.train_step(..., mask=...)`` re-applies it after every update).

Conventions:

* Sparsity is the fraction removed. A layer (or tied group) of ``n`` units at sparsity ``s`` loses
  ``floor(s * n)`` units (``s * n`` rounded to 6 decimals first, so 0.29 x 100 gives 29), but never
  more than ``n - min_units``. Global scope removes ``floor(s * N)`` of the ``N`` candidate units of
  all non-excluded layers together, subject to the same per-layer floor.
* Global scope ranks normalised scores: each layer's (or tied group's) scores are divided by their
  mean (``normalize="mean"``, the default: a unit scoring below its layer's average is a candidate
  wherever it sits, independent of the layers' sizes and scales), by their L2 norm
  (``normalize="l2"``), or ranked raw (``normalize="none"``). A layer whose scores are all zero
  stays all zero.
* Ties are broken by layer order, then by index (lowest first), so masks are deterministic.
* Units already pruned (``pruned=`` a previous mask) rank below every other unit: masks only grow.
* Tied groups (ResNet residual additions) are one pruning candidate: the group's score per channel
  is the sum of its layers' scores, and every layer of the group gets the same mask.
* A structured mask of unit ``k`` of layer ``l`` zeroes ``kernel[..., k]``, ``bias[k]``, the
  BatchNorm ``scale[k]`` and ``bias[k]`` after ``l`` and the input channel ``k`` of every consumer
  (for a Dense consumer after a flatten, the rows ``r`` with ``r % C == k``). With the BatchNorm
  scale and offset at zero the channel's output is exactly zero whatever its statistics.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from xaijax.models import LayerSpec, layer_costs

Scope = Literal["layer", "global"]
Normalization = Literal["mean", "l2", "none"]
UnitMasks = dict[str, np.ndarray]
Variables = Mapping[str, Any]

SCOPES = ("layer", "global")
NORMALIZATIONS = ("mean", "l2", "none")


@dataclasses.dataclass(frozen=True)
class _Candidate:
    """One pruning candidate: a layer, or a tied group of layers sharing their output channels."""

    layers: tuple[str, ...]
    scores: np.ndarray  # flat float64 scores of the candidate's prunable elements
    shape: tuple[int, ...]
    sparsity: float
    min_kept: int
    pruned: np.ndarray  # flat bool: already pruned


# ---------------------------------------------------------------------------------------------
# Validation.


def _check_sparsity(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise TypeError(f"{what} must be a number in [0, 1), got {value!r}")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {value!r}")
    return float(value)


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ValueError(f"{what} must be one of {choices}, got {value!r}")


def _check_known(names: Any, known: Sequence[str], what: str) -> None:
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"{what} names unknown layers {unknown}; known layers: {list(known)}")


def _layer_sparsities(
    sparsity: float | Mapping[str, float], names: Sequence[str], scope: str
) -> dict[str, float]:
    """Per-layer target sparsity from a number or a mapping (absent layers: 0)."""
    if isinstance(sparsity, Mapping):
        if scope != "layer":
            raise ValueError("a per-layer sparsity mapping needs scope='layer'")
        _check_known(sparsity, names, "sparsity")
        return {
            name: _check_sparsity(sparsity.get(name, 0.0), f"sparsity[{name!r}]") for name in names
        }
    value = _check_sparsity(sparsity, "sparsity")
    return dict.fromkeys(names, value)


def _as_bool_array(mask: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"{what} has shape {mask.shape}, expected {shape}")
    return mask.astype(bool)


# ---------------------------------------------------------------------------------------------
# Selection core.


def prune_count(sparsity: float, size: int) -> int:
    """``floor(sparsity * size)`` with the product rounded to 6 decimals (see module docstring)."""
    return math.floor(round(sparsity * size, 6))


def _normalized(scores: np.ndarray, normalize: str) -> np.ndarray:
    if normalize == "none":
        return scores
    scale = scores.mean() if normalize == "mean" else np.sqrt(np.sum(scores**2))
    return scores / scale if scale > 0 else np.zeros_like(scores)


def _ranking(candidates: Sequence[_Candidate], normalize: str) -> tuple[np.ndarray, np.ndarray]:
    """Candidate id and flat index of every element, lowest-ranked first."""
    ids = np.concatenate([np.full(c.scores.size, i) for i, c in enumerate(candidates)])
    index = np.concatenate([np.arange(c.scores.size) for c in candidates])
    values = np.concatenate([_normalized(c.scores, normalize) for c in candidates])
    pruned = np.concatenate([c.pruned for c in candidates])
    order = np.lexsort((index, ids, values, ~pruned))
    return ids[order], index[order]


def _select(
    candidates: Sequence[_Candidate], scope: str, sparsity: float, normalize: str
) -> list[np.ndarray]:
    """Flat keep-masks, one per candidate."""
    keep = [np.ones(c.scores.size, bool) for c in candidates]
    if scope == "layer":
        for c, kept in zip(candidates, keep, strict=True):
            count = min(prune_count(c.sparsity, c.scores.size), c.scores.size - c.min_kept)
            count = max(count, int(c.pruned.sum()))
            order = np.lexsort((np.arange(c.scores.size), c.scores, ~c.pruned))
            kept[order[:count]] = False
        return keep
    total = sum(c.scores.size for c in candidates)
    ids, index = _ranking(candidates, normalize)
    allowed = np.zeros(ids.size, bool)
    for i, c in enumerate(candidates):
        positions = np.flatnonzero(ids == i)
        allowed[positions[: max(c.scores.size - c.min_kept, int(c.pruned.sum()))]] = True
    already = sum(int(c.pruned.sum()) for c in candidates)
    count = max(prune_count(sparsity, total), already)
    chosen = np.flatnonzero(allowed)[:count]
    for i, j in zip(ids[chosen], index[chosen], strict=True):
        keep[i][j] = False
    return keep


# ---------------------------------------------------------------------------------------------
# Masks from scores.


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


# ---------------------------------------------------------------------------------------------
# Applying masks.


def _input_channel_mask(
    consumer_kernel: np.ndarray, kind: str, channel_mask: np.ndarray
) -> np.ndarray:
    """Keep-mask over a consumer kernel's input axis for its producer's channel mask."""
    channels = channel_mask.size
    if kind == "conv":
        if consumer_kernel.shape[-2] != channels:
            raise ValueError(
                f"consumer conv kernel {consumer_kernel.shape} does not read {channels} channels"
            )
        return channel_mask
    rows = consumer_kernel.shape[0]
    if rows % channels:
        raise ValueError(f"dense consumer with {rows} rows cannot read {channels} channels")
    return channel_mask[np.arange(rows) % channels]


def _checked_unit_masks(
    specs: Sequence[LayerSpec], params: Mapping[str, Any], masks: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    by_name = {spec.name: spec for spec in specs}
    _check_known(masks, list(by_name), "unit masks")
    checked = {}
    for name, mask in masks.items():
        units = params[name]["kernel"].shape[-1]
        checked[name] = _as_bool_array(mask, (units,), f"unit mask of {name!r}")
    for group in pruning_groups(specs):
        present = [checked[name] for name in group if name in checked]
        if len(present) not in (0, len(group)) or any(
            not np.array_equal(m, present[0]) for m in present
        ):
            raise ValueError(f"tied layers {list(group)} need one identical unit mask each")
    return checked


def params_mask(
    specs: Sequence[LayerSpec],
    params: Mapping[str, Any],
    unit_masks: Mapping[str, Any] | None = None,
    *,
    weight_masks: Mapping[str, Mapping[str, Any]] | None = None,
) -> Any:
    """A 0/1 pytree shaped like ``params`` (same dtypes) from unit and/or weight keep-masks.

    Unit masks cover the kernel slice, bias and BatchNorm scale/offset of each removed unit and the
    matching input channels of its consumers; weight masks cover kernel entries.
    """
    flat = {path: np.ones(np.shape(leaf), bool) for path, leaf in _flatten(params).items()}
    by_name = {spec.name: spec for spec in specs}
    checked = _checked_unit_masks(specs, params, unit_masks or {})
    for name, keep in checked.items():
        spec = by_name[name]
        flat[(name, "kernel")][..., ~keep] = False
        if (name, "bias") in flat:
            flat[(name, "bias")][~keep] = False
        if spec.bn is not None:
            for leaf in ("scale", "bias"):
                if (spec.bn, leaf) in flat:
                    flat[(spec.bn, leaf)][~keep] = False
        for consumer in spec.consumers:
            rows = _input_channel_mask(
                np.asarray(flat[(consumer, "kernel")]), by_name[consumer].kind, keep
            )
            kernel = flat[(consumer, "kernel")]
            if by_name[consumer].kind == "conv":
                kernel[..., ~rows, :] = False
            else:
                kernel[~rows, :] = False
    _check_known(weight_masks or {}, list(by_name), "weight masks")
    for name, tree in (weight_masks or {}).items():
        kernel = flat[(name, "kernel")]
        kernel &= _as_bool_array(tree["kernel"], kernel.shape, f"weight mask of {name!r}")
    leaves = _flatten(params)
    return _unflatten(
        {
            path: jnp.asarray(keep, dtype=jnp.result_type(leaves[path]))
            for path, keep in flat.items()
        }
    )


def _flatten(tree: Mapping[str, Any]) -> dict[tuple[str, ...], Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            for sub, leaf in _flatten(value).items():
                flat[(key, *sub)] = leaf
        else:
            flat[(key,)] = value
    return flat


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, leaf in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = leaf
    return tree


def mask_variables(
    specs: Sequence[LayerSpec],
    variables: Variables,
    unit_masks: Mapping[str, Any] | None = None,
    *,
    weight_masks: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """``variables`` with masked params zeroed and the removed channels' BatchNorm statistics reset
    to the neutral mean 0, variance 1 (their output is zero either way)."""
    mask = params_mask(specs, variables["params"], unit_masks, weight_masks=weight_masks)
    masked = dict(variables)
    masked["params"] = jax.tree.map(lambda p, m: p * m, variables["params"], mask)
    if "batch_stats" in variables:
        stats = dict(variables["batch_stats"])
        checked = _checked_unit_masks(specs, variables["params"], unit_masks or {})
        for spec in specs:
            if spec.bn is None or spec.name not in checked or spec.bn not in stats:
                continue
            keep = jnp.asarray(checked[spec.name])
            bn = dict(stats[spec.bn])
            bn["mean"] = jnp.where(keep, bn["mean"], 0.0)
            bn["var"] = jnp.where(keep, bn["var"], 1.0)
            stats[spec.bn] = bn
        masked["batch_stats"] = stats
    return masked


# ---------------------------------------------------------------------------------------------
# Reporting.


def unit_sparsity(masks: Mapping[str, Any]) -> dict[str, float]:
    """Fraction of units removed per layer."""
    return {name: float(1.0 - np.mean(np.asarray(m, bool))) for name, m in masks.items()}


def kernel_sparsity(specs: Sequence[LayerSpec], params: Mapping[str, Any]) -> dict[str, float]:
    """Fraction of exactly-zero kernel entries per layer."""
    return {
        spec.name: float(np.mean(np.asarray(params[spec.name]["kernel"]) == 0)) for spec in specs
    }


def masked_costs(
    model: nn.Module, variables: Variables, mask: Any, input_shape: tuple[int, ...]
) -> dict[str, dict[str, int]]:
    """Per-layer ``layer_costs`` counting only unmasked parameters.

    ``params`` counts the kernel, bias and BatchNorm entries the mask keeps; ``flops`` scales the
    dense cost by the kept fraction of the kernel (exact for structured masks, the sparse-kernel
    cost for unstructured ones).
    """
    costs = layer_costs(model, variables, input_shape)
    result = {}
    for spec in model.layer_specs():
        leaves = [mask[spec.name]] + ([mask[spec.bn]] if spec.bn is not None else [])
        kept = sum(
            int(np.sum(np.asarray(leaf) != 0)) for tree in leaves for leaf in jax.tree.leaves(tree)
        )
        kernel = np.asarray(mask[spec.name]["kernel"])
        flops = costs[spec.name]["flops"] * int(np.sum(kernel != 0)) // kernel.size
        result[spec.name] = {"params": kept, "flops": flops}
    return result


def nonzero_count(params: Any) -> int:
    """Number of non-zero entries in a parameter pytree (what pruning leaves)."""
    return int(sum(np.count_nonzero(np.asarray(leaf)) for leaf in jax.tree.leaves(params)))


def storage_bits(params: Any, value_bits: int = 32) -> int:
    """Storage of ``params`` with pruned (exactly zero) kernel entries dropped: ``value_bits`` per
    kept value plus a 1-bit presence mask per entry of every kernel that has zeros. Non-kernel
    leaves (biases, BatchNorm) are stored whole."""
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        leaf = np.asarray(leaf)
        if jax.tree_util.keystr(path).endswith("['kernel']"):
            kept = int(np.count_nonzero(leaf))
            total += value_bits * kept + (leaf.size if kept < leaf.size else 0)
        else:
            total += value_bits * leaf.size
    return total


def total_costs(costs: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """Sum of per-layer ``params`` and ``flops``."""
    return {
        "params": sum(c["params"] for c in costs.values()),
        "flops": sum(c["flops"] for c in costs.values()),
    }


# ---------------------------------------------------------------------------------------------
# Shrinking.


def shrink(
    model: nn.Module, variables: Variables, unit_masks: Mapping[str, Any]
) -> tuple[nn.Module, dict[str, Any]]:
    """The physically narrower model and variables that keep only the unmasked units.

    Kernels, biases, BatchNorm parameters and statistics are sliced along output units and the
    consumers' input channels; the model is rebuilt with ``model.clone(widths=...)``. On any input
    its outputs equal the masked model's (``mask_variables``) up to float reassociation.
    """
    specs = model.layer_specs()
    params = variables["params"]
    checked = _checked_unit_masks(specs, params, unit_masks)
    by_name = {spec.name: spec for spec in specs}
    for name, keep in checked.items():
        if by_name[name].is_classifier and not keep.all():
            raise ValueError(f"cannot shrink the classifier {name!r}: its units are the classes")
        if not keep.any():
            raise ValueError(f"unit mask of {name!r} removes every unit")
    producer_of: dict[str, np.ndarray] = {}
    for name, keep in checked.items():
        for consumer in by_name[name].consumers:
            producer_of[consumer] = keep

    new_params = jax.tree.map(np.asarray, dict(params))
    new_stats = jax.tree.map(np.asarray, dict(variables.get("batch_stats", {})))
    for spec in specs:
        layer = dict(new_params[spec.name])
        if spec.name in producer_of:
            rows = _input_channel_mask(layer["kernel"], spec.kind, producer_of[spec.name])
            layer["kernel"] = (
                layer["kernel"][..., rows, :] if spec.kind == "conv" else layer["kernel"][rows]
            )
        if spec.name in checked:
            keep = checked[spec.name]
            layer["kernel"] = layer["kernel"][..., keep]
            if "bias" in layer:
                layer["bias"] = layer["bias"][keep]
            if spec.bn is not None:
                new_params[spec.bn] = {k: v[keep] for k, v in new_params[spec.bn].items()}
                if spec.bn in new_stats:
                    new_stats[spec.bn] = {k: v[keep] for k, v in new_stats[spec.bn].items()}
        new_params[spec.name] = layer

    widths = {
        spec.name: int(new_params[spec.name]["kernel"].shape[-1])
        for spec in specs
        if not spec.is_classifier
    }
    narrow = model.clone(widths=widths)
    narrow_variables = {"params": jax.tree.map(jnp.asarray, new_params)}
    if "batch_stats" in variables:
        narrow_variables["batch_stats"] = jax.tree.map(jnp.asarray, new_stats)
    return narrow, narrow_variables


# ---------------------------------------------------------------------------------------------
# Iterative schedule.


def schedule_fractions(num_steps: int, kind: str = "linear") -> list[float]:
    """Fraction of the target reached after each of ``num_steps`` rounds (the last is 1).

    ``"linear"``: ``t / T``; ``"cubic"`` (Zhu & Gupta, 2017): ``1 - (1 - t / T)^3``.
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    _check_choice(kind, ("linear", "cubic"), "schedule")
    fractions = [t / num_steps for t in range(1, num_steps + 1)]
    if kind == "cubic":
        fractions = [1 - (1 - f) ** 3 for f in fractions]
    return fractions


def sparsity_schedule(target: float, num_steps: int, kind: str = "linear") -> list[float]:
    """Sparsity after each of ``num_steps`` rounds, ending at ``target`` (see
    :func:`schedule_fractions`)."""
    target = _check_sparsity(target, "target sparsity")
    return [target * f for f in schedule_fractions(num_steps, kind)]


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


class KeepPrunedState(NamedTuple):
    """The mask a :func:`keep_pruned` transform enforces (checkpointed with the optimizer)."""

    mask: Any


def _check_mask(params: Any, mask: Any) -> None:
    """``ValueError`` unless every mask array has its parameter's shape."""

    def check(path: Any, m: Any, p: Any) -> None:
        if m is not None and np.shape(m) != np.shape(p):
            raise ValueError(
                f"mask at {jax.tree_util.keystr(path)} has shape {np.shape(m)}, the parameter "
                f"has {np.shape(p)}"
            )

    try:
        jax.tree_util.tree_map_with_path(check, mask, params, is_leaf=lambda x: x is None)
    except (ValueError, TypeError) as err:
        if "mask at" in str(err):
            raise
        raise ValueError(f"mask must be shaped like params (or a prefix of it): {err}") from err


def keep_pruned(mask: Any) -> optax.GradientTransformation:
    """An optax transform that keeps pruned parameters exactly zero.

    ``mask``: 0/1 arrays shaped like the parameters (or a prefix of their tree, ``None`` leaving a
    subtree alone). Chained last (``optax.chain(..., optimizer, keep_pruned(mask))``) it maps
    ``u -> u * m - p * (1 - m)``, so ``p + u`` is ``p + u`` where ``m = 1`` and exactly 0 where
    ``m = 0``, whatever the optimizer proposed and whatever the parameter held. The mask lives in
    the transform's state, so it is checkpointed and restored with the optimizer state.
    """

    def init(params: Any) -> KeepPrunedState:
        _check_mask(params, mask)
        return KeepPrunedState(
            jax.tree.map(lambda m: jnp.asarray(m, jnp.float32), mask)  # None: not a leaf
        )

    def update(updates: Any, state: KeepPrunedState, params: Any = None) -> tuple[Any, Any]:
        if params is None:
            raise ValueError("keep_pruned needs the parameters: call update(..., params)")

        def keep(m: Any, u: Any, p: Any) -> Any:
            if m is None:
                return u
            return jax.tree.map(
                lambda ul, pl: ul * m.astype(ul.dtype) - pl * (1 - m).astype(pl.dtype), u, p
            )

        return jax.tree.map(keep, state.mask, updates, params, is_leaf=lambda x: x is None), state

    return optax.GradientTransformation(init, update)


def kept_count(mask: Any) -> int:
    """Entries a params mask keeps: the non-zero parameters of the masked model."""
    return int(sum(np.count_nonzero(np.asarray(leaf)) for leaf in jax.tree.leaves(mask)))


def match_sparsity(count_at: Callable[[float], int], budget: int, what: str) -> float:
    """The smallest sparsity ``s`` in [0, 1) with ``count_at(s) <= budget``.

    ``count_at`` (parameters kept at sparsity ``s``) must be non-increasing, as it is for masks
    that grow with ``s``; bisection over ``s`` then finds the step of ``count_at`` closest to the
    budget from below, so criteria pruned to one budget keep the same number of parameters up to
    one step (one weight for weight masks). ``ValueError`` when even ``s -> 1`` keeps more.
    """
    low, high = 0.0, float(np.nextafter(1.0, 0.0))
    if count_at(low) <= budget:
        return low
    if count_at(high) > budget:
        raise ValueError(
            f"{what}: a budget of {budget} parameters cannot be met (pruning everything "
            f"allowed still keeps {count_at(high)})"
        )
    for _ in range(60):
        middle = 0.5 * (low + high)
        if count_at(middle) <= budget:
            high = middle
        else:
            low = middle
    return high


def _kept_at(
    specs: Sequence[LayerSpec], params: Any, masks_at: Callable[..., tuple], dense: float
) -> int:
    units, weights = masks_at(dense_sparsity=dense)
    return kept_count(params_mask(specs, params, units, weight_masks=weights))


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
                "kept_params": kept_count(mask),
                "kernel_sparsity": kernel_sparsity(specs, current["params"]),
            }
        )
    return PruneResult(current, units, weights, mask, history)
