"""Model zoo: Flax linen networks whose prunable layers have stable names and adjustable widths."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import flax.linen as nn

from xaijax.models.common import (
    LayerKwargs,
    LayerSpec,
    PrunableModel,
    count_params,
    freeze_mapping,
    layer_costs,
)
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


def get_model(
    name: str,
    *,
    num_classes: int = 10,
    widths: Mapping[str, int] | None = None,
    layer_kwargs: LayerKwargs | None = None,
) -> nn.Module:
    """Build a registered model by name; ``widths`` narrows layers, ``layer_kwargs`` injects ops.

    Both are stored frozen, so models built with equal arguments are equal and hashable and share
    their compiled steps (see ``xaijax.training.shared_module``)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {tuple(MODELS)}")
    return MODELS[name](
        num_classes=num_classes,
        widths=freeze_mapping(widths),
        layer_kwargs=freeze_mapping(layer_kwargs),
    )


def layer_specs(model: nn.Module) -> tuple[LayerSpec, ...]:
    """The prunable layers of ``model`` in forward order (see ``LayerSpec``)."""
    return model.layer_specs()


__all__ = [
    "MODELS",
    "MODEL_NAMES",
    "VGG",
    "LayerKwargs",
    "LayerSpec",
    "LeNet5",
    "PrunableModel",
    "ResNet",
    "count_params",
    "get_model",
    "layer_costs",
    "layer_specs",
    "register_model",
]
