"""Physical shrinking of any linen model, without a ``widths`` hook: sliced variables and
intercepted layer calls.

:func:`shrink_any` slices the variables of an unmodified model by unit keep-masks keyed by layer
name (module paths, as ``xaijax.models.discover_layer_specs`` gives them): for a kept set ``K_l``
of layer ``l`` it keeps ``kernel[..., K_l]``, ``bias[K_l]``, the entries ``K_l`` of every leaf of
its BatchNorm (scale, bias, mean, var) and, in each consumer, the input channels ``K_l`` (for a
Dense after a flatten, the rows ``r`` with ``r % C in K_l``). The model's own code then runs on
these narrower variables inside :class:`Narrowed`: every ``nn.Conv`` / ``nn.Dense`` call is
replaced by a copy of that module (``module.clone``: padding, strides, dilation, bias, dtypes
kept) whose ``features`` is its sliced kernel's width, so hard-coded widths in the model code do
not matter. Slicing removes exactly what ``xaijax.pruning.mask_variables`` zeroes, so the
outputs equal the masked model's up to float reassociation.

What cannot be shrunk raises a ``ValueError`` naming the layer: a concatenation consumer (a
``LayerSpec`` does not say where each joined layer's channels start), a grouped or masked
convolution, and model code whose path depends on a width (e.g. ``if x.shape[-1] !=
self.features``: the narrower model would call layers or create variables the full one does
not). :func:`traced_layer_costs` counts parameters and FLOPs from the variables and the traced
output shapes, so on the shrunk model they are the shrunk ones.
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

from xaijax.models import LayerSpec, discover_layer_specs
from xaijax.models.discovery import layer_kind, scope_path
from xaijax.pruning.apply import Variables, _checked_unit_masks, _input_channel_mask

__all__ = ["Narrowed", "shrink_any", "traced_layer_costs"]


def _narrow_call(module: nn.Module, name: str, kind: str, args: tuple, kwargs: dict) -> Any:
    """The layer ``module`` rebuilt at its (sliced) kernel's width and applied to it."""
    params = module.variables["params"]
    kernel = params["kernel"]
    if kind == "conv" and (module.feature_group_count != 1 or module.mask is not None):
        raise ValueError(
            f"layer {name!r}: shrinking needs an unmasked convolution with feature_group_count=1"
        )
    x = args[0] if args else kwargs.get("inputs")
    width_in = kernel.shape[-2] if kind == "conv" else kernel.shape[0]
    if x is not None and x.shape[-1] != width_in:
        raise ValueError(
            f"layer {name!r} reads {x.shape[-1]} features in the shrunk model but its sliced "
            f"kernel {tuple(kernel.shape)} expects {width_in}: the channels reaching it were "
            "joined or reshaped in a way its LayerSpec does not describe"
        )
    narrow = module.clone(parent=None, features=int(kernel.shape[-1]))
    return narrow.apply({"params": params}, *args, **kwargs)


class Narrowed(nn.Module):
    """``model``'s code run on shrunk variables: each Conv / Dense of ``layers`` (module paths)
    runs at its kernel's width. Same variable names as ``model``; built by :func:`shrink_any`.
    ``init`` creates the full model's variables; the narrow ones come from :func:`shrink_any`."""

    model: nn.Module
    layers: tuple[str, ...]

    def setup(self) -> None:
        nn.share_scope(self, self.model)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        layers = frozenset(self.layers)

        def intercept(next_fun, call_args, call_kwargs, context):
            module = context.module
            kind = layer_kind(module)
            name = scope_path(module)
            if (
                context.method_name != "__call__"
                or kind is None
                or not name  # The unbound copy _narrow_call applies.
                or module.is_initializing()
            ):
                return next_fun(*call_args, **call_kwargs)
            if name not in layers:
                raise ValueError(
                    f"the shrunk model calls layer {name!r}, which the full model does not: the "
                    "model's code takes another path at the narrower widths (e.g. it compares "
                    "an input width with a hard-coded one)"
                )
            return _narrow_call(module, name, kind, call_args, call_kwargs)

        with nn.intercept_methods(intercept):
            return self.model(*args, **kwargs)


def _by_path(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A collection flattened to ``{"Block_0/Conv_1/kernel": leaf}`` (numpy leaves)."""
    return {
        k: np.asarray(v) for k, v in traverse_util.flatten_dict(unfreeze(tree), sep="/").items()
    }


def _nested(flat: Mapping[str, Any]) -> dict[str, Any]:
    return traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()}, sep="/")


def _leaves_of(flat: Mapping[str, Any], module: str) -> list[str]:
    return [key for key in flat if key.rsplit("/", 1)[0] == module]


def _check_shrinkable(
    specs: Sequence[LayerSpec], checked: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Consumer -> the channel keep-mask of its (single) producer group; raises for a removed
    classifier unit, an empty layer and a pruned producer whose consumer reads a concatenation."""
    by_name = {spec.name: spec for spec in specs}
    producers: dict[str, set[str]] = {}
    for spec in specs:
        for consumer in spec.consumers:
            producers.setdefault(consumer, set()).add(spec.tied_group or spec.name)
    producer_of: dict[str, np.ndarray] = {}
    for name, keep in checked.items():
        spec = by_name[name]
        if spec.is_classifier and not keep.all():
            raise ValueError(f"cannot shrink the classifier {name!r}: its units are the classes")
        if not keep.any():
            raise ValueError(f"unit mask of {name!r} removes every unit")
        if keep.all():
            continue  # Nothing to slice, in this layer or its consumers.
        for consumer in spec.consumers:
            if len(producers[consumer]) > 1:
                raise ValueError(
                    f"cannot shrink layer {name!r}: its consumer {consumer!r} reads a "
                    f"concatenation of layers {sorted(producers[consumer])}, and a LayerSpec "
                    "does not say where each one's channels start"
                )
            producer_of[consumer] = keep
    return producer_of


def _slice_variables(
    specs: Sequence[LayerSpec], variables: Variables, checked: Mapping[str, np.ndarray]
) -> dict[str, Any]:
    producer_of = _check_shrinkable(specs, checked)
    flat = {col: _by_path(tree) for col, tree in variables.items()}
    params = flat["params"]
    for spec in specs:
        key = f"{spec.name}/kernel"
        if spec.name in producer_of:
            try:
                rows = _input_channel_mask(params[key], spec.kind, producer_of[spec.name])
            except ValueError as err:
                raise ValueError(
                    f"cannot slice the input channels of layer {spec.name!r}: {err} (its input "
                    "joins its producer's channels with others)"
                ) from err
            params[key] = params[key][..., rows, :] if spec.kind == "conv" else params[key][rows]
        if spec.name not in checked:
            continue
        keep = checked[spec.name]
        for leaf in _leaves_of(params, spec.name):
            params[leaf] = params[leaf][..., keep]  # kernel [..., out], bias [out]
        if spec.bn is None:
            continue
        for col_flat in flat.values():
            for leaf in _leaves_of(col_flat, spec.bn):
                if col_flat[leaf].shape[-1:] != keep.shape:
                    raise ValueError(
                        f"BatchNorm {spec.bn!r} of layer {spec.name!r}: {leaf!r} has shape "
                        f"{col_flat[leaf].shape}, not one entry per unit ({keep.size})"
                    )
                col_flat[leaf] = col_flat[leaf][..., keep]
    return {col: _nested(col_flat) for col, col_flat in flat.items()}


def _call_shapes(
    model: nn.Module, variables: Variables, example_input: Any, layers: frozenset[str], **kwargs
) -> dict[str, tuple[int, ...]]:
    """Output shape of every Conv / Dense call of ``model`` on ``example_input`` (no compute)."""
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
            return model.apply(v, x, **kwargs)

    try:
        jax.eval_shape(run, variables, example_input)
    except FlaxError as err:
        raise ValueError(
            "the model does not run on these variables; for a shrunk model, its code probably "
            f"depends on a layer width or has width-shaped variables of its own: {err}"
        ) from err
    missing = sorted(layers - set(shapes))
    if missing:
        raise ValueError(f"the model never calls layer(s) {missing} on example_input")
    return shapes


def shrink_any(
    model: nn.Module,
    variables: Variables,
    unit_masks: Mapping[str, Any],
    example_input: Any,
    *,
    specs: Sequence[LayerSpec] | None = None,
    **apply_kwargs: Any,
) -> tuple[Narrowed, dict[str, Any]]:
    """The physically narrower model and variables keeping only the unmasked units.

    ``unit_masks`` maps layer names (module paths) to ``bool[units]`` keep-masks; tied layers
    need one identical mask each. ``specs`` defaults to ``discover_layer_specs(model,
    example_input, **apply_kwargs)``. Returns ``(narrow, narrow_variables)``:
    ``narrow.apply(narrow_variables, x, **apply_kwargs)`` equals the masked model's output
    (``mask_variables``) up to float reassociation. The narrow model is checked by tracing it on
    ``example_input`` (shapes only); a structure it cannot follow raises ``ValueError``.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a flax.linen Module, got {type(model).__name__}")
    if "params" not in variables:
        raise ValueError("variables must hold a 'params' collection")
    if specs is None:
        specs = discover_layer_specs(model, example_input, **apply_kwargs)
    specs = tuple(specs)
    flat_params = _by_path(variables["params"])
    kernels = {}
    for spec in specs:
        if f"{spec.name}/kernel" not in flat_params:
            raise ValueError(f"layer {spec.name!r} has no kernel in variables['params']")
        kernels[spec.name] = {"kernel": flat_params[f"{spec.name}/kernel"]}
    checked = _checked_unit_masks(specs, kernels, unit_masks)
    narrow_variables = _slice_variables(specs, variables, checked)
    narrow = Narrowed(model, tuple(spec.name for spec in specs))
    _call_shapes(narrow, narrow_variables, example_input, frozenset(narrow.layers), **apply_kwargs)
    return narrow, narrow_variables


def traced_layer_costs(
    model: nn.Module,
    variables: Variables,
    specs: Sequence[LayerSpec],
    example_input: Any,
    **apply_kwargs: Any,
) -> dict[str, dict[str, int]]:
    """Parameters and FLOPs per example of every layer of ``specs``, as ``models.layer_costs``
    counts them, for any model (a :class:`Narrowed` one included).

    ``params``: kernel, bias and the BatchNorm's params; ``flops``: ``2 * positions *
    kernel.size``, positions being the layer's output positions per example (1 for a Dense on a
    vector), read from the traced output shapes.
    """
    specs = tuple(specs)
    params = _by_path(variables["params"])
    shapes = _call_shapes(
        model, variables, example_input, frozenset(s.name for s in specs), **apply_kwargs
    )
    costs = {}
    for spec in specs:
        modules = [spec.name] + ([spec.bn] if spec.bn is not None else [])
        n_params = sum(params[leaf].size for m in modules for leaf in _leaves_of(params, m))
        kernel = params[f"{spec.name}/kernel"]
        positions = int(np.prod(shapes[spec.name][1:-1]))
        costs[spec.name] = {"params": int(n_params), "flops": 2 * positions * int(kernel.size)}
    return costs
