"""Data augmentation inside the jitted train step: random flips and padded random crops."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def augment_batch(rng: Any, images: Any, *, flip: bool = True, pad: int = 0) -> Any:
    """Per-example random horizontal flip and random crop after zero-padding by ``pad`` pixels
    (jax; call inside jit). Output shape equals input shape."""
    batch, height, width, _ = images.shape
    flip_key, crop_key = jax.random.split(rng)
    if flip:
        flips = jax.random.bernoulli(flip_key, 0.5, (batch, 1, 1, 1))
        images = jnp.where(flips, images[:, :, ::-1, :], images)
    if pad > 0:
        padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        offsets = jax.random.randint(crop_key, (batch, 2), 0, 2 * pad + 1)

        def crop(image: Any, offset: Any) -> Any:
            return jax.lax.dynamic_slice(
                image, (offset[0], offset[1], 0), (height, width, image.shape[-1])
            )

        images = jax.vmap(crop)(padded, offsets)
    return images
