"""Numerics shared by every quantization backend, the sensitivity models and the integer export.

Symmetric integer quantization of a kernel per output channel (the last axis of an HWIO conv
kernel or of an ``[in, out]`` Dense kernel). For ``b`` bits and channel ``c``

    scale_c = max_i |w_ic| / (2^(b-1) - 1),    q_ic = round(clip(w_ic / scale_c, +-(2^(b-1) - 1))),

so ``q`` takes at most ``2^b - 1`` values, the channel's largest weight is represented exactly and
``|w - q * scale| <= scale / 2``. An all-zero channel is scaled as if its maximum were 1 (as AQT
does), so it quantizes to zeros. Activations, when quantized, use the same numerics over the
contraction: per row of a Dense input (per example); for a conv, AQT quantizes per image patch
(per example and output position) and qwix per example (see ``qwix_backend``).
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

SUPPORTED_BITS = (2, 3, 4, 5, 6, 7, 8)
LayerKind = Literal["conv", "dense"]
LAYER_KINDS = ("conv", "dense")


def check_bits(bits: Any, what: str) -> int:
    """Return ``bits`` as an int if it is a supported weight width, else raise naming ``what``."""
    if (
        isinstance(bits, bool)
        or not isinstance(bits, int | np.integer)
        or bits not in SUPPORTED_BITS
    ):
        raise ValueError(
            f"{what}: bit width {bits!r} is not supported; choose one of {SUPPORTED_BITS}"
        )
    return int(bits)


def check_layer_bits(weight_bits: Any, activation_bits: Any) -> tuple[int, int | None]:
    """``(weight_bits, activation_bits)`` of a quantized layer after ``check_bits`` on each
    (``activation_bits`` None: float activations)."""
    weight_bits = check_bits(weight_bits, "weight_bits")
    if activation_bits is not None:
        activation_bits = check_bits(activation_bits, "activation_bits")
    return weight_bits, activation_bits


def check_kind(kind: Any) -> LayerKind:
    """Return ``kind`` if it is a layer kind a backend quantizes, else raise."""
    if kind not in LAYER_KINDS:
        raise ValueError(f"unknown layer kind {kind!r}; expected 'conv' or 'dense'")
    return kind


def quant_bound(bits: int) -> int:
    """Largest integer magnitude at ``bits`` bits: ``2^(bits-1) - 1``."""
    return 2 ** (bits - 1) - 1


def channel_scales(kernel: jax.Array, bits: int) -> jax.Array:
    """Per-output-channel ``max|w| / (2^(b-1) - 1)``, shape ``[out]`` (zero channel: max 1)."""
    abs_max = jnp.max(jnp.abs(kernel), axis=tuple(range(kernel.ndim - 1)))
    abs_max = jnp.where(abs_max == 0.0, 1.0, abs_max)
    return (abs_max / quant_bound(bits)).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames="bits")
def _quantize(kernel: jax.Array, bits: int) -> tuple[jax.Array, jax.Array]:
    scales = channel_scales(kernel, bits)
    bound = quant_bound(bits)
    # Multiply by the reciprocal, as AQT does, so both round the same ties the same way.
    q = jnp.round(jnp.clip(kernel * (1.0 / scales), -bound, bound))
    return q.astype(jnp.int8), scales


def quantize_kernel(kernel: jax.Array, bits: int) -> tuple[jax.Array, jax.Array]:
    """Integers ``q`` (int8, same shape as ``kernel``) and per-channel float32 scales."""
    return _quantize(jnp.asarray(kernel, jnp.float32), check_bits(bits, "quantize_kernel"))


def fake_quantize(kernel: jax.Array, bits: int) -> jax.Array:
    """``q * scale``: the kernel as the quantized layer sees it."""
    q, scales = quantize_kernel(kernel, bits)
    return q.astype(jnp.float32) * scales


def straight_through(kernel: jax.Array, bits: int) -> jax.Array:
    """``fake_quantize(kernel, bits)`` forward, identity backward (straight-through estimator)."""
    return kernel + lax.stop_gradient(fake_quantize(kernel, bits) - kernel)
