"""Argument checks of weight sharing: bit widths in ``[MIN_BITS, MAX_BITS]`` (a codebook has
``2^bits`` entries, ``CODEBOOK_SIZES``), finite values, and importance that is finite and
non-negative (values are checked when concrete, not while traced under ``jit``)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

MIN_BITS, MAX_BITS = 1, 8
CODEBOOK_SIZES = tuple(2**bits for bits in range(MIN_BITS, MAX_BITS + 1))


def _check_bits(bits: Any, what: str = "bits") -> int:
    """Return ``bits`` if it is an int in [1, 8], else raise naming the problem."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise TypeError(f"{what} must be an int in [{MIN_BITS}, {MAX_BITS}], got {bits!r}")
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"{what} must be in [{MIN_BITS}, {MAX_BITS}], got {bits}")
    return int(bits)


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_importance(importance: Any, shape: tuple[int, ...], what: str) -> None:
    """Shape must match; when the values are concrete they must be finite and >= 0."""
    if jnp.shape(importance) != shape:
        raise ValueError(f"{what} has shape {jnp.shape(importance)}, expected {shape}")
    if _is_concrete(importance):
        host = np.asarray(importance)
        if not np.all(np.isfinite(host)):
            raise ValueError(f"{what} must be finite")
        if np.any(host < 0):
            raise ValueError(f"{what} must be non-negative, got minimum {host.min()}")


def _check_values(values: Any) -> jax.Array:
    """``values`` as float32 after checking that they are a non-empty 1-D array of finite values
    (finiteness only when concrete)."""
    values = jnp.asarray(values, jnp.float32)
    if values.ndim != 1 or values.shape[0] == 0:
        raise ValueError(f"values must be a non-empty 1-D array, got shape {values.shape}")
    if _is_concrete(values) and not bool(jnp.all(jnp.isfinite(values))):
        raise ValueError("values must be finite")
    return values


def _check_max_iters(max_iters: Any) -> int:
    """``max_iters`` if it is an int >= 0, else raise."""
    if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 0:
        raise ValueError(f"max_iters must be a non-negative int, got {max_iters!r}")
    return max_iters


def _check_kmeans_inputs(
    values: Any, bits: Any, weights: Any
) -> tuple[int, jax.Array, jax.Array | None]:
    """(k, float32 values, float32 weights or None) after checking bits, shapes and signs."""
    k = 2 ** _check_bits(bits)
    values = _check_values(values)
    if weights is not None:
        weights = jnp.asarray(weights, jnp.float32)
        _check_importance(weights, values.shape, "weights")
    return k, values, weights
