"""Parameters and FLOPs per layer of any linen model, read from its variables and the traced
output shapes of its ``nn.Conv`` / ``nn.Dense`` calls (``jax.eval_shape``: nothing computed).

For a layer ``l`` with kernel ``W_l`` and BatchNorm ``bn_l`` (if any):

* ``params = |W_l| + |bias_l| + |params of bn_l|`` (every leaf of the layer's and its
  BatchNorm's ``params``);
* ``flops = 2 * positions_l * |W_l|`` per example, ``positions_l`` being the number of output
  positions of one example (``Ho * Wo`` for a 2-D conv, 1 for a Dense on a vector): two FLOPs per
  multiply-accumulate.

Layers are named by module path and their variables read from the model's nested collections,
so this serves a zoo model, a user's model and a shrunk model (``xaijax.pruning.shrink_any``)
alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from flax.core import unfreeze
from flax.errors import FlaxError

from xaijax.models.common import LayerSpec, inference_kwargs
from xaijax.models.discovery import layer_kind, layer_specs_of, scope_path


def flat_by_path(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A collection flattened to ``{"Block_0/Conv_1/kernel": leaf}``."""
    return traverse_util.flatten_dict(unfreeze(tree), sep="/")


def module_leaves(flat: Mapping[str, Any], module: str) -> list[str]:
    """The keys of ``flat`` (see :func:`flat_by_path`) that are leaves of module ``module``."""
    return [key for key in flat if key.rsplit("/", 1)[0] == module]


def call_shapes(
    model: nn.Module,
    variables: Mapping[str, Any],
    example_input: Any,
    layers: frozenset[str],
    **apply_kwargs: Any,
) -> dict[str, tuple[int, ...]]:
    """Output shape of every Conv / Dense call of ``model`` named in ``layers`` (module paths)
    on ``example_input`` (shapes only). Raises ``ValueError`` when the model does not run on
    ``variables`` or never calls one of ``layers``."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(next_fun, args, call_kwargs, context):
        out = next_fun(*args, **call_kwargs)
        module = context.module
        name = scope_path(module)
        if context.method_name == "__call__" and layer_kind(module) and name in layers:
            shapes[name] = tuple(out.shape)
        return out

    def run(v, x):
        with nn.intercept_methods(record):
            return model.apply(v, x, **apply_kwargs)

    try:
        jax.eval_shape(run, variables, example_input)
    except FlaxError as err:
        raise ValueError(
            "the model does not run on these variables (for a shrunk model: its code probably "
            f"depends on a layer width or has width-shaped variables of its own): {err}"
        ) from err
    missing = sorted(layers - set(shapes))
    if missing:
        raise ValueError(f"the model never calls layer(s) {missing} on example_input")
    return shapes


def traced_layer_costs(
    model: nn.Module,
    variables: Mapping[str, Any],
    specs: Sequence[LayerSpec],
    example_input: Any,
    **apply_kwargs: Any,
) -> dict[str, dict[str, int]]:
    """``{layer: {"params", "flops"}}`` for every layer of ``specs`` (module docstring), the
    positions read from ``model.apply(variables, example_input, **apply_kwargs)`` traced."""
    specs = tuple(specs)
    params = flat_by_path(variables["params"])
    shapes = call_shapes(
        model, variables, example_input, frozenset(s.name for s in specs), **apply_kwargs
    )
    costs = {}
    for spec in specs:
        modules = [spec.name] + ([spec.bn] if spec.bn is not None else [])
        n_params = sum(
            int(np.size(params[leaf])) for m in modules for leaf in module_leaves(params, m)
        )
        kernel_size = int(np.size(params[f"{spec.name}/kernel"]))
        positions = int(np.prod(shapes[spec.name][1:-1]))
        costs[spec.name] = {"params": n_params, "flops": 2 * positions * kernel_size}
    return costs


def layer_costs(
    model: nn.Module, variables: Mapping[str, Any], input_shape: tuple[int, ...]
) -> dict[str, dict[str, int]]:
    """:func:`traced_layer_costs` of every layer of ``model`` (its hand-written ``layer_specs()``
    or the discovered ones) for one example of shape ``input_shape`` ``(H, W, C)``, the model
    applied in inference mode (``inference_kwargs``)."""
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    kwargs = inference_kwargs(model)
    return traced_layer_costs(model, variables, layer_specs_of(model, x, **kwargs), x, **kwargs)


__all__ = ["call_shapes", "flat_by_path", "layer_costs", "module_leaves", "traced_layer_costs"]
