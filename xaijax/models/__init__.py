"""Model zoo: Flax linen networks whose prunable layers have stable names and adjustable widths."""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn

from xaijax.models.common import LayerKwargs, LayerSpec, count_params, layer_costs
from xaijax.models.lenet import LeNet5
from xaijax.models.resnet import ResNet
from xaijax.models.vgg import VGG, VGG16, VGG_SMALL

MODEL_NAMES = ("lenet5", "vgg_small", "vgg16", "resnet20", "resnet56")


def get_model(
    name: str,
    *,
    num_classes: int = 10,
    widths: Mapping[str, int] | None = None,
    layer_kwargs: LayerKwargs | None = None,
) -> nn.Module:
    """Build a model of the zoo by name; ``widths`` narrows layers, ``layer_kwargs`` injects ops."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    common = {"num_classes": num_classes, "widths": widths, "layer_kwargs": layer_kwargs}
    if name == "lenet5":
        return LeNet5(**common)
    if name == "vgg_small":
        return VGG(conv_plan=VGG_SMALL[0], hidden_features=VGG_SMALL[1], **common)
    if name == "vgg16":
        return VGG(conv_plan=VGG16[0], hidden_features=VGG16[1], **common)
    if name == "resnet20":
        return ResNet(blocks_per_stage=3, **common)
    if name == "resnet56":
        return ResNet(blocks_per_stage=9, **common)
    raise ValueError(f"unknown model {name!r}; choose one of {MODEL_NAMES}")


def layer_specs(model: nn.Module) -> tuple[LayerSpec, ...]:
    """The prunable layers of ``model`` in forward order (see ``LayerSpec``)."""
    return model.layer_specs()


__all__ = [
    "MODEL_NAMES",
    "VGG",
    "LayerKwargs",
    "LayerSpec",
    "LeNet5",
    "ResNet",
    "count_params",
    "get_model",
    "layer_costs",
    "layer_specs",
]
