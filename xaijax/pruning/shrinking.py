"""Physical shrinking: the narrower model and variables that keep only the unmasked units.

Slicing out a unit masked as in :mod:`xaijax.pruning.apply` removes exactly what the mask zeroes,
so the narrow model computes what the masked model does, up to float reassociation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xaijax.pruning.apply import Variables, _checked_unit_masks, _input_channel_mask


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
