"""Shared-weight fine-tuning as an optax transform: :func:`shared_gradients` ties the weights of
each cluster, ``g_i <- sum_{j : a_j = a_i} g_j`` (0 for ``MASKED`` weights), so an element-wise
optimizer chained after it moves all members of a cluster alike and they stay equal."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from xaijax.weight_sharing.codebooks import (
    MASKED,
    PyTree,
    SharedWeights,
    _cluster_sums,
    _map_kernels,
    kernel_leaves,
)


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
