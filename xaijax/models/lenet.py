"""LeNet-5 (LeCun et al., 1998) for 28x28 or 32x32 images."""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax

from xaijax.models import ops
from xaijax.models.common import (
    LayerKwargs,
    LayerSpec,
    check_layer_names,
    conv_extra_kwargs,
    layer_extra_kwargs,
    resolve_width,
)

LENET5_LAYERS = ("conv1", "conv2", "fc1", "fc2", "fc3")
LENET5_WIDTHS = {"conv1": 6, "conv2": 16, "fc1": 120, "fc2": 84}


class LeNet5(nn.Module):
    """conv1 5x5 SAME, relu, maxpool 2, conv2 5x5 VALID, relu, maxpool 2, fc1, fc2, fc3 (logits)."""

    num_classes: int = 10
    widths: Mapping[str, int] | None = None
    layer_kwargs: LayerKwargs | None = None

    def layer_specs(self) -> tuple[LayerSpec, ...]:
        chain = LENET5_LAYERS
        return tuple(
            LayerSpec(
                name=name,
                kind="conv" if name.startswith("conv") else "dense",
                bn=None,
                consumers=(chain[i + 1],) if i + 1 < len(chain) else (),
                tied_group=None,
                is_classifier=name == chain[-1],
            )
            for i, name in enumerate(chain)
        )

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # No train-mode-dependent layers.
        check_layer_names(self.widths, LENET5_LAYERS[:-1], "widths")
        check_layer_names(self.layer_kwargs, LENET5_LAYERS, "layer_kwargs")

        def width(name: str) -> int:
            return resolve_width(self.widths, name, LENET5_WIDTHS[name])

        def conv(name: str, padding: str) -> nn.Conv:
            extra = conv_extra_kwargs(self.layer_kwargs, name)
            return nn.Conv(width(name), (5, 5), padding=padding, name=name, **extra)

        def dense(name: str, features: int) -> nn.Dense:
            return nn.Dense(features, name=name, **layer_extra_kwargs(self.layer_kwargs, name))

        x = ops.max_pool(nn.relu(conv("conv1", "SAME")(x)), (2, 2))
        x = ops.max_pool(nn.relu(conv("conv2", "VALID")(x)), (2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(dense("fc1", width("fc1"))(x))
        x = nn.relu(dense("fc2", width("fc2"))(x))
        return dense("fc3", self.num_classes)(x)
