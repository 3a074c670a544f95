"""Weight-shared layers of a params pytree: each clustered kernel is ``codebook[indices]``
(:class:`SharedLayer`), and exactly 0 where the index is ``MASKED``.

Layers are named by the kernel's parent path joined by '/' (``kernel_leaves``).
:func:`cluster_params` clusters kernels with :func:`~xaijax.weight_sharing.kmeans.kmeans_1d`
(weights: importance times the pruning mask), :func:`encode` assigns them to given codebooks and
:func:`decode` writes the kernels back. After fine-tuning, :func:`extract_codebooks` reads entry
``j`` back as the common value of its members (their mean if they differ) and
:func:`snap_to_codebooks` puts every shared weight back on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from xaijax.weight_sharing.initialization import INITS
from xaijax.weight_sharing.kmeans import kmeans_1d
from xaijax.weight_sharing.sorted_values import nearest_indices
from xaijax.weight_sharing.validation import (
    CODEBOOK_SIZES,
    MAX_BITS,
    MIN_BITS,
    _check_bits,
    _check_importance,
    _is_concrete,
)

PyTree = Any
MASKED = -1
"""Index of a pruned weight: it decodes to exactly zero and takes no part in clustering."""


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


class _ClusteredLayers(NamedTuple):
    """The checked inputs of clustering the kernels of ``params``, by layer name."""

    kernels: dict[str, Any]  # every kernel leaf, in tree order
    bits: dict[str, int]  # the clustered layers' bit widths
    scores: dict[str, Any]  # importance / relevance kernels of the clustered layers ({}: none)
    masks: dict[str, Any]  # mask kernels of the clustered layers ({}: none)


def _clustered_layers(
    params: PyTree,
    bits: int | Mapping[str, int],
    scores: PyTree | None,
    mask: PyTree | None,
    init: Any,
    what: str,
) -> _ClusteredLayers:
    """The kernels, bits, scores (named ``what`` in errors) and masks of the layers to cluster,
    after checking that there are kernels, ``init`` is one of ``INITS``, the scores are finite,
    non-negative and kernel-shaped, and every clustered kernel is finite (when concrete)."""
    kernels = kernel_leaves(params)
    if not kernels:
        raise ValueError("params has no leaves named 'kernel' to cluster")
    layer_bits = _layer_bits(bits, list(kernels))
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    names = [name for name in kernels if name in layer_bits]
    layer_scores = _kernels_like(scores, kernels, names, what)
    masks = _kernels_like(mask, kernels, names, "mask")
    for name, leaf in layer_scores.items():
        _check_importance(leaf, jnp.shape(kernels[name]), f"{what}[{name!r}]")
    for name in names:
        if _is_concrete(kernels[name]) and not np.all(np.isfinite(np.asarray(kernels[name]))):
            raise ValueError(f"kernel {name!r} has non-finite values")
    return _ClusteredLayers(kernels, layer_bits, layer_scores, masks)


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
    kernels, layer_bits, scores, masks = _clustered_layers(
        params, bits, importance, mask, init, "importance"
    )
    keeps = {name: jnp.asarray(leaf) != 0 for name, leaf in masks.items()}
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


def _cluster_ids(indices: jax.Array, k: int) -> jax.Array:
    """Flat segment ids with MASKED sent to an extra segment k that is dropped afterwards."""
    flat = jnp.ravel(indices)
    return jnp.where(flat == MASKED, k, flat)


def _cluster_sums(values: jax.Array, indices: jax.Array, k: int) -> jax.Array:
    """float32[k]: sum of the values of each cluster's members (MASKED members left out)."""
    return jax.ops.segment_sum(jnp.ravel(values), _cluster_ids(indices, k), num_segments=k + 1)[:k]


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
