"""Model zoo: Flax linen networks whose prunable layers have stable names and adjustable widths.

A user's own linen model needs none of the zoo's hooks to be described: :func:`layer_specs_of`
returns its hand-written ``layer_specs()`` if it has one (the override), else the specs
:func:`discover_layer_specs` finds by tracing it. :func:`get_model` also builds a user's model
named by import path, ``"package.module:ClassName"``.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn

from xaijax.models.common import (
    LayerKwargs,
    LayerSpec,
    PrunableModel,
    consumer_slice,
    count_params,
    freeze_mapping,
    inference_kwargs,
    layer_variables,
    unwrap,
)
from xaijax.models.costs import layer_costs, traced_layer_costs
from xaijax.models.discovery import DiscoveryError, discover_layer_specs, layer_specs_of
from xaijax.models.lenet import LeNet5
from xaijax.models.resnet import ResNet
from xaijax.models.vgg import VGG, VGG16, VGG_SMALL

ModelConstructor = Callable[..., nn.Module]

#: name -> constructor ``(num_classes=, widths=, layer_kwargs=) -> model``; a model added to the
#: zoo is one module and one entry here (or :func:`register_model` from user code).
MODELS: dict[str, ModelConstructor] = {
    "lenet5": LeNet5,
    "vgg_small": functools.partial(VGG, conv_plan=VGG_SMALL[0], hidden_features=VGG_SMALL[1]),
    "vgg16": functools.partial(VGG, conv_plan=VGG16[0], hidden_features=VGG16[1]),
    "resnet20": functools.partial(ResNet, blocks_per_stage=3),
    "resnet56": functools.partial(ResNet, blocks_per_stage=9),
}
MODEL_NAMES = tuple(MODELS)  # The zoo's own models.


def register_model(name: str, constructor: ModelConstructor) -> None:
    """Make ``constructor`` buildable by name (``config.model.name``, :func:`get_model`); it must
    accept ``num_classes``, ``widths`` and ``layer_kwargs`` and build a :class:`PrunableModel`."""
    if name in MODELS and MODELS[name] is not constructor:
        raise ValueError(f"a model named {name!r} is already registered")
    MODELS[name] = constructor


def resolve_model(name: str) -> ModelConstructor:
    """The constructor ``name`` stands for: a key of :data:`MODELS`, or the import path
    ``"package.module:Attribute"`` of a user's model class (or a function building one)."""
    if name in MODELS:
        return MODELS[name]
    module_name, colon, attribute = name.partition(":")
    if not colon:
        raise ValueError(
            f"unknown model {name!r}; choose one of {tuple(MODELS)} or name your own model by "
            "import path, 'package.module:ClassName'"
        )
    if not module_name or not attribute:
        raise ValueError(f"model path {name!r} must be 'package.module:ClassName'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"model path {name!r}: cannot import {module_name!r} ({err})") from err
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"model path {name!r}: {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"model path {name!r} names a {type(target).__name__}, not a model class")
    return target


def _accepted_kwargs(
    name: str, constructor: ModelConstructor, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The arguments a user's constructor takes: ``num_classes`` only if it has that parameter;
    ``widths`` / ``layer_kwargs`` are an error if given to one without them."""
    try:
        parameters = inspect.signature(constructor).parameters
    except (TypeError, ValueError):  # No introspectable signature: pass only what was given.
        return {k: v for k, v in kwargs.items() if k == "num_classes" or v}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    accepted = {}
    for key, value in kwargs.items():
        if takes_any or key in parameters:
            accepted[key] = value
        elif key != "num_classes" and value:
            raise ValueError(
                f"model {name!r} has no {key!r} parameter, so it cannot be built with {key}"
            )
    try:
        inspect.signature(constructor).bind(**accepted)
    except TypeError as err:
        raise ValueError(f"model {name!r} cannot be built from {sorted(accepted)}: {err}") from err
    return accepted


def _hashable(value: Any) -> Any:
    """A constructor argument as a hashable value: mappings frozen, lists as tuples."""
    if isinstance(value, Mapping):
        return freeze_mapping({k: _hashable(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_hashable(v) for v in value)
    return value


def get_model(
    name: str,
    *,
    num_classes: int = 10,
    widths: Mapping[str, int] | None = None,
    layer_kwargs: LayerKwargs | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Build a model by name; ``widths`` narrows layers, ``layer_kwargs`` injects ops,
    ``model_kwargs`` are further constructor arguments (a user model's own fields, e.g.
    ``{"width": 16}``).

    ``name`` is a key of :data:`MODELS` or an import path ``"package.module:ClassName"`` (see
    :func:`resolve_model`). A model built by import path gets ``num_classes`` if its constructor
    has that parameter (else it is built as written), and ``widths`` / ``layer_kwargs`` only if
    given. Both are stored frozen, so models built with equal arguments are equal and hashable
    and share their compiled steps (see ``xaijax.training.shared_module``)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    constructor = resolve_model(name)
    kwargs = {
        "num_classes": num_classes,
        "widths": freeze_mapping(widths),
        "layer_kwargs": freeze_mapping(layer_kwargs),
    }
    if name not in MODELS:
        kwargs = _accepted_kwargs(name, constructor, kwargs)
    extra = dict(model_kwargs or {})
    clash = sorted(set(extra) & {"num_classes", "widths", "layer_kwargs"})
    if clash:
        raise ValueError(f"model_kwargs must not set {clash}; pass them as their own arguments")
    try:
        model = constructor(**kwargs, **{k: _hashable(v) for k, v in extra.items()})
    except TypeError as err:
        raise ValueError(f"model {name!r} cannot be built with {sorted(extra)}: {err}") from err
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {name!r} built a {type(model).__name__}, not a flax.linen Module")
    return model


def layer_specs(model: nn.Module) -> tuple[LayerSpec, ...]:
    """The prunable layers of ``model`` in forward order (see ``LayerSpec``), as the model writes
    them; :func:`layer_specs_of` also serves a model without ``layer_specs()`` by discovery."""
    return model.layer_specs()


__all__ = [
    "MODELS",
    "MODEL_NAMES",
    "VGG",
    "DiscoveryError",
    "LayerKwargs",
    "LayerSpec",
    "LeNet5",
    "PrunableModel",
    "ResNet",
    "consumer_slice",
    "count_params",
    "discover_layer_specs",
    "get_model",
    "inference_kwargs",
    "layer_costs",
    "layer_specs",
    "layer_specs_of",
    "layer_variables",
    "register_model",
    "resolve_model",
    "traced_layer_costs",
    "unwrap",
]
