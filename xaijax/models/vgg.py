"""VGG-style networks with BatchNorm: a small one for 28x28 inputs and VGG-16 for 32x32."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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

POOL = "M"
# Conv widths with "M" marking a 2x2 max-pool, then the hidden Dense widths.
VGG_SMALL = ((32, 32, POOL, 64, 64, POOL), (256,))
VGG16 = (
    (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512, POOL),
    (512,),
)


class VGG(nn.Module):
    """3x3 conv-BatchNorm-relu blocks with max-pools, then Dense-relu layers and a classifier.

    Layers are named ``conv1..convN`` (BatchNorm ``conv{k}_bn``) and ``fc1..fcM``; ``fcM`` is the
    classifier.
    """

    conv_plan: Sequence[int | str] = VGG_SMALL[0]
    hidden_features: Sequence[int] = VGG_SMALL[1]
    num_classes: int = 10
    widths: Mapping[str, int] | None = None
    layer_kwargs: LayerKwargs | None = None

    def conv_names(self) -> tuple[str, ...]:
        n_convs = sum(1 for item in self.conv_plan if item != POOL)
        return tuple(f"conv{k}" for k in range(1, n_convs + 1))

    def dense_names(self) -> tuple[str, ...]:
        return tuple(f"fc{k}" for k in range(1, len(self.hidden_features) + 2))

    def layer_specs(self) -> tuple[LayerSpec, ...]:
        chain = self.conv_names() + self.dense_names()
        return tuple(
            LayerSpec(
                name=name,
                kind="conv" if name.startswith("conv") else "dense",
                bn=f"{name}_bn" if name.startswith("conv") else None,
                consumers=(chain[i + 1],) if i + 1 < len(chain) else (),
                tied_group=None,
                is_classifier=i == len(chain) - 1,
            )
            for i, name in enumerate(chain)
        )

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        conv_names, dense_names = self.conv_names(), self.dense_names()
        check_layer_names(self.widths, conv_names + dense_names[:-1], "widths")
        check_layer_names(self.layer_kwargs, conv_names + dense_names, "layer_kwargs")
        names = iter(conv_names)
        for item in self.conv_plan:
            if item == POOL:
                x = ops.max_pool(x, (2, 2))
                continue
            name = next(names)
            extra = conv_extra_kwargs(self.layer_kwargs, name)
            x = nn.Conv(resolve_width(self.widths, name, int(item)), (3, 3), name=name, **extra)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f"{name}_bn")(x)
            x = nn.relu(x)
        x = x.reshape((x.shape[0], -1))
        for name, default in zip(dense_names[:-1], self.hidden_features, strict=True):
            extra = layer_extra_kwargs(self.layer_kwargs, name)
            x = nn.relu(nn.Dense(resolve_width(self.widths, name, default), name=name, **extra)(x))
        classifier = dense_names[-1]
        extra = layer_extra_kwargs(self.layer_kwargs, classifier)
        return nn.Dense(self.num_classes, name=classifier, **extra)(x)
