"""Applying keep-masks to parameters: a 0/1 pytree shaped like ``params`` (:func:`params_mask`)
and the masked variables themselves (:func:`mask_variables`).

A structured mask of unit ``k`` of layer ``l`` zeroes ``kernel[..., k]``, ``bias[k]``, the
BatchNorm ``scale[k]`` and ``bias[k]`` after ``l`` and the input channel ``k`` of every consumer
(for a Dense consumer after a flatten, the rows ``r`` with ``r % C == k``). With the BatchNorm
scale and offset at zero the channel's output is exactly zero whatever its statistics. A weight
mask zeroes single kernel entries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xaijax.models import LayerSpec
from xaijax.pruning.masks import pruning_groups
from xaijax.pruning.selection import _as_bool_array, _check_known

Variables = Mapping[str, Any]


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
