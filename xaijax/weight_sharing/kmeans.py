"""Weighted 1-D k-means (Lloyd) with k = 2^bits centroids: the codebook ``c`` and assignment
``a`` minimise

    J(c, a) = sum_i s_i (x_i - c[a_i])^2,   s_i >= 0,

alternating ``a_i`` = the nearest centroid and ``c_j`` = the weighted mean of its cluster (a cluster
of zero weight keeps its centroid).

The 1-D k-means sorts the values once (an int32 sort on order-preserving keys, XLA's fast path),
keeps compensated prefix sums of the weights and weighted values, and then each Lloyd iteration
costs O(k log n): the assignment is fixed by the k - 1 midpoints between sorted centroids
(``searchsorted``) and each centroid update is a difference of two prefix sums.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from xaijax.weight_sharing.initialization import INITS, _initial_codebook
from xaijax.weight_sharing.sorted_values import (
    _boundary_slots,
    _range_sums,
    _segments,
    _sort_data,
    _SortedData,
    nearest_indices,
)
from xaijax.weight_sharing.validation import _check_kmeans_inputs, _check_max_iters


class KMeansResult(NamedTuple):
    """Result of ``kmeans_1d``.

    codebook: float32[k], ascending.
    indices: int32[n], ``codebook[indices]`` is each value's nearest centroid.
    objective: float32 scalar, J = sum_i s_i (x_i - codebook[indices_i])^2.
    num_iters: int32 scalar, Lloyd iterations run (< max_iters when assignments became stable).
    objective_history: float32[max_iters + 1] with ``track_objective``, else None. Entry t is J
        after t iterations (entry 0: initial codebook, nearest assignment); entries after
        ``num_iters`` repeat the last value.
    """

    codebook: jax.Array
    indices: jax.Array
    objective: jax.Array
    num_iters: jax.Array
    objective_history: jax.Array | None


def _update_codebook(data: _SortedData, codebook: jax.Array, slots: jax.Array) -> jax.Array:
    """c_j <- sum_{i in j} s_i x_i / sum_{i in j} s_i; a cluster of zero weight keeps c_j."""
    starts, ends = _segments(slots, data.values.shape[0])
    weight = _range_sums(data.cum_weight, starts, ends)
    moment = _range_sums(data.cum_moment, starts, ends)
    has_weight = weight > 0
    return jnp.where(has_weight, moment / jnp.where(has_weight, weight, 1.0), codebook)


def _sorted_objective(data: _SortedData, codebook: jax.Array, slots: jax.Array) -> jax.Array:
    n = data.values.shape[0]
    labels = jnp.cumsum(jnp.zeros((n,), jnp.int32).at[slots].add(1, mode="drop"))
    return jnp.sum(data.weights * jnp.square(data.values - codebook[labels]))


def _lloyd(
    data: _SortedData, codebook: jax.Array, max_iters: jax.Array, history_length: int | None
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
    """Lloyd iterations until the boundary slots (hence all assignments) stop changing."""
    slots = _boundary_slots(data.values, codebook)
    history = None
    if history_length is not None:
        history = jnp.zeros((history_length,), jnp.float32)
        history = history.at[0].set(_sorted_objective(data, codebook, slots))

    def not_done(state: tuple) -> jax.Array:
        _, _, step, changed, _ = state
        return (step < max_iters) & changed

    def step_fn(state: tuple) -> tuple:
        codebook, slots, step, _, history = state
        # An empty duplicate keeps its value while its group's first entry moves: re-sort.
        codebook = jnp.sort(_update_codebook(data, codebook, slots))
        new_slots = _boundary_slots(data.values, codebook)
        if history is not None:
            history = history.at[step + 1].set(_sorted_objective(data, codebook, new_slots))
        return codebook, new_slots, step + 1, jnp.any(new_slots != slots), history

    state = (codebook, slots, jnp.int32(0), jnp.bool_(max_iters > 0), history)
    codebook, slots, steps, _, history = jax.lax.while_loop(not_done, step_fn, state)
    if history is not None:
        history = jnp.where(jnp.arange(history_length) > steps, history[steps], history)
    return codebook, slots, steps, history


def _kmeans_1d_impl(
    values: jax.Array,
    weights: jax.Array | None,
    init_codebook: jax.Array | None,
    key: jax.Array,
    max_iters: jax.Array,
    *,
    k: int,
    init: str,
    history_length: int | None,
) -> KMeansResult:
    data = _sort_data(values, weights)
    if init_codebook is None:
        init_codebook = _initial_codebook(data, k, init, key)
    else:
        init_codebook = jnp.sort(init_codebook)
    codebook, slots, steps, history = _lloyd(data, init_codebook, max_iters, history_length)
    if data.group_start is None:
        indices = nearest_indices(values, codebook)
    else:
        n = values.shape[0]
        sorted_labels = jnp.cumsum(jnp.zeros((n,), jnp.int32).at[slots].add(1, mode="drop"))
        indices = sorted_labels[data.group_start]
    residual = jnp.square(values - codebook[indices])
    objective = jnp.sum(residual if weights is None else weights * residual)
    return KMeansResult(codebook, indices, objective, steps, history)


_kmeans_1d_jit = jax.jit(_kmeans_1d_impl, static_argnames=("k", "init", "history_length"))


def _check_init(init: Any, k: int) -> tuple[str, jax.Array | None]:
    if isinstance(init, str):
        if init not in INITS:
            raise ValueError(
                f"init must be one of {INITS} or an array of {k} centroids, got {init!r}"
            )
        return init, None
    codebook = jnp.asarray(init, jnp.float32)
    if codebook.shape != (k,):
        raise ValueError(f"an explicit init codebook must have shape ({k},), got {codebook.shape}")
    return "explicit", codebook


def _check_iterations(
    init: Any, k: int, max_iters: Any, key: jax.Array | None
) -> tuple[str, jax.Array | None, int, jax.Array]:
    """(init name, explicit codebook or None, max_iters, key) of an iterative clustering of
    ``k`` entries after checking ``init`` and ``max_iters``; ``key`` defaults to
    ``jax.random.key(0)``."""
    init_name, init_codebook = _check_init(init, k)
    key = jax.random.key(0) if key is None else key
    return init_name, init_codebook, _check_max_iters(max_iters), key


def kmeans_1d(
    values: chex.Array,
    bits: int,
    weights: chex.Array | None = None,
    *,
    init: str | chex.Array = "linear",
    max_iters: int = 30,
    key: jax.Array | None = None,
    track_objective: bool = False,
) -> KMeansResult:
    """Weighted 1-D k-means (Lloyd) with k = 2^bits centroids, jit-compiled.

    Minimises J = sum_i s_i (x_i - c[a_i])^2 over the codebook c and assignment a. Stops when no
    assignment changes or after ``max_iters`` iterations. A cluster with zero total weight keeps its
    centroid; a value with s_i = 0 never moves a centroid and does not enter the initialisation.

    Args:
      values: float32[n] finite values.
      bits: 1..8; k = 2^bits.
      weights: float32[n] importance s_i >= 0, or None for plain k-means (s_i = 1).
      init: "linear" (evenly spaced between the smallest and largest weighted value), "density"
        (weighted quantiles (j + 1/2) / k), "random" (k values drawn with P ~ s_i), "kmeans++", or
        an explicit float32[k] codebook.
      max_iters: maximum number of Lloyd iterations (>= 0).
      key: PRNG key for "random" and "kmeans++" (default ``jax.random.key(0)``).
      track_objective: also return J after every iteration (one O(n) pass per iteration).
    """
    k, values, weights = _check_kmeans_inputs(values, bits, weights)
    init_name, init_codebook, max_iters, key = _check_iterations(init, k, max_iters, key)
    return _kmeans_1d_jit(
        values,
        weights,
        init_codebook,
        key,
        jnp.int32(max_iters),
        k=k,
        init=init_name,
        history_length=max_iters + 1 if track_objective else None,
    )
