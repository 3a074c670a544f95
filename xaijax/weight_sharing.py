"""Weight sharing: importance-weighted 1-D k-means per layer, shared-weight fine-tuning, sizes.

Each clustered layer (a Dense or Conv ``kernel``) is stored as a codebook ``c`` (float32[k],
k = 2^bits) plus one integer index per weight; the weight is ``c[index]``. Pruned weights carry the
index ``MASKED`` (-1) and decode to exactly zero, so pruning and sharing compose (Deep Compression,
Han et al. 2016). The codebook minimises the importance-weighted within-cluster error

    J(c, a) = sum_i s_i (w_i - c[a_i])^2,   s_i >= 0,

so a weight with importance 0 is assigned to its nearest centroid but never moves one.

The 1-D k-means sorts the values once (an int32 sort on order-preserving keys, XLA's fast path),
keeps compensated prefix sums of the weights and weighted values, and then each Lloyd iteration
costs O(k log n): the assignment is fixed by the k - 1 midpoints between sorted centroids
(``searchsorted``) and each centroid update is a difference of two prefix sums.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

PyTree = Any
MASKED = -1
"""Index of a pruned weight: it decodes to exactly zero and takes no part in clustering."""

INITS = ("linear", "density", "random", "kmeans++")
MIN_BITS, MAX_BITS = 1, 8
CODEBOOK_SIZES = tuple(2**bits for bits in range(MIN_BITS, MAX_BITS + 1))
FLOAT32_BITS = 32


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# 1-D weighted k-means
# ----------------------------------------------------------------------------------------------


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


@jax.jit(static_argnames=("k", "init"))
def _initial_codebook_jit(
    values: jax.Array, weights: jax.Array | None, key: jax.Array, *, k: int, init: str
) -> jax.Array:
    return _initial_codebook(_sort_data(values, weights), k, init, key)


def _check_kmeans_inputs(
    values: Any, bits: Any, weights: Any
) -> tuple[int, jax.Array, jax.Array | None]:
    """(k, float32 values, float32 weights or None) after checking bits, shapes and signs."""
    k = 2 ** _check_bits(bits)
    values = jnp.asarray(values, jnp.float32)
    if values.ndim != 1 or values.shape[0] == 0:
        raise ValueError(f"values must be a non-empty 1-D array, got shape {values.shape}")
    if _is_concrete(values) and not bool(jnp.all(jnp.isfinite(values))):
        raise ValueError("values must be finite")
    if weights is not None:
        weights = jnp.asarray(weights, jnp.float32)
        _check_importance(weights, values.shape, "weights")
    return k, values, weights


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
    init_name, init_codebook = _check_init(init, k)
    if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 0:
        raise ValueError(f"max_iters must be a non-negative int, got {max_iters!r}")
    key = jax.random.key(0) if key is None else key
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


# ----------------------------------------------------------------------------------------------
# Layers of a param pytree
# ----------------------------------------------------------------------------------------------


class SharedLayer(NamedTuple):
    """One weight-shared layer: ``kernel = codebook[indices]``, and 0 where indices == MASKED.

    codebook: float32[k], k = 2^bits (ascending after clustering; fine-tuning may reorder it).
    indices: int32 array of the kernel's shape, in [0, k) or MASKED.
    """

    codebook: jax.Array
    indices: jax.Array

    @property
    def bits(self) -> int:
        return int(math.log2(self.codebook.shape[0]))


SharedWeights = dict[str, SharedLayer]
"""Layer name (the kernel's parent path joined by '/', e.g. 'conv1') -> its SharedLayer."""


def _key_name(entry: Any) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(entry, attribute):
            return str(getattr(entry, attribute))
    return str(entry)


def _kernel_layer_name(path: Sequence[Any]) -> str | None:
    """'a/b' for a leaf at path (..., 'a', 'b', 'kernel'); None if the leaf is not a kernel."""
    names = [_key_name(entry) for entry in path]
    if len(names) < 2 or names[-1] != "kernel":
        return None
    return "/".join(names[:-1])


def kernel_leaves(tree: PyTree) -> dict[str, Any]:
    """All leaves named 'kernel' (Dense and Conv weights), keyed by layer name, in tree order."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    named = ((_kernel_layer_name(path), leaf) for path, leaf in leaves)
    return {name: leaf for name, leaf in named if name is not None}


def _map_kernels(fn: Callable[[str, Any], Any], tree: PyTree, names: Mapping[str, Any]) -> PyTree:
    """Replace each kernel leaf whose layer is in ``names`` by fn(layer_name, leaf)."""

    def visit(path: Sequence[Any], leaf: Any) -> Any:
        name = _kernel_layer_name(path)
        return fn(name, leaf) if name in names else leaf

    return jax.tree_util.tree_map_with_path(visit, tree)


def _layer_bits(bits: int | Mapping[str, int], layers: Sequence[str]) -> dict[str, int]:
    if isinstance(bits, Mapping):
        unknown = sorted(set(bits) - set(layers))
        if unknown:
            raise ValueError(f"bits names unknown layers {unknown}; kernels are {list(layers)}")
        return {name: _check_bits(b, f"bits[{name!r}]") for name, b in bits.items()}
    checked = _check_bits(bits)
    return {name: checked for name in layers}


def _kernels_like(
    tree: PyTree | None, kernels: Mapping[str, Any], names: Sequence[str], what: str
) -> dict[str, Any]:
    """The kernel leaves of ``tree`` for ``names``, checked against the kernels' shapes."""
    if tree is None:
        return {}
    leaves = kernel_leaves(tree)
    for name in names:
        if name not in leaves:
            raise ValueError(f"{what} has no kernel entry for layer {name!r}")
        if jnp.shape(leaves[name]) != jnp.shape(kernels[name]):
            raise ValueError(
                f"{what}[{name!r}] has shape {jnp.shape(leaves[name])}, "
                f"expected {jnp.shape(kernels[name])}"
            )
    return {name: leaves[name] for name in names}


def cluster_params(
    params: PyTree,
    bits: int | Mapping[str, int],
    importance: PyTree | None = None,
    mask: PyTree | None = None,
    *,
    init: str = "linear",
    max_iters: int = 30,
    key: jax.Array | None = None,
) -> SharedWeights:
    """Cluster every kernel named in ``bits`` by importance-weighted 1-D k-means.

    Args:
      params: a Flax params pytree; its 'kernel' leaves are the clustered layers.
      bits: one bit width for all kernels, or layer name -> bits (layers left out stay float32).
      importance: pytree with a kernel leaf s >= 0 for each clustered layer (e.g. DeepLIFT weight
        contributions or |w|); None clusters by plain k-means.
      mask: pytree with a 0/1 kernel leaf per clustered layer; 0 marks a pruned weight, which gets
        the index MASKED and weight 0 in the clustering.
      init, max_iters, key: as in ``kmeans_1d`` (each layer gets ``fold_in(key, layer_number)``).
    """
    kernels = kernel_leaves(params)
    if not kernels:
        raise ValueError("params has no leaves named 'kernel' to cluster")
    layer_bits = _layer_bits(bits, list(kernels))
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    names = [name for name in kernels if name in layer_bits]
    scores = _kernels_like(importance, kernels, names, "importance")
    keeps = {
        name: jnp.asarray(leaf) != 0
        for name, leaf in _kernels_like(mask, kernels, names, "mask").items()
    }
    for name, leaf in scores.items():
        _check_importance(leaf, jnp.shape(kernels[name]), f"importance[{name!r}]")
    for name in names:
        if _is_concrete(kernels[name]) and not np.all(np.isfinite(np.asarray(kernels[name]))):
            raise ValueError(f"kernel {name!r} has non-finite values")
    key = jax.random.key(0) if key is None else key
    shared: SharedWeights = {}
    for number, (name, kernel) in enumerate(kernels.items()):
        if name not in layer_bits:
            continue
        shape = jnp.shape(kernel)
        weights = None
        keep = keeps.get(name)
        if keep is not None:
            weights = keep.astype(jnp.float32)
        if name in scores:
            layer_scores = jnp.asarray(scores[name], jnp.float32)
            weights = layer_scores if weights is None else weights * layer_scores
        result = kmeans_1d(
            jnp.ravel(kernel),
            layer_bits[name],
            None if weights is None else jnp.ravel(weights),
            init=init,
            max_iters=max_iters,
            key=jax.random.fold_in(key, number),
        )
        indices = result.indices.reshape(shape)
        if keep is not None:
            indices = jnp.where(keep, indices, MASKED)
        shared[name] = SharedLayer(result.codebook, indices)
    return shared


def encode(
    params: PyTree, codebooks: Mapping[str, chex.Array], mask: PyTree | None = None
) -> SharedWeights:
    """Assign each weight of each named kernel to its nearest codebook entry (MASKED where mask is
    0). Codebooks are sorted first, so the returned indices refer to ascending codebooks."""
    kernels = kernel_leaves(params)
    unknown = sorted(set(codebooks) - set(kernels))
    if unknown:
        raise ValueError(f"no kernel for layers {unknown}; kernels are {list(kernels)}")
    sorted_codebooks = {}
    for name, codebook in codebooks.items():
        codebook = jnp.sort(jnp.asarray(codebook, jnp.float32))
        if codebook.ndim != 1 or codebook.shape[0] not in CODEBOOK_SIZES:
            raise ValueError(
                f"codebook[{name!r}] must be 1-D with 2^bits entries, bits in "
                f"[{MIN_BITS}, {MAX_BITS}]; got shape {codebook.shape}"
            )
        sorted_codebooks[name] = codebook
    masks = _kernels_like(mask, kernels, list(codebooks), "mask")
    shared: SharedWeights = {}
    for name, codebook in sorted_codebooks.items():
        indices = nearest_indices(jnp.asarray(kernels[name], jnp.float32), codebook)
        if name in masks:
            indices = jnp.where(jnp.asarray(masks[name]) != 0, indices, MASKED)
        shared[name] = SharedLayer(codebook, indices)
    return shared


def _decode_layer(layer: SharedLayer, dtype: Any) -> jax.Array:
    values = layer.codebook[jnp.maximum(layer.indices, 0)]
    return jnp.where(layer.indices == MASKED, 0.0, values).astype(dtype)


def decode(params: PyTree, shared: SharedWeights) -> PyTree:
    """params with each shared kernel replaced by codebook[indices] (exact zeros where MASKED)."""
    kernels = kernel_leaves(params)
    for name, layer in shared.items():
        if name not in kernels:
            raise ValueError(f"no kernel for shared layer {name!r}")
        if jnp.shape(kernels[name]) != layer.indices.shape:
            raise ValueError(
                f"kernel {name!r} has shape {jnp.shape(kernels[name])}, "
                f"indices have {layer.indices.shape}"
            )
    return _map_kernels(lambda name, leaf: _decode_layer(shared[name], leaf.dtype), params, shared)


# ----------------------------------------------------------------------------------------------
# Shared-weight fine-tuning
# ----------------------------------------------------------------------------------------------


def _cluster_ids(indices: jax.Array, k: int) -> jax.Array:
    """Flat segment ids with MASKED sent to an extra segment k that is dropped afterwards."""
    flat = jnp.ravel(indices)
    return jnp.where(flat == MASKED, k, flat)


def _cluster_sums(values: jax.Array, indices: jax.Array, k: int) -> jax.Array:
    """float32[k]: sum of the values of each cluster's members (MASKED members left out)."""
    return jax.ops.segment_sum(jnp.ravel(values), _cluster_ids(indices, k), num_segments=k + 1)[:k]


class SharedGradientsState(NamedTuple):
    """Cluster indices per shared layer, carried in the optimizer state (not baked into the jit)."""

    indices: dict[str, jax.Array]


def shared_gradients(shared: SharedWeights) -> optax.GradientTransformation:
    """Tie the weights of each cluster: g_i <- sum_{j : a_j = a_i} g_j, and 0 for MASKED weights.

    Chain it before an element-wise optimizer (SGD, momentum, Adam, AdamW):
    ``optax.chain(shared_gradients(shared), optax.adam(lr))``. Members of a cluster then receive
    identical updates and stay equal, so params that start as ``decode(params, shared)`` stay on
    their (moving) codebooks; with SGD each centroid moves by -lr times the sum of its members'
    gradients (Deep Compression). Layers not in ``shared`` are left untouched.
    """
    sizes = {name: int(layer.codebook.shape[0]) for name, layer in shared.items()}

    def init_fn(params: PyTree) -> SharedGradientsState:
        kernels = kernel_leaves(params)
        missing = sorted(set(sizes) - set(kernels))
        if missing:
            raise ValueError(f"params have no kernel for shared layers {missing}")
        return SharedGradientsState({name: jnp.asarray(shared[name].indices) for name in sizes})

    def update_fn(
        updates: PyTree, state: SharedGradientsState, params: PyTree | None = None
    ) -> tuple[PyTree, SharedGradientsState]:
        del params

        def tie(name: str, gradient: jax.Array) -> jax.Array:
            indices = state.indices[name]
            sums = _cluster_sums(gradient, indices, sizes[name])
            tied = jnp.where(indices == MASKED, 0.0, sums[jnp.maximum(indices, 0)])
            return tied.astype(gradient.dtype)

        return _map_kernels(tie, updates, sizes), state

    return optax.GradientTransformation(init_fn, update_fn)


def extract_codebooks(params: PyTree, shared: SharedWeights) -> SharedWeights:
    """Read the codebooks back from (fine-tuned) params, keeping the indices.

    Entry j becomes the common value of its members when they are all equal (exact), else their
    mean; an entry with no members keeps its old value.
    """
    kernels = kernel_leaves(params)
    updated: SharedWeights = {}
    for name, layer in shared.items():
        k = layer.codebook.shape[0]
        values = jnp.ravel(jnp.asarray(kernels[name], jnp.float32))
        ids = _cluster_ids(layer.indices, k)
        count = jax.ops.segment_sum(jnp.ones_like(values), ids, num_segments=k + 1)[:k]
        total = _cluster_sums(values, layer.indices, k)
        high = jax.ops.segment_max(values, ids, num_segments=k + 1)[:k]
        low = jax.ops.segment_min(values, ids, num_segments=k + 1)[:k]
        mean = jnp.where(high == low, high, total / jnp.maximum(count, 1.0))
        updated[name] = SharedLayer(jnp.where(count > 0, mean, layer.codebook), layer.indices)
    return updated


def snap_to_codebooks(params: PyTree, shared: SharedWeights) -> PyTree:
    """Put every shared weight exactly back on its cluster's value (e.g. after weight decay)."""
    return decode(params, extract_codebooks(params, shared))


# ----------------------------------------------------------------------------------------------
# Size accounting
# ----------------------------------------------------------------------------------------------


def huffman_code_lengths(frequencies: Sequence[int]) -> np.ndarray:
    """Code length of each symbol in a Huffman code for these counts (0 for unused symbols).

    A single used symbol gets a 1-bit code. Ties are broken by insertion order (deterministic).
    """
    counts = np.asarray(frequencies)
    if counts.ndim != 1 or np.any(counts < 0):
        raise ValueError("frequencies must be a 1-D sequence of non-negative counts")
    lengths = np.zeros(counts.shape[0], np.int64)
    heap = [(int(count), symbol, [symbol]) for symbol, count in enumerate(counts) if count > 0]
    if len(heap) == 1:
        lengths[heap[0][1]] = 1
        return lengths
    heapq.heapify(heap)
    tie_breaker = counts.shape[0]
    while len(heap) > 1:
        count_a, _, symbols_a = heapq.heappop(heap)
        count_b, _, symbols_b = heapq.heappop(heap)
        merged = symbols_a + symbols_b
        lengths[merged] += 1
        heapq.heappush(heap, (count_a + count_b, tie_breaker, merged))
        tie_breaker += 1
    return lengths


def huffman_bits(frequencies: Sequence[int]) -> int:
    """Total length in bits of a message with these symbol counts under its Huffman code."""
    return int(np.dot(huffman_code_lengths(frequencies), np.asarray(frequencies, np.int64)))


class LayerSize(NamedTuple):
    """Storage of one shared layer, in bits.

    Conventions: each kept weight stores a ``bits``-wide index (packed); a layer with pruned
    weights also stores a 1-bit-per-weight mask; the codebook costs 32 bits per entry. The Huffman
    variant replaces the packed indices by a Huffman code of the index counts (the code table itself
    is not counted).
    """

    num_weights: int
    num_pruned: int
    bits: int
    index_bits: int
    huffman_index_bits: int
    mask_bits: int
    codebook_bits: int

    @property
    def total_bits(self) -> int:
        return self.index_bits + self.mask_bits + self.codebook_bits

    @property
    def huffman_total_bits(self) -> int:
        return self.huffman_index_bits + self.mask_bits + self.codebook_bits


class SizeReport(NamedTuple):
    """Model size under weight sharing. Params that are not shared (biases, BatchNorm scales,
    float kernels) count 32 bits each; non-trainable state such as batch_stats is not counted."""

    layers: dict[str, LayerSize]
    num_params: int
    other_bits: int

    @property
    def float32_bits(self) -> int:
        return FLOAT32_BITS * self.num_params

    @property
    def total_bits(self) -> int:
        return self.other_bits + sum(layer.total_bits for layer in self.layers.values())

    @property
    def huffman_total_bits(self) -> int:
        return self.other_bits + sum(layer.huffman_total_bits for layer in self.layers.values())

    @property
    def compression_ratio(self) -> float:
        return self.float32_bits / self.total_bits

    @property
    def huffman_compression_ratio(self) -> float:
        return self.float32_bits / self.huffman_total_bits


def layer_size(layer: SharedLayer) -> LayerSize:
    """Bits needed to store one shared layer (see ``LayerSize`` for the conventions)."""
    k = layer.codebook.shape[0]
    indices = np.asarray(layer.indices).ravel()
    kept = indices[indices != MASKED]
    num_pruned = indices.size - kept.size
    return LayerSize(
        num_weights=indices.size,
        num_pruned=num_pruned,
        bits=layer.bits,
        index_bits=layer.bits * kept.size,
        huffman_index_bits=huffman_bits(np.bincount(kept, minlength=k)),
        mask_bits=indices.size if num_pruned else 0,
        codebook_bits=FLOAT32_BITS * k,
    )


def size_report(params: PyTree, shared: SharedWeights) -> SizeReport:
    """Per-layer and total storage of ``params`` with ``shared`` layers, against float32."""
    kernels = kernel_leaves(params)
    missing = sorted(set(shared) - set(kernels))
    if missing:
        raise ValueError(f"params have no kernel for shared layers {missing}")
    num_params = sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(params))
    layers = {name: layer_size(layer) for name, layer in shared.items()}
    shared_params = sum(size.num_weights for size in layers.values())
    return SizeReport(layers, num_params, FLOAT32_BITS * (num_params - shared_params))
