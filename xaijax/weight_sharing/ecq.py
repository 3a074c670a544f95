"""Relevance-aware entropy-constrained weight sharing (ECQ / ECQx-style assignment).

Entropy-constrained quantization (Chou, Lookabaugh & Gray 1989; Wiedemann et al. 2020) charges
each cluster its information content, so rarely used clusters become expensive and the codebook
indices compress well under entropy (Huffman) coding. ECQx (Becking et al. 2022) adds relevance:
weights that matter little to the prediction are pushed towards a zero centroid, which creates
sparsity. Here, with the zero centroid ``c_z = 0`` kept fixed, the cost of assigning weight
``w_i`` to entry ``k`` is

    d_ik = m_ik (w_i - c_k)^2 + lam * (-log2 P_k),   m_ik = r_i if k = z else 1,

where ``P_k`` is the cluster's current occupancy probability and ``r_i = R_i / mean_j R_j`` is
the weight's relevance normalised by the layer's mean (kept weights only; ``r_i = 1`` without
relevance or when every relevance is 0). A weight of low relevance pays little to be zeroed, one
of high relevance much. Alternating minimisation of

    J(a, c, P) = sum_i [ m_{i a_i} (w_i - c_{a_i})^2 + lam * (-log2 P_{a_i}) ]

over the assignment ``a`` (per-weight argmin of ``d_ik``, ties to the lowest index), the
centroids ``c`` (each non-zero entry the mean of its members; an empty one keeps its value) and
``P`` (the empirical occupancy, the minimiser by Gibbs' inequality) never increases ``J``. ``P``
starts uniform, so the first assignment is the relevance-adjusted nearest entry. With ``lam > 0``
a cluster that empties gets ``P_k = 0`` and infinite cost, so it stays empty (the codebook keeps
its value, unused). With ``lam = 0``, uniform relevance and no zero centroid, the iteration is
exactly 1-D k-means (Lloyd). Masked (pruned) weights take no part and get the index ``MASKED``.

Each iteration costs O(n k) time and O(n) memory (a loop over the k entries).
``ecq_cluster_params`` pads each kernel with masked entries to a power of two (at least
``MIN_PADDED_LENGTH``), so layers of similar size share one compilation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from xaijax.weight_sharing.codebooks import (
    MASKED,
    PyTree,
    SharedLayer,
    SharedWeights,
    _clustered_layers,
)
from xaijax.weight_sharing.initialization import _initial_codebook
from xaijax.weight_sharing.kmeans import _check_iterations
from xaijax.weight_sharing.sorted_values import _sort_data
from xaijax.weight_sharing.validation import (
    _check_bits,
    _check_importance,
    _check_values,
)

MIN_PADDED_LENGTH = 4096
"""``ecq_cluster_params`` pads a kernel of n weights to max(MIN_PADDED_LENGTH, 2^ceil(log2 n))."""


def _padded_length(n: int) -> int:
    return max(MIN_PADDED_LENGTH, 1 << max(n - 1, 0).bit_length())


def _pad(x: jax.Array, length: int, fill: Any) -> jax.Array:
    return jnp.concatenate([x, jnp.full((length - x.shape[0],), fill, x.dtype)])


class ECQResult(NamedTuple):
    """Result of ``ecq_cluster``.

    codebook: float32[k], ascending; with a zero centroid, entry ``zero_index`` is exactly 0.
    indices: int32[n], each kept value's entry; ``MASKED`` (-1) where the mask is 0.
    zero_index: int32 scalar, the index of the zero centroid (-1 without one).
    probabilities: float32[k], the occupancy of each entry under ``indices`` (kept values).
    objective: float32 scalar, J(a, c, P) after the last iteration (``history[num_iters]``).
    num_iters: int32 scalar, iterations run (< max_iters when assignments became stable).
    history: float32[max_iters + 1], J after t iterations (entry 0: initial codebook, uniform P);
        entries after ``num_iters`` repeat the last value.
    """

    codebook: jax.Array
    indices: jax.Array
    zero_index: jax.Array
    probabilities: jax.Array
    objective: jax.Array
    num_iters: jax.Array
    history: jax.Array


class _Problem(NamedTuple):
    values: jax.Array  # float32[n]
    keep: jax.Array  # bool[n]
    scale: jax.Array  # float32[n], r_i: multiplier of the zero cluster's distortion
    zero: jax.Array  # bool[k], True at the zero centroid
    lam: jax.Array  # float32 scalar


def _penalty(probs: jax.Array, lam: jax.Array) -> jax.Array:
    """lam * (-log2 P_k); 0 everywhere when lam == 0; +inf for an empty cluster when lam > 0."""
    info = jnp.where(probs > 0, -jnp.log2(jnp.where(probs > 0, probs, 1.0)), jnp.inf)
    return jnp.where(lam > 0, lam * info, 0.0)


def _costs(problem: _Problem, codebook: jax.Array, penalty: jax.Array, j: Any) -> jax.Array:
    """d_ij for all i and one entry j (index array or scalar)."""
    distortion = jnp.square(problem.values - codebook[j])
    return jnp.where(problem.zero[j], problem.scale * distortion, distortion) + penalty[j]


def _assign(problem: _Problem, codebook: jax.Array, penalty: jax.Array) -> jax.Array:
    """argmin_k d_ik per value (ties to the lowest k); ``k`` (one past the end) where masked."""
    k = codebook.shape[0]

    def visit(j: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        best, arg = carry
        cost = _costs(problem, codebook, penalty, j)
        better = cost < best
        return jnp.where(better, cost, best), jnp.where(better, j, arg)

    n = problem.values.shape[0]
    start = (jnp.full((n,), jnp.inf, jnp.float32), jnp.zeros((n,), jnp.int32))
    _, labels = jax.lax.fori_loop(0, k, visit, start)
    return jnp.where(problem.keep, labels, k)


def _counts(problem: _Problem, labels: jax.Array, k: int) -> jax.Array:
    return jnp.zeros((k,), jnp.float32).at[labels].add(1.0, mode="drop")


def _update(problem: _Problem, codebook: jax.Array, labels: jax.Array) -> tuple[jax.Array, ...]:
    """Non-zero centroids <- mean of their members (as c + mean residual, for accuracy); empty
    ones and the zero centroid keep their values. P <- empirical occupancy."""
    k = codebook.shape[0]
    counts = _counts(problem, labels, k)
    residual = problem.values - codebook[jnp.minimum(labels, k - 1)]
    sums = jnp.zeros((k,), jnp.float32).at[labels].add(residual, mode="drop")
    moved = codebook + sums / jnp.maximum(counts, 1.0)
    codebook = jnp.where((counts > 0) & ~problem.zero, moved, codebook)
    probs = counts / jnp.maximum(jnp.sum(counts), 1.0)
    return codebook, probs


def _objective(
    problem: _Problem, codebook: jax.Array, penalty: jax.Array, labels: jax.Array
) -> jax.Array:
    """J = sum over kept i of d_{i a_i}."""
    k = codebook.shape[0]
    cost = _costs(problem, codebook, penalty, jnp.minimum(labels, k - 1))
    return jnp.sum(jnp.where(problem.keep, cost, 0.0))


def _ecq_impl(
    values: jax.Array,
    relevance: jax.Array | None,
    mask: jax.Array | None,
    init_codebook: jax.Array | None,
    key: jax.Array,
    lam: jax.Array,
    max_iters: jax.Array,
    *,
    k: int,
    init: str,
    zero_centroid: bool,
    history_length: int,
) -> ECQResult:
    n = values.shape[0]
    keep = jnp.ones((n,), bool) if mask is None else mask
    keep_weight = keep.astype(jnp.float32)
    if init_codebook is None:
        codebook = _initial_codebook(_sort_data(values, keep_weight), k, init, key)
    else:
        codebook = jnp.sort(init_codebook)
    if zero_centroid:
        zero_position = jnp.argmin(jnp.abs(codebook)).astype(jnp.int32)
        codebook = codebook.at[zero_position].set(0.0)
    else:
        zero_position = jnp.int32(-1)
    zero = jnp.arange(k) == zero_position
    scale = jnp.ones((n,), jnp.float32)
    if relevance is not None:
        mean = jnp.sum(jnp.where(keep, relevance, 0.0)) / jnp.maximum(jnp.sum(keep_weight), 1.0)
        scale = jnp.where(mean > 0, relevance / jnp.where(mean > 0, mean, 1.0), 1.0)
    problem = _Problem(values, keep, scale, zero, lam)

    penalty = _penalty(jnp.full((k,), 1.0 / k, jnp.float32), lam)
    labels = _assign(problem, codebook, penalty)
    history = jnp.zeros((history_length,), jnp.float32)
    history = history.at[0].set(_objective(problem, codebook, penalty, labels))

    def not_done(state: tuple) -> jax.Array:
        _, _, step, changed, _ = state
        return (step < max_iters) & changed

    def step_fn(state: tuple) -> tuple:
        codebook, labels, step, _, history = state
        codebook, probs = _update(problem, codebook, labels)
        penalty = _penalty(probs, lam)
        new_labels = _assign(problem, codebook, penalty)
        history = history.at[step + 1].set(_objective(problem, codebook, penalty, new_labels))
        return codebook, new_labels, step + 1, jnp.any(new_labels != labels), history

    state = (codebook, labels, jnp.int32(0), max_iters > 0, history)
    codebook, labels, steps, _, history = jax.lax.while_loop(not_done, step_fn, state)
    history = jnp.where(jnp.arange(history_length) > steps, history[steps], history)

    order = jnp.argsort(codebook, stable=True)
    rank = jnp.argsort(order).astype(jnp.int32)
    indices = jnp.where(keep, rank[jnp.minimum(labels, k - 1)], MASKED)
    counts = _counts(problem, labels, k)[order]
    zero_index = jnp.where(zero_position >= 0, rank[jnp.maximum(zero_position, 0)], -1)
    return ECQResult(
        codebook=codebook[order],
        indices=indices.astype(jnp.int32),
        zero_index=zero_index.astype(jnp.int32),
        probabilities=counts / jnp.maximum(jnp.sum(counts), 1.0),
        objective=history[steps],
        num_iters=steps,
        history=history,
    )


_ecq_jit = jax.jit(_ecq_impl, static_argnames=("k", "init", "zero_centroid", "history_length"))


def _check_lam(lam: Any, what: str = "lam") -> float:
    if isinstance(lam, bool) or not isinstance(lam, (int, float, np.integer, np.floating)):
        raise TypeError(f"{what} must be a number >= 0, got {lam!r}")
    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"{what} must be a finite number >= 0, got {lam!r}")
    return float(lam)


def ecq_cluster(
    values: chex.Array,
    bits: int,
    relevance: chex.Array | None = None,
    *,
    lam: float,
    mask: chex.Array | None = None,
    zero_centroid: bool = True,
    init: str | chex.Array = "linear",
    max_iters: int = 30,
    key: jax.Array | None = None,
) -> ECQResult:
    """Entropy-constrained, relevance-aware 1-D clustering into k = 2^bits entries, jit-compiled.

    Minimises J(a, c, P) = sum_i m_{i a_i} (w_i - c_{a_i})^2 + lam * (-log2 P_{a_i}) with the
    zero centroid fixed at 0 and m_{iz} = r_i = R_i / mean(R) (module docstring), alternating
    assignment, centroid and probability updates until no assignment changes or ``max_iters``.

    Args:
      values: float32[n] finite values (one flattened kernel).
      bits: 1..8; k = 2^bits (one entry is the zero centroid when ``zero_centroid``).
      relevance: float32[n] R_i >= 0 (e.g. DeepLIFT or LRP weight relevance), or None (r_i = 1).
      lam: the entropy multiplier, >= 0, in units of squared value per bit.
      mask: n values, 0 marks a pruned value: it takes no part and gets the index ``MASKED``.
      zero_centroid: pin the initial entry nearest 0 to exactly 0 and keep it there. Without it
        there is no zero cluster and relevance must be None (ECQ without sparsity).
      init: a starting codebook as in ``kmeans_1d`` (``INITS``, over the kept values) or an
        explicit float32[k] codebook; the zero centroid replaces its entry nearest 0.
      max_iters: maximum number of iterations (>= 0).
      key: PRNG key for "random" and "kmeans++" (default ``jax.random.key(0)``).
    """
    k = 2 ** _check_bits(bits)
    values = _check_values(values)
    lam = _check_lam(lam)
    if relevance is not None:
        if not zero_centroid:
            raise ValueError("relevance acts on the zero cluster: it needs zero_centroid=True")
        relevance = jnp.asarray(relevance, jnp.float32)
        _check_importance(relevance, values.shape, "relevance")
    if mask is not None:
        if jnp.shape(mask) != values.shape:
            raise ValueError(f"mask has shape {jnp.shape(mask)}, expected {values.shape}")
        mask = jnp.asarray(mask) != 0
    init_name, init_codebook, max_iters, key = _check_iterations(init, k, max_iters, key)
    return _ecq_jit(
        values,
        relevance,
        mask,
        init_codebook,
        key,
        jnp.float32(lam),
        jnp.int32(max_iters),
        k=k,
        init=init_name,
        zero_centroid=bool(zero_centroid),
        history_length=max_iters + 1,
    )


def ecq_cluster_params(
    params: PyTree,
    bits: int | Mapping[str, int],
    relevance: PyTree | None = None,
    mask: PyTree | None = None,
    *,
    lam: float,
    init: str = "linear",
    max_iters: int = 30,
    key: jax.Array | None = None,
) -> SharedWeights:
    """``ecq_cluster`` on every kernel named in ``bits``, as ``cluster_params`` does k-means.

    ``lam`` is relative to each layer's scale: layer l uses lam_l = lam * mean_i w_i^2 (kept
    weights), so one value fits layers of any magnitude and scaling a kernel by a constant leaves
    its assignment unchanged. Each layer has a zero centroid; weights sent to it keep their index
    (entropy coding makes the frequent zero index cheap), pruned weights (mask 0) get ``MASKED``.
    Kernels are padded with masked entries (``MIN_PADDED_LENGTH``), which take no part: the result
    is that of ``ecq_cluster`` on the kernel itself, except that the draws of the "random" and
    "kmeans++" inits depend on the padded length.

    Args:
      params: a Flax params pytree; its 'kernel' leaves are the clustered layers.
      bits: one bit width for all kernels, or layer name -> bits (layers left out stay float32).
      relevance: pytree with a kernel leaf R >= 0 per clustered layer, or None (plain ECQ).
      mask: pytree with a 0/1 kernel leaf per clustered layer (0 = pruned).
      lam: relative entropy multiplier >= 0.
      init, max_iters, key: as in ``ecq_cluster`` (each layer gets ``fold_in(key, number)``).
    """
    kernels, layer_bits, scores, masks = _clustered_layers(
        params, bits, relevance, mask, init, "relevance"
    )
    lam = _check_lam(lam)
    key = jax.random.key(0) if key is None else key
    shared: SharedWeights = {}
    for number, (name, kernel) in enumerate(kernels.items()):
        if name not in layer_bits:
            continue
        flat = jnp.ravel(jnp.asarray(kernel, jnp.float32))
        n = flat.shape[0]
        length = _padded_length(n)
        keep = jnp.ones((n,), bool)
        if name in masks:
            keep = jnp.ravel(jnp.asarray(masks[name]) != 0)
        kept = jnp.where(keep, flat, 0.0)
        mean_square = float(jnp.sum(jnp.square(kept)) / jnp.maximum(jnp.sum(keep), 1))
        layer_relevance = None
        if name in scores:
            layer_relevance = _pad(jnp.ravel(jnp.asarray(scores[name], jnp.float32)), length, 0.0)
        result = ecq_cluster(
            _pad(flat, length, 0.0),
            layer_bits[name],
            layer_relevance,
            lam=lam * mean_square,
            mask=_pad(keep, length, False),
            init=init,
            max_iters=max_iters,
            key=jax.random.fold_in(key, number),
        )
        indices = result.indices[:n].reshape(jnp.shape(kernel))
        shared[name] = SharedLayer(result.codebook, indices)
    return shared
