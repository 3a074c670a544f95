"""Applying keep-masks to parameters: a 0/1 pytree shaped like ``params`` (:func:`params_mask`)
and the masked variables themselves (:func:`mask_variables`).

A structured mask of unit ``k`` of layer ``l`` zeroes ``kernel[..., k]``, ``bias[k]``, the
BatchNorm ``scale[k]`` and ``bias[k]`` after ``l`` and the input channel ``start + k`` of every
consumer, ``start`` being where ``l``'s channels begin in that consumer's input (0 unless it reads
a concatenation, ``LayerSpec.consumer_slices``; for a Dense consumer after a flatten of ``C``
channels, the rows ``r`` with ``r % C == start + k``). With the BatchNorm scale and offset at zero
the channel's output is exactly zero whatever its statistics. A weight mask zeroes single kernel
entries.

Layers are named by module path (``"Block_0/Conv_1"``) and found in the model's nested variables
(``params["Block_0"]["Conv_1"]``) or in a view keyed by layer name (``params["Block_0/Conv_1"]``);
the results have the structure of the variables given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xaijax.models import LayerSpec, consumer_slice, layer_variables
from xaijax.pruning.masks import pruning_groups
from xaijax.pruning.selection import _as_bool_array, _check_known

Variables = Mapping[str, Any]


def _input_channel_mask(
    consumer_kernel: np.ndarray,
    kind: str,
    channel_mask: np.ndarray,
    start: int = 0,
    total: int | None = None,
) -> np.ndarray:
    """Keep-mask over a consumer kernel's input axis for its producer's channel mask, the
    producer's channels being channels ``start ...`` of the ``total`` the consumer reads."""
    if total is not None:
        full = np.ones(total, bool)
        full[start : start + channel_mask.size] = channel_mask
        channel_mask = full
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
        units = np.shape(layer_variables(params, name)["kernel"])[-1]
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
    paths = _paths(flat)
    by_name = {spec.name: spec for spec in specs}
    checked = _checked_unit_masks(specs, params, unit_masks or {})
    for name, keep in checked.items():
        spec = by_name[name]
        flat[paths[f"{name}/kernel"]][..., ~keep] = False
        for module, leaf in ((name, "bias"), (spec.bn, "scale"), (spec.bn, "bias")):
            if module is not None and f"{module}/{leaf}" in paths:
                flat[paths[f"{module}/{leaf}"]][~keep] = False
        for index, consumer in enumerate(spec.consumers):
            kernel = flat[paths[f"{consumer}/kernel"]]
            start, total = consumer_slice(spec, index, keep.size)
            rows = _input_channel_mask(kernel, by_name[consumer].kind, keep, start, total)
            if by_name[consumer].kind == "conv":
                kernel[..., ~rows, :] = False
            else:
                kernel[~rows, :] = False
    _check_known(weight_masks or {}, list(by_name), "weight masks")
    for name, tree in (weight_masks or {}).items():
        kernel = flat[paths[f"{name}/kernel"]]
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


def _paths(flat: Mapping[tuple[str, ...], Any]) -> dict[str, tuple[str, ...]]:
    """``"Block_0/Conv_1/kernel"`` -> its key in ``flat``, whichever view ``flat`` came from."""
    return {"/".join(path): path for path in flat}


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
        stats = _flatten(variables["batch_stats"])
        paths = _paths(stats)
        checked = _checked_unit_masks(specs, variables["params"], unit_masks or {})
        for spec in specs:
            if spec.bn is None or spec.name not in checked:
                continue
            keep = jnp.asarray(checked[spec.name])
            for leaf, neutral in (("mean", 0.0), ("var", 1.0)):
                if f"{spec.bn}/{leaf}" in paths:
                    path = paths[f"{spec.bn}/{leaf}"]
                    stats[path] = jnp.where(keep, stats[path], neutral)
        masked["batch_stats"] = _unflatten(stats)
    return masked
