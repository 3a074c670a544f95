"""Bit streams: unsigned integers stored at ``bits`` bits each, and their unpacking in jax.

Value ``i`` occupies stream bits ``[i * bits, (i + 1) * bits)``, least significant bit first, and
stream bit ``j`` is bit ``j % 8`` of byte ``j // 8`` (numpy's ``bitorder="little"``). This is the
layout of :func:`xaijax.quantization.export.pack_bits` for the offset integers ``q + 2^(b-1) - 1``.
:func:`unpack_unsigned` is traceable with static ``bits`` and ``count``, so an exported program
can decode its own weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

MAX_BITS = 8


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an int in [1, {MAX_BITS}], got {bits!r}")
    return int(bits)


def packed_size(count: int, bits: int) -> int:
    """Bytes of a stream of ``count`` values at ``bits`` bits: ``ceil(count * bits / 8)``."""
    return -(-count * _check_bits(bits) // 8)


def pack_unsigned(values: np.ndarray, bits: int) -> np.ndarray:
    """The uint8 stream of the integers ``values`` (flattened), each in ``[0, 2^bits)``."""
    bits = _check_bits(bits)
    values = np.asarray(values).ravel()
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"only integers can be packed, got {values.dtype}")
    if values.size and (values.min() < 0 or values.max() >= 1 << bits):
        raise ValueError(f"values outside [0, {(1 << bits) - 1}] cannot be packed at {bits} bits")
    planes = np.unpackbits(values.astype(np.uint8)[:, None], axis=1, bitorder="little")
    return np.packbits(planes[:, :bits].ravel(), bitorder="little")


def unpack_unsigned(stream: jax.Array, bits: int, count: int) -> jax.Array:
    """int32[count]: the first ``count`` values of a stream written by :func:`pack_unsigned`."""
    bits = _check_bits(bits)
    if jnp.shape(stream) != (packed_size(count, bits),):
        raise ValueError(
            f"a stream of {count} values at {bits} bits has {packed_size(count, bits)} bytes, "
            f"got shape {jnp.shape(stream)}"
        )
    if count == 0:
        return jnp.zeros((0,), jnp.int32)
    shifts = jnp.arange(8, dtype=jnp.uint8)
    stream_bits = (jnp.asarray(stream, jnp.uint8)[:, None] >> shifts) & 1
    planes = stream_bits.reshape(-1)[: count * bits].reshape(count, bits).astype(jnp.int32)
    return jnp.sum(planes << jnp.arange(bits, dtype=jnp.int32), axis=1)
