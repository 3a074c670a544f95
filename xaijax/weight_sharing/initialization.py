"""Starting codebooks of the weighted 1-D k-means (``INITS``).

* ``"linear"``: k values evenly spaced between the smallest and largest value of positive weight;
* ``"density"``: the weighted quantiles ``(j + 1/2) / k``;
* ``"random"``: k values drawn with ``P(x_i) ~ s_i``;
* ``"kmeans++"`` (Arthur & Vassilvitskii 2007): each next value drawn with
  ``P(x_i) ~ s_i D(x_i)^2``, ``D`` the distance to the nearest value drawn so far.

A value of weight ``s_i = 0`` is never drawn.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from xaijax.weight_sharing.sorted_values import _sort_data, _SortedData
from xaijax.weight_sharing.validation import _check_kmeans_inputs

INITS = ("linear", "density", "random", "kmeans++")


def _support_range(data: _SortedData) -> tuple[jax.Array, jax.Array]:
    """Smallest and largest value of positive weight (all values if no weight is positive)."""
    positive = data.weights > 0
    has_support = jnp.any(positive)
    low = jnp.min(jnp.where(positive, data.values, jnp.inf))
    high = jnp.max(jnp.where(positive, data.values, -jnp.inf))
    return (
        jnp.where(has_support, low, data.values[0]),
        jnp.where(has_support, high, data.values[-1]),
    )


def _sample_index(key: jax.Array, cumulative: jax.Array) -> jax.Array:
    """Draw i with probability proportional to the i-th increment of an inclusive cumsum."""
    u = jax.random.uniform(key, dtype=jnp.float32) * cumulative[-1]
    index = jnp.searchsorted(cumulative, u, side="right")
    return jnp.clip(index, 0, cumulative.shape[0] - 1)


def _init_kmeans_plus_plus(data: _SortedData, k: int, key: jax.Array) -> jax.Array:
    """k-means++ (Arthur & Vassilvitskii 2007), weighted: draw c_j with P(x_i) ~ s_i D(x_i)^2.

    Falls back to P ~ s_i when every weighted value already coincides with a centroid.
    """
    values, weights = data.values, data.weights
    keys = jax.random.split(key, k)
    first = values[_sample_index(keys[0], jnp.cumsum(weights))]
    codebook = jnp.full((k,), first)

    def draw(j: int, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        codebook, dist2 = carry
        dist2 = jnp.minimum(dist2, jnp.square(values - codebook[j - 1]))
        mass = weights * dist2
        mass = jnp.where(jnp.sum(mass) > 0, mass, weights)
        return codebook.at[j].set(values[_sample_index(keys[j], jnp.cumsum(mass))]), dist2

    codebook, _ = jax.lax.fori_loop(1, k, draw, (codebook, jnp.full(values.shape, jnp.inf)))
    return codebook


def _initial_codebook(data: _SortedData, k: int, init: str, key: jax.Array) -> jax.Array:
    if init == "linear":
        low, high = _support_range(data)
        codebook = jnp.linspace(low, high, k, dtype=jnp.float32)
    elif init == "density":
        inclusive = data.cum_weight.hi[1:] + data.cum_weight.lo[1:]
        targets = (jnp.arange(k, dtype=jnp.float32) + 0.5) / k * inclusive[-1]
        slots = jnp.searchsorted(inclusive, targets, side="left")
        codebook = data.values[jnp.clip(slots, 0, data.values.shape[0] - 1)]
    elif init == "random":
        n = data.values.shape[0]
        total = jnp.sum(data.weights)
        probs = jnp.where(total > 0, data.weights / jnp.where(total > 0, total, 1.0), 1.0 / n)
        chosen = jax.random.choice(key, n, (k,), replace=n < k, p=probs)
        codebook = data.values[chosen]
    else:
        codebook = _init_kmeans_plus_plus(data, k, key)
    return jnp.sort(codebook.astype(jnp.float32))


@jax.jit(static_argnames=("k", "init"))
def _initial_codebook_jit(
    values: jax.Array, weights: jax.Array | None, key: jax.Array, *, k: int, init: str
) -> jax.Array:
    return _initial_codebook(_sort_data(values, weights), k, init, key)


def initial_codebook(
    values: chex.Array,
    bits: int,
    weights: chex.Array | None = None,
    *,
    init: str = "linear",
    key: jax.Array | None = None,
) -> jax.Array:
    """The ascending float32[2^bits] codebook ``kmeans_1d`` starts from (its iteration 0)."""
    k, values, weights = _check_kmeans_inputs(values, bits, weights)
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    key = jax.random.key(0) if key is None else key
    return _initial_codebook_jit(values, weights, key, k=k, init=init)
