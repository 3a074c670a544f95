"""Physical shrinking of any linen model, without a ``widths`` hook: sliced variables and
intercepted layer calls.

:func:`shrink_any` slices the variables of an unmodified model by unit keep-masks keyed by layer
name (module paths, as ``xaijax.models.discover_layer_specs`` gives them): for a kept set ``K_l``
of layer ``l`` it keeps ``kernel[..., K_l]``, ``bias[K_l]``, the entries ``K_l`` of every leaf of
its BatchNorm (scale, bias, mean, var) and, in each consumer, the input channels ``start_c + K_l``
(``start_c`` where ``l``'s channels begin in that consumer's input after a concatenation,
``LayerSpec.consumer_slices``; for a Dense after a flatten of ``C`` channels, the rows ``r`` with
``r % C in start_c + K_l``). The model's own code then runs on these narrower variables inside
:class:`Narrowed`: every ``nn.Conv`` / ``nn.Dense`` call is replaced by a copy of that module
(``module.clone``: padding, strides, dilation, bias, dtypes kept) whose ``features`` is its sliced
kernel's width, so hard-coded widths in the model code do not matter. Slicing removes exactly
what ``xaijax.pruning.mask_variables`` zeroes, so the outputs equal the masked model's up to float
reassociation.

What cannot be shrunk raises a ``ValueError`` naming the layer: a grouped or masked convolution,
the classifier's units, and model code whose path depends on a width. The last is a property of
the model's Python code, not of the trace: a residual block written ``if x.shape[-1] !=
self.features: x = project(x)`` takes its projection branch once the tied group feeding it is
narrower than ``features``, so the shrunk model would call a layer (and need variables) the full
model does not have; the error names that layer, the module whose code called it and the pruned
layers feeding that module (comparing the two branches' shapes, as Flax's ResNet example does,
keeps the path). :func:`traced_layer_costs` (``xaijax.models.costs``) counts parameters and FLOPs
from the variables and the traced output shapes, so on the shrunk model they are the shrunk ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from xaijax.models import LayerSpec, consumer_slice, discover_layer_specs
from xaijax.models.costs import call_shapes, flat_by_path, module_leaves, traced_layer_costs
from xaijax.models.discovery import layer_kind, scope_path
from xaijax.pruning.apply import Variables, _checked_unit_masks, _input_channel_mask

__all__ = ["Narrowed", "PathChangedError", "shrink_any", "traced_layer_costs"]


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


class PathChangedError(ValueError):
    """The shrunk model calls a layer the full model does not (its code depends on a width)."""

    def __init__(self, layer: str, caller: str, width: int | None):
        self.layer, self.caller, self.width = layer, caller, width
        seen = "" if width is None else f" when its input has {width} channels"
        super().__init__(
            f"the shrunk model calls layer {layer!r}, which the full model does not: the code of "
            f"module {caller!r} takes another path{seen} (e.g. it compares an input width with "
            "a hard-coded one)"
        )


class Narrowed(nn.Module):
    """The code of ``full`` (the unshrunk model) run on shrunk variables: each Conv / Dense of
    ``layers`` (module paths) runs at its kernel's width. Same variable names as ``full``; built
    by :func:`shrink_any`. ``widths`` (one per layer, as :func:`shrink_any` sets them) are the
    layers' output units when ``init`` creates variables, so ``init`` (and training, which checks
    variables against it) gets the narrow shapes; without them ``init`` creates the full model's
    variables. (The field is not called ``model``, so that wrappers sharing their scope with a
    ``model`` field, such as ``quantize_any``'s, can hold a Narrowed.)"""

    full: nn.Module
    layers: tuple[str, ...]
    widths: tuple[int, ...] = ()

    wrapped_field = "full"  # for ``xaijax.models.unwrap``: calls pass through to ``full``.

    def setup(self) -> None:
        nn.share_scope(self, self.full)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        layers = frozenset(self.layers)
        widths = dict(zip(self.layers, self.widths, strict=True)) if self.widths else {}
        input_widths: dict[str, int] = {}  # module path -> channels of its last input

        def intercept(next_fun, call_args, call_kwargs, context):
            module = context.module
            kind = layer_kind(module)
            name = scope_path(module)
            if context.method_name != "__call__" or not name:
                return next_fun(*call_args, **call_kwargs)  # not name: _narrow_call's copy.
            if module.is_initializing():
                if kind is None or widths.get(name, module.features) == module.features:
                    return next_fun(*call_args, **call_kwargs)
                # The layer at its narrow width, creating its variables in its own scope.
                narrow = module.clone(parent=module.scope, features=widths[name])
                return narrow(*call_args, **call_kwargs)
            if kind is None:
                if call_args and hasattr(call_args[0], "shape") and call_args[0].ndim:
                    input_widths[name] = int(call_args[0].shape[-1])
                return next_fun(*call_args, **call_kwargs)
            if name not in layers:
                caller = name.rsplit("/", 1)[0] if "/" in name else ""
                raise PathChangedError(name, caller, input_widths.get(caller))
            return _narrow_call(module, name, kind, call_args, call_kwargs)

        with nn.intercept_methods(intercept):
            return self.full(*args, **kwargs)


def _nested(flat: Mapping[str, Any]) -> dict[str, Any]:
    return traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()}, sep="/")


def _check_shrinkable(specs: Sequence[LayerSpec], checked: Mapping[str, np.ndarray]) -> None:
    """Raises for a removed classifier unit and for a layer left without units."""
    by_name = {spec.name: spec for spec in specs}
    for name, keep in checked.items():
        if by_name[name].is_classifier and not keep.all():
            raise ValueError(f"cannot shrink the classifier {name!r}: its units are the classes")
        if not keep.any():
            raise ValueError(f"unit mask of {name!r} removes every unit")


def _input_rows(
    specs: Sequence[LayerSpec], params: Mapping[str, np.ndarray], checked: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Consumer -> keep-mask over its kernel's input axis: the rows no pruned producer removes
    (each producer's channels at their place in the consumer's input)."""
    by_name = {spec.name: spec for spec in specs}
    rows: dict[str, np.ndarray] = {}
    for name, keep in checked.items():
        if keep.all():
            continue  # Nothing to slice in its consumers.
        spec = by_name[name]
        for index, consumer in enumerate(spec.consumers):
            kernel = params[f"{consumer}/kernel"]
            start, total = consumer_slice(spec, index, keep.size)
            try:
                kept = _input_channel_mask(kernel, by_name[consumer].kind, keep, start, total)
            except ValueError as err:
                raise ValueError(
                    f"cannot slice the input channels of layer {consumer!r} for layer {name!r}: "
                    f"{err} (its input joins {name!r}'s channels with others the specs do not "
                    "place: give consumer_slices)"
                ) from err
            rows[consumer] = kept & rows.get(consumer, True)
    return rows


def _slice_variables(
    specs: Sequence[LayerSpec], variables: Variables, checked: Mapping[str, np.ndarray]
) -> dict[str, Any]:
    _check_shrinkable(specs, checked)
    flat = {
        col: {k: np.asarray(v) for k, v in flat_by_path(tree).items()}
        for col, tree in variables.items()
    }
    params = flat["params"]
    rows = _input_rows(specs, params, checked)
    for spec in specs:
        key = f"{spec.name}/kernel"
        if spec.name in rows:
            kept = rows[spec.name]
            params[key] = params[key][..., kept, :] if spec.kind == "conv" else params[key][kept]
        if spec.name not in checked:
            continue
        keep = checked[spec.name]
        for leaf in module_leaves(params, spec.name):
            params[leaf] = params[leaf][..., keep]  # kernel [..., out], bias [out]
        if spec.bn is None:
            continue
        for col_flat in flat.values():
            for leaf in module_leaves(col_flat, spec.bn):
                if col_flat[leaf].shape[-1:] != keep.shape:
                    raise ValueError(
                        f"BatchNorm {spec.bn!r} of layer {spec.name!r}: {leaf!r} has shape "
                        f"{col_flat[leaf].shape}, not one entry per unit ({keep.size})"
                    )
                col_flat[leaf] = col_flat[leaf][..., keep]
    return {col: _nested(col_flat) for col, col_flat in flat.items()}


def _path_changed(
    err: PathChangedError, specs: Sequence[LayerSpec], checked: Mapping[str, np.ndarray]
) -> ValueError:
    """``err`` with the pruned layers whose channels reach the module that changed its path."""
    inside = f"{err.caller}/" if err.caller else ""
    feeding = sorted(
        spec.name
        for spec in specs
        if spec.name in checked
        and not checked[spec.name].all()
        and any(c.startswith(inside) and not spec.name.startswith(inside) for c in spec.consumers)
    )
    hint = (
        f"; layer(s) {feeding} feed it narrowed: keep their group whole (unit masks of all True)"
        if feeding
        else ""
    )
    return ValueError(f"{err}{hint}")


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
    flat_params = flat_by_path(variables["params"])
    missing = [s.name for s in specs if f"{s.name}/kernel" not in flat_params]
    if missing:
        raise ValueError(f"layer(s) {missing} have no kernel in variables['params']")
    checked = _checked_unit_masks(specs, variables["params"], unit_masks)
    narrow_variables = _slice_variables(specs, variables, checked)
    full = model.full if isinstance(model, Narrowed) else model  # Shrinking again: same code.
    narrow_params = flat_by_path(narrow_variables["params"])
    widths = tuple(int(narrow_params[f"{s.name}/kernel"].shape[-1]) for s in specs)
    narrow = Narrowed(full, tuple(spec.name for spec in specs), widths)
    try:
        call_shapes(
            narrow, narrow_variables, example_input, frozenset(narrow.layers), **apply_kwargs
        )
    except PathChangedError as err:
        raise _path_changed(err, specs, checked) from err
    return narrow, narrow_variables
