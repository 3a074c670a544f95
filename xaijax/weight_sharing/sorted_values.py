"""The sorted form the 1-D k-means works on: values sorted once, compensated prefix sums, and the
midpoint boundaries that assign values to an ascending codebook.

Values are sorted as int32 keys (an order-preserving map of float32, XLA's fast sort path). A sum
over a range of sorted slots is a difference of two prefix sums ``P_e - P_s``; each prefix sum is
kept unevaluated as ``hi + lo`` (``lo`` holds what the float32 rounding of ``hi`` lost), so a range
sum is accurate relative to itself. Entry ``j`` of an ascending codebook takes the values ``x``
with ``m_{j-1} < x <= m_j``, where ``m_j`` is the midpoint between ``c_j`` and the next larger
entry.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


def _sort_key(values: jax.Array) -> jax.Array:
    """Order-preserving map float32 -> int32 (negative floats have their magnitude bits flipped)."""
    bits = jax.lax.bitcast_convert_type(values, jnp.int32)
    return jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)


def _from_sort_key(keys: jax.Array) -> jax.Array:
    """Inverse of ``_sort_key`` (the map is an involution on each sign half)."""
    bits = jnp.where(keys < 0, keys ^ jnp.int32(0x7FFFFFFF), keys)
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


class _Prefix(NamedTuple):
    """Exclusive prefix sums as unevaluated sums P[i] = hi[i] + lo[i], with P[0] = 0."""

    hi: jax.Array
    lo: jax.Array


def _prefix_sums(x: jax.Array) -> _Prefix:
    """Compensated prefix sums. With hi = cumsum(x) in float32, the telescoping identity

        P_i = hi_i + sum_{j <= i} (x_j - (hi_j - hi_{j-1}))

    is exact, and hi_j - hi_{j-1} is an exact float wherever consecutive prefix sums are within a
    factor of 2 (Sterbenz), so lo = cumsum of these small terms recovers what the rounding of hi
    lost, and a range sum P_e - P_s is accurate relative to itself rather than to |P|.
    """
    zero = jnp.zeros((1,), x.dtype)
    hi = jnp.concatenate([zero, jnp.cumsum(x)])
    lo = jnp.concatenate([zero, jnp.cumsum(x - jnp.diff(hi))])
    return _Prefix(hi, lo)


def _range_sums(prefix: _Prefix, starts: jax.Array, ends: jax.Array) -> jax.Array:
    """sum of x[starts[j]:ends[j]] for each j, accurate to float32 rounding of the result."""
    return (prefix.hi[ends] - prefix.hi[starts]) + (prefix.lo[ends] - prefix.lo[starts])


class _SortedData(NamedTuple):
    """Values sorted ascending with their weights; equal values share one accumulated weight."""

    values: jax.Array  # float32[n], ascending
    weights: jax.Array  # float32[n], total weight of each group of equal values, at its first slot
    cum_weight: _Prefix
    cum_moment: _Prefix  # prefix sums of weight * value
    group_start: jax.Array | None  # int32[n]: sorted slot of each original value; None if uniform


def _sort_data(values: jax.Array, weights: jax.Array | None) -> _SortedData:
    """Sort once. Weights follow their values without an argsort: each original value is found in
    the sorted array (``searchsorted``) and its weight is added at the first slot of its group of
    equal values, which no assignment boundary ever splits, so every segment sum is unchanged."""
    keys = _sort_key(values)
    sorted_keys = jnp.sort(keys)
    sorted_values = _from_sort_key(sorted_keys)
    n = values.shape[0]
    if weights is None:
        sorted_weights = jnp.ones((n,), jnp.float32)
        cum_weight = _Prefix(jnp.arange(n + 1, dtype=jnp.float32), jnp.zeros((n + 1,), jnp.float32))
        group_start = None
    else:
        group_start = jnp.searchsorted(sorted_keys, keys, side="left").astype(jnp.int32)
        sorted_weights = jnp.zeros((n,), jnp.float32).at[group_start].add(weights)
        cum_weight = _prefix_sums(sorted_weights)
    cum_moment = _prefix_sums(sorted_weights * sorted_values)
    return _SortedData(sorted_values, sorted_weights, cum_weight, cum_moment, group_start)


def _boundaries(codebook: jax.Array) -> jax.Array:
    """float32[k - 1]: m_j = (c_j + c_u) / 2 with c_u the smallest entry > c_j (+inf if none).

    For distinct entries m_j is the midpoint of c_j and c_{j+1}. Equal entries share the upper
    boundary of their group, so the lowest index of the group takes all its values (ties in
    distance go to the lower index, as argmin does) and the others stay empty.
    """
    k = codebook.shape[0]
    upper = jnp.searchsorted(codebook, codebook[:-1], side="right")
    next_larger = codebook[jnp.minimum(upper, k - 1)]
    return jnp.where(upper < k, 0.5 * (codebook[:-1] + next_larger), jnp.inf)


def nearest_indices(values: jax.Array, codebook: jax.Array) -> jax.Array:
    """Index of the nearest entry of an ascending ``codebook`` for each value (ties: lowest index).

    x goes to entry j iff m_{j-1} < x <= m_j (see ``_boundaries``).
    """
    return jnp.searchsorted(_boundaries(codebook), values, side="left").astype(jnp.int32)


def _boundary_slots(sorted_values: jax.Array, codebook: jax.Array) -> jax.Array:
    """int32[k - 1]: cluster j holds sorted slots [p_{j-1}, p_j), with p_{-1} = 0, p_{k-1} = n."""
    return jnp.searchsorted(sorted_values, _boundaries(codebook), side="right").astype(jnp.int32)


def _segments(slots: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    starts = jnp.concatenate([jnp.zeros((1,), jnp.int32), slots])
    ends = jnp.concatenate([slots, jnp.full((1,), n, jnp.int32)])
    return starts, ends
