"""The prunable layers of a Flax model seen from outside the model, for the criteria.

* :func:`layer_names`: the prunable layers (``model.layer_specs()``) in forward order.
* :func:`apply_with_perturbations`: the logits with a perturbation ``e_l`` added to the output
  ``a_l`` of each named layer (``nn.intercept_methods``), and those outputs. At ``e = 0`` the
  logits are unchanged and ``dF/de_l = dF/da_l`` for any function ``F`` of the logits: the gradient
  with respect to a layer's output without changing the model.
* :func:`layer_output_shapes`: the shapes of those outputs (``jax.eval_shape``, no computation).
* :func:`position_sum`: ``[B, ..., C] -> [B, C]``, the sum over positions (all axes but the batch
  and the units), which turns a per-position map into per-unit values.
* :func:`kernel_tree`: ``{name: {"kernel": fn(kernel)}}``, the shape of weight-granularity scores.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax

from xaijax.importance.criterion import Scores, Variables


def layer_names(model: nn.Module) -> tuple[str, ...]:
    """Names of the prunable layers in forward order."""
    return tuple(spec.name for spec in model.layer_specs())


def position_sum(x: jax.Array) -> jax.Array:
    """Sum a ``[B, ..., C]`` layer map over its positions (all axes but the first and the last)."""
    return x.sum(axis=tuple(range(1, x.ndim - 1)))


def kernel_tree(params: Mapping[str, Any], names: tuple[str, ...], fn: Callable) -> Scores:
    """``{name: {"kernel": fn(params[name]["kernel"])}}`` over ``names``."""
    return {name: {"kernel": fn(params[name]["kernel"])} for name in names}


def _is_layer_call(context: Any, names: Mapping[str, Any]) -> bool:
    module = context.module
    return (
        context.method_name == "__call__"
        and isinstance(module, nn.Conv | nn.Dense)
        and module.name in names
        and len(module.scope.path) == 1
    )


def apply_with_perturbations(
    model: nn.Module,
    variables: Variables,
    images: jax.Array,
    perturbations: Mapping[str, jax.Array],
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Logits with ``perturbations[name]`` added to each named layer's output, and those outputs.

    The gradient of a function of the logits with respect to a zero perturbation is the gradient
    with respect to that layer's output.
    """
    outputs = {}

    def interceptor(next_fun, args, kwargs, context):
        if not _is_layer_call(context, perturbations):
            return next_fun(*args, **kwargs)
        y = next_fun(*args, **kwargs)
        outputs[context.module.name] = y
        return y + perturbations[context.module.name]

    with nn.intercept_methods(interceptor):
        logits = model.apply(variables, images, train=False)
    return logits, outputs


def layer_output_shapes(
    model: nn.Module, variables: Variables, images: jax.Array
) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes of the prunable layers' outputs for ``images`` (no computation)."""
    names = dict.fromkeys(layer_names(model))

    def run(x):
        zeros = {}

        def record(next_fun, args, kwargs, context):
            y = next_fun(*args, **kwargs)
            if _is_layer_call(context, names):
                zeros[context.module.name] = y
            return y

        with nn.intercept_methods(record):
            model.apply(variables, x, train=False)
        return zeros

    return jax.eval_shape(run, images)
