"""The prunable layers of a Flax model seen from outside the model, for the criteria.

* :func:`layer_names`: the prunable layers in forward order: ``model.layer_specs()`` where the
  model writes them, else the layers ``xaijax.models.discover_layer_specs`` finds by tracing the
  model on the images (module paths, ``"Block_0/Conv_1"`` for a nested layer).
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
from xaijax.models import inference_kwargs, layer_specs_of
from xaijax.models.common import layer_variables
from xaijax.models.discovery import scope_path


def layer_names(
    model: nn.Module, variables: Variables | None = None, images: Any = None
) -> tuple[str, ...]:
    """Names of the prunable layers in forward order: the hand-written ``layer_specs()``, else
    the discovered ones on the shape of ``images``; a data-free criterion, with no images, gets
    the layers holding a ``kernel`` in ``variables["params"]`` (tree order)."""
    if callable(getattr(model, "layer_specs", None)) or images is not None:
        return tuple(s.name for s in layer_specs_of(model, images, **inference_kwargs(model)))
    if variables is None:
        raise ValueError(
            f"{type(model).__name__} has no layer_specs(): its layers are found by tracing it on "
            "images, or read from the kernels of its variables"
        )
    paths = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
    names = ("/".join(str(getattr(k, "key", k)) for k in path) for path, _ in paths)
    return tuple(name.rsplit("/", 1)[0] for name in names if name.endswith("/kernel"))


def position_sum(x: jax.Array) -> jax.Array:
    """Sum a ``[B, ..., C]`` layer map over its positions (all axes but the first and the last)."""
    return x.sum(axis=tuple(range(1, x.ndim - 1)))


def kernel_tree(params: Mapping[str, Any], names: tuple[str, ...], fn: Callable) -> Scores:
    """``{name: {"kernel": fn(kernel of layer name)}}`` over ``names`` (module paths)."""
    return {name: {"kernel": fn(layer_variables(params, name)["kernel"])} for name in names}


def _is_layer_call(context: Any, names: Mapping[str, Any]) -> bool:
    module = context.module
    return (
        context.method_name == "__call__"
        and isinstance(module, nn.Conv | nn.Dense)
        and scope_path(module) in names
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
        name = scope_path(context.module)
        outputs[name] = y
        return y + perturbations[name]

    with nn.intercept_methods(interceptor):
        logits = model.apply(variables, images, **inference_kwargs(model))
    return logits, outputs


def layer_output_shapes(
    model: nn.Module, variables: Variables, images: jax.Array
) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes of the prunable layers' outputs for ``images`` (no computation)."""
    names = dict.fromkeys(layer_names(model, variables, images))

    def run(x):
        zeros = {}

        def record(next_fun, args, kwargs, context):
            y = next_fun(*args, **kwargs)
            if _is_layer_call(context, names):
                zeros[scope_path(context.module)] = y
            return y

        with nn.intercept_methods(record):
            model.apply(variables, x, **inference_kwargs(model))
        return zeros

    return jax.eval_shape(run, images)
