"""Shared by the tests that compare xaijax with the numpy oracle of ``deeplift_oracle``: small
Flax networks with numpy-drawn weights, the same networks as oracle layer lists, and the
comparison helpers."""

from __future__ import annotations

import functools
from typing import Any

import deeplift_oracle as oracle
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xaijax.models import LayerSpec

ACTIVATION_FNS = {"relu": nn.relu, "tanh": jnp.tanh}
ATOL = 1e-5  # float32 xaijax against the float64 oracle, relative to max(1, |expected|)
MARGIN = 1e-2  # a wrong rule must move the expected values by more than this


def assert_close(actual: Any, expected: Any, atol: float = ATOL) -> float:
    """Assert ``|actual - expected| <= atol * max(1, |expected|)`` elementwise; returns the
    largest absolute error."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    error = np.abs(actual - expected)
    np.testing.assert_array_less(error, atol * np.maximum(1.0, np.abs(expected)) + 1e-12)
    return float(error.max(initial=0.0))


def assert_far(a: Any, b: Any, margin: float = MARGIN) -> None:
    """Assert that the pytrees ``a`` and ``b`` differ somewhere by more than ``margin``."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    gaps = jax.tree.map(lambda x, y: float(np.abs(np.asarray(x) - np.asarray(y)).max()), a, b)
    assert max(jax.tree.leaves(gaps)) > margin


def numpy_params(variables: Any) -> Any:
    """``variables["params"]`` as numpy arrays."""
    return jax.tree.map(np.asarray, variables["params"])


def _chain_specs(names: tuple[str, ...], kinds: tuple[str, ...]) -> tuple[LayerSpec, ...]:
    """Layer specs of a plain chain whose last layer is the classifier."""
    return tuple(
        LayerSpec(
            name=name,
            kind=kind,
            bn=None,
            consumers=names[i + 1 : i + 2],
            tied_group=None,
            is_classifier=i == len(names) - 1,
        )
        for i, (name, kind) in enumerate(zip(names, kinds, strict=True))
    )


class MLP(nn.Module):
    """``dense0 -> f -> dense1 -> f -> ... -> dense{L-1}`` (logits); ``features`` per layer."""

    features: tuple[int, ...]
    activation: str = "relu"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f"dense{i}" for i in range(len(self.features)))

    def layer_specs(self) -> tuple[LayerSpec, ...]:
        return _chain_specs(self.names, ("dense",) * len(self.names))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        for i, (name, width) in enumerate(zip(self.names, self.features, strict=True)):
            x = nn.Dense(width, name=name)(x)
            if i < len(self.features) - 1:
                x = ACTIVATION_FNS[self.activation](x)
        return x

    def oracle_layers(self, params: Any) -> list[oracle.Layer]:
        layers: list[oracle.Layer] = []
        for name in self.names:
            layers += [_dense(params[name]), oracle.Activation(self.activation)]
        return layers[:-1]


class SmallCNN(nn.Module):
    """conv1 3x3 SAME -> relu -> [max pool 2x2] -> conv2 3x3 VALID -> relu -> flatten -> fc1 ->
    relu -> fc2 (logits)."""

    pool: bool = True
    widths: tuple[int, int, int] = (4, 5, 6)
    num_classes: int = 3

    names = ("conv1", "conv2", "fc1", "fc2")

    def layer_specs(self) -> tuple[LayerSpec, ...]:
        return _chain_specs(self.names, ("conv", "conv", "dense", "dense"))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        x = nn.relu(nn.Conv(self.widths[0], (3, 3), padding="SAME", name="conv1")(x))
        if self.pool:
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(self.widths[1], (3, 3), padding="VALID", name="conv2")(x))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.widths[2], name="fc1")(x))
        return nn.Dense(self.num_classes, name="fc2")(x)

    def oracle_layers(self, params: Any) -> list[oracle.Layer]:
        relu = oracle.Activation("relu")
        pool = [oracle.MaxPool(2)] if self.pool else []
        return [
            _conv(params["conv1"], "SAME"),
            relu,
            *pool,
            _conv(params["conv2"], "VALID"),
            relu,
            oracle.Flatten(),
            _dense(params["fc1"]),
            relu,
            _dense(params["fc2"]),
        ]


def _dense(p: Any) -> oracle.Dense:
    return oracle.Dense(np.asarray(p["kernel"], np.float64), np.asarray(p["bias"], np.float64))


def _conv(p: Any, padding: str) -> oracle.Conv:
    kernel, bias = np.asarray(p["kernel"], np.float64), np.asarray(p["bias"], np.float64)
    return oracle.Conv(kernel, bias, padding)


def draw_variables(
    model: nn.Module,
    input_shape: tuple[int, ...],
    seed: int,
    bias_scale: float = 0.5,
    *,
    kernel_gain: float = 1.0,
    **init_kwargs: Any,
) -> dict[str, Any]:
    """Variables of ``model`` for inputs ``[B, *input_shape]`` drawn with numpy (no XLA
    compilation; the shapes come from ``jax.eval_shape``), float32: kernels
    ~ N(0, kernel_gain^2 / fan_in); BatchNorm scales 1 + bias_scale * N(0, 1) and variances
    1 + bias_scale * |N(0, 1)|; biases, offsets and means bias_scale * N(0, 1). Non-trivial biases
    and statistics make a wrong slice or mask show in the outputs, and make DeepLIFT differ from
    gradient x input. ``init_kwargs`` go to ``model.init`` (e.g. ``train=False``)."""
    init = functools.partial(model.init, **init_kwargs)
    shapes = jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, *input_shape)))
    generator = np.random.default_rng(seed)

    def draw(path: Any, spec: jax.ShapeDtypeStruct) -> jax.Array:
        name = jax.tree_util.keystr(path)
        noise = generator.standard_normal(spec.shape)
        if name.endswith("['kernel']"):
            values = kernel_gain * noise / np.sqrt(np.prod(spec.shape[:-1]))
        elif name.endswith("['var']"):
            values = 1.0 + bias_scale * np.abs(noise)
        elif name.endswith("['scale']"):
            values = 1.0 + bias_scale * noise
        else:
            values = bias_scale * noise
        return jnp.asarray(values, jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The cotangent that selects each example's target logit."""
    return np.eye(num_classes)[np.asarray(labels)]
