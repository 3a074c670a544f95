"""Deterministic batching: shuffled training epochs that depend only on ``(seed, epoch)``, padded
evaluation batches that count every example once, and per-host shards."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from xaijax.data.dataset import Dataset, subset


def epoch_permutation(num_examples: int, *, seed: int, epoch: int) -> np.ndarray:
    """The example order of ``epoch``: a permutation determined by ``(seed, epoch)`` only."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def epoch_batch_indices(num_examples: int, batch_size: int, *, seed: int, epoch: int) -> np.ndarray:
    """Indices ``[steps, batch_size]`` of one shuffled epoch, dropping the last partial batch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    steps = num_examples // batch_size
    if steps == 0:
        raise ValueError(f"batch_size {batch_size} exceeds the {num_examples} training examples")
    order = epoch_permutation(num_examples, seed=seed, epoch=epoch)
    return order[: steps * batch_size].reshape(steps, batch_size)


def train_batches(
    ds: Dataset, batch_size: int, *, seed: int, epoch: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Shuffled ``(images, labels)`` batches of one epoch; the order depends on (seed, epoch)."""
    for idx in epoch_batch_indices(ds.num_examples, batch_size, seed=seed, epoch=epoch):
        yield ds.images[idx], ds.labels[idx]


def num_eval_batches(num_examples: int, batch_size: int) -> int:
    return -(-num_examples // batch_size)


def pad_for_eval(
    ds: Dataset, batch_size: int, num_batches: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images ``[B, batch_size, ...]``, labels and weights ``[B, batch_size]``: the examples in
    order, zero-padded to ``num_batches`` full batches; weight 1 marks a real example."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = ds.num_examples
    needed = num_eval_batches(n, batch_size)
    num_batches = needed if num_batches is None else num_batches
    if num_batches < needed:
        raise ValueError(f"{n} examples need {needed} batches of {batch_size}, got {num_batches}")
    total = num_batches * batch_size
    images = np.zeros((total, *ds.images.shape[1:]), np.float32)
    labels = np.zeros((total,), np.int32)
    weights = np.zeros((total,), np.float32)
    images[:n], labels[:n], weights[:n] = ds.images, ds.labels, 1.0
    return (
        images.reshape(num_batches, batch_size, *ds.images.shape[1:]),
        labels.reshape(num_batches, batch_size),
        weights.reshape(num_batches, batch_size),
    )


def eval_batches(
    ds: Dataset, batch_size: int, num_batches: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(images, labels, weights)`` batches of fixed shape covering every example exactly once;
    the last batch is padded with weight-0 examples."""
    images, labels, weights = pad_for_eval(ds, batch_size, num_batches)
    yield from zip(images, labels, weights, strict=True)


def shard_for_host(
    ds: Dataset, process_index: int, process_count: int, *, drop_remainder: bool = True
) -> Dataset:
    """This host's share: examples ``process_index::process_count``.

    With ``drop_remainder`` every host gets ``N // process_count`` examples (equal step counts for
    training); without it the shards partition the dataset exactly (for evaluation).
    """
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f"need 0 <= process_index < process_count, got {process_index}, {process_count}"
        )
    indices = np.arange(process_index, ds.num_examples, process_count)
    if drop_remainder:
        indices = indices[: ds.num_examples // process_count]
    return subset(ds, indices)
