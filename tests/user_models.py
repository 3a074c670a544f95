"""Models written as a user would write them: plain Flax linen, no xaijax imports, no
``layer_specs``, ``widths`` or ``layer_kwargs``. ``tests/test_discovery.py`` finds their layers by
tracing and builds them by import path (``"user_models:SmallResNet"``)."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp


def residual_branch(x: jax.Array, features: int, strides: int, train: bool) -> jax.Array:
    """conv(3x3, strides)-bn-relu-conv(3x3)-bn without biases, in the calling module (its layers
    are named there: Conv_0, BatchNorm_0, Conv_1, BatchNorm_1)."""
    y = nn.Conv(features, (3, 3), strides=strides, use_bias=False)(x)
    y = nn.relu(nn.BatchNorm(use_running_average=not train)(y))
    y = nn.Conv(features, (3, 3), use_bias=False)(y)
    return nn.BatchNorm(use_running_average=not train)(y)


class ResidualBlock(nn.Module):
    """conv-bn-relu-conv-bn plus the input, projected by a 1x1 conv-bn when the shape changes."""

    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        y = residual_branch(x, self.features, self.strides, train)  # Conv_0 ... BatchNorm_1
        if x.shape[-1] != self.features or self.strides != 1:
            x = nn.Conv(self.features, (1, 1), strides=self.strides, use_bias=False)(x)  # Conv_2
            x = nn.BatchNorm(use_running_average=not train)(x)  # BatchNorm_2
        return nn.relu(x + y)


class SmallResNet(nn.Module):
    """A stem conv-bn-relu, an identity block at 8 channels, a projected block to 16, a global
    average and a Dense head."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Conv(8, (3, 3))(x)  # Conv_0
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))  # BatchNorm_0
        x = ResidualBlock(8)(x, train)  # ResidualBlock_0
        x = ResidualBlock(16, strides=2)(x, train)  # ResidualBlock_1
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes)(x)  # Dense_0


class ShapeComparingBlock(nn.Module):
    """Flax's ResNet-example block: the shortcut is projected only where its shape differs from
    the residual branch's (so narrowing both alike keeps the path)."""

    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        y = residual_branch(x, self.features, self.strides, train)  # Conv_0 ... BatchNorm_1
        if x.shape != y.shape:
            x = nn.Conv(self.features, (1, 1), strides=self.strides, name="proj")(x)
            x = nn.BatchNorm(use_running_average=not train, name="proj_bn")(x)
        return nn.relu(x + y)


class Stage(nn.Module):
    """``blocks`` blocks, the first with ``strides``."""

    features: int
    blocks: int
    strides: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for i in range(self.blocks):
            x = ShapeComparingBlock(self.features, self.strides if i == 0 else 1)(x, train)
        return x


class NestedResNet(nn.Module):
    """Layers two submodules deep (``Stage_0/ShapeComparingBlock_1/Conv_0``): a stem, a stage of
    two identity blocks at ``width``, a stage of one projected block at ``2 * width``, a global
    average and a Dense head."""

    num_classes: int = 10
    width: int = 8

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Conv(self.width, (3, 3), use_bias=False, name="stem")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, name="stem_bn")(x))
        x = Stage(self.width, blocks=2)(x, train)  # Stage_0
        x = Stage(2 * self.width, blocks=1, strides=2)(x, train)  # Stage_1
        return nn.Dense(self.num_classes, name="head")(jnp.mean(x, axis=(1, 2)))


class BranchyCNN(nn.Module):
    """A stem, two branches (a 3x3 conv; an average pool then a 1x1 conv) concatenated along
    the channels, a mixing conv, a 2x2 average pool, a flatten and two Dense layers."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Conv(8, (3, 3), name="stem")(x))
        a = nn.relu(nn.Conv(6, (3, 3), name="branch_a")(x))
        b = nn.avg_pool(x, (3, 3), strides=(1, 1), padding="SAME")
        b = nn.relu(nn.Conv(4, (1, 1), name="branch_b")(b))
        x = jnp.concatenate([a, b], axis=-1)
        x = nn.relu(nn.Conv(12, (3, 3), name="mix")(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(32, name="hidden")(x))
        return nn.Dense(self.num_classes, name="head")(x)


def _flatten(x: jax.Array) -> jax.Array:
    return x.reshape((x.shape[0], -1))


def sequential_cnn(num_classes: int = 10) -> nn.Sequential:
    """An ``nn.Sequential`` CNN: its layers are named ``layers_<index in the list>``."""
    return nn.Sequential(
        [
            nn.Conv(8, (3, 3)),  # layers_0
            nn.relu,
            functools.partial(nn.max_pool, window_shape=(2, 2), strides=(2, 2)),
            nn.Conv(16, (3, 3)),  # layers_3
            nn.BatchNorm(use_running_average=True),  # layers_4
            nn.relu,
            _flatten,
            nn.Dense(32),  # layers_7
            nn.relu,
            nn.Dense(num_classes),  # layers_9
        ]
    )
