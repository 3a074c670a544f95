"""Storage of weight-shared params, in bits, against float32.

A shared layer of ``n`` weights, ``p`` of them pruned, costs ``bits * (n - p)`` for its packed
indices (or the length of their Huffman code), ``n`` for a presence mask when ``p > 0`` and
``32 * 2^bits`` for its codebook; params that are not shared cost 32 bits each.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np

from xaijax.weight_sharing.codebooks import (
    MASKED,
    PyTree,
    SharedLayer,
    SharedWeights,
    kernel_leaves,
)

FLOAT32_BITS = 32


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
