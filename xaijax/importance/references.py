"""DeepLIFT references (the input the contributions are measured against), by name.

* ``"zeros"``: one all-zero image shared by every example.
* ``"mean"``: the mean image of the data (accumulated in float64), shared.
* ``"blur"``: each input blurred by a Gaussian of ``blur_sigma`` pixels (per example; separable,
  taps ``exp(-x^2 / 2 sigma^2)`` normalized, radius ``max(1, ceil(3 sigma))``, edge padding).
* ``"samples"``: ``num_references`` examples of the data drawn without replacement with ``seed``
  (in index order), shared; contributions are averaged over them (DeepSHAP).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

REFERENCES = ("zeros", "mean", "blur", "samples")


def gaussian_blur(images: jax.Array, sigma: float) -> jax.Array:
    """Blur ``[B, H, W, C]`` images channel by channel with a separable Gaussian (edge padding)."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    taps = jnp.exp(-0.5 * (offsets / sigma) ** 2)
    taps = taps / taps.sum()
    padded = jnp.pad(images, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="edge")
    channels = images.shape[-1]

    def blur_axis(x, kernel_shape):
        kernel = jnp.tile(taps.reshape(*kernel_shape, 1, 1), (1, 1, 1, channels))
        return jax.lax.conv_general_dilated(
            x,
            kernel,
            window_strides=(1, 1),
            padding="VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=channels,
        )

    return blur_axis(blur_axis(padded, (-1, 1)), (1, -1))


def shared_references(
    reference: str, images: np.ndarray, num_references: int, seed: int
) -> np.ndarray | None:
    """References shared by every example, ``[K, H, W, C]`` (None for per-example ``"blur"``)."""
    if reference == "zeros":
        return np.zeros((1, *images.shape[1:]), np.float32)
    if reference == "mean":
        return images.mean(axis=0, keepdims=True, dtype=np.float64).astype(np.float32)
    if reference == "samples":
        rng = np.random.default_rng(seed)
        picks = rng.choice(images.shape[0], size=num_references, replace=False)
        return np.asarray(images[np.sort(picks)], np.float32)
    return None
