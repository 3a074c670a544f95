"""The splits of one experiment: train, an optional validation hold-out, test, and per-channel
standardisation by the training split's statistics (``(x - mean_c) / std_c``).

Without standardisation a zero input is a black image, which is the default DeepLIFT reference.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from xaijax.data.dataset import Dataset, subset
from xaijax.data.sources import load_dataset


def train_validation_split(
    ds: Dataset, validation_size: int, *, seed: int = 0
) -> tuple[Dataset, Dataset]:
    """Hold out ``validation_size`` examples chosen by a seeded permutation."""
    if not 0 < validation_size < ds.num_examples:
        raise ValueError(
            f"validation_size must be in (0, {ds.num_examples}), got {validation_size}"
        )
    order = np.random.default_rng(seed).permutation(ds.num_examples)
    return subset(ds, np.sort(order[validation_size:])), subset(
        ds, np.sort(order[:validation_size])
    )


class Splits(NamedTuple):
    """The datasets of one experiment; ``validation`` is None when nothing is held out."""

    train: Dataset
    validation: Dataset | None
    test: Dataset


def load_splits(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    validation_size: int = 0,
    standardize: bool = False,
    seed: int = 0,
) -> Splits:
    """Train, validation (``validation_size`` examples held out of train, seeded) and test splits;
    with ``standardize`` all three use the training images' per-channel mean and std."""
    train, test = load_dataset(name, "train", data_dir), load_dataset(name, "test", data_dir)
    validation = None
    if validation_size:
        train, validation = train_validation_split(train, validation_size, seed=seed)
    if standardize:
        mean, std = channel_stats(train)
        train, test = standardize_images(train, mean, std), standardize_images(test, mean, std)
        if validation is not None:
            validation = standardize_images(validation, mean, std)
    return Splits(train, validation, test)


def channel_stats(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of the images, float32 ``[C]`` each."""
    mean = ds.images.mean(axis=(0, 1, 2), dtype=np.float64)
    std = ds.images.std(axis=(0, 1, 2), dtype=np.float64)
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


def standardize_images(ds: Dataset, mean: np.ndarray, std: np.ndarray) -> Dataset:
    """Images ``(x - mean) / std`` per channel; labels unchanged."""
    return Dataset(((ds.images - mean) / std).astype(np.float32), ds.labels)
