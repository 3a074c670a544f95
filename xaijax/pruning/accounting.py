"""What a mask leaves: per-layer sparsity, parameter and FLOP costs, non-zero counts, storage.

Storage of a pruned kernel is ``value_bits`` per kept value plus a 1-bit presence mask per entry
(when any entry is pruned); FLOPs of a masked layer are its dense cost times the kept fraction of
its kernel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xaijax.models import (
    LayerSpec,
    inference_kwargs,
    layer_specs_of,
    layer_variables,
    traced_layer_costs,
)
from xaijax.pruning.apply import Variables


def unit_sparsity(masks: Mapping[str, Any]) -> dict[str, float]:
    """Fraction of units removed per layer."""
    return {name: float(1.0 - np.mean(np.asarray(m, bool))) for name, m in masks.items()}


def kernel_sparsity(specs: Sequence[LayerSpec], params: Mapping[str, Any]) -> dict[str, float]:
    """Fraction of exactly-zero kernel entries per layer (layers by module path)."""
    return {
        spec.name: float(np.mean(np.asarray(layer_variables(params, spec.name)["kernel"]) == 0))
        for spec in specs
    }


def masked_costs(
    model: nn.Module,
    variables: Variables,
    mask: Any,
    input_shape: tuple[int, ...],
    *,
    specs: Sequence[LayerSpec] | None = None,
) -> dict[str, dict[str, int]]:
    """Per-layer ``traced_layer_costs`` counting only unmasked parameters.

    ``params`` counts the kernel, bias and BatchNorm entries the mask keeps; ``flops`` scales the
    dense cost by the kept fraction of the kernel (exact for structured masks, the sparse-kernel
    cost for unstructured ones). The layers are ``specs`` (default: ``layer_specs_of`` the model
    on one example of shape ``input_shape``, applied in inference mode), found in the nested
    ``mask`` by module path.
    """
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    kwargs = inference_kwargs(model)
    specs = tuple(layer_specs_of(model, x, **kwargs) if specs is None else specs)
    costs = traced_layer_costs(model, variables, specs, x, **kwargs)
    result = {}
    for spec in specs:
        modules = [spec.name] + ([spec.bn] if spec.bn is not None else [])
        leaves = [layer_variables(mask, module) for module in modules]
        kept = sum(
            int(np.sum(np.asarray(leaf) != 0)) for tree in leaves for leaf in jax.tree.leaves(tree)
        )
        kernel = np.asarray(layer_variables(mask, spec.name)["kernel"])
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
