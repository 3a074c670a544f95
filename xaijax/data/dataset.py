"""The in-memory dataset layout, its checks, and subsets.

A :class:`Dataset` holds ``images`` as float32 NHWC ``[N, H, W, C]`` numpy arrays with pixel values
scaled to ``[0, 1]`` and ``labels`` as int32 ``[N]``. :func:`check_dataset` refuses anything else,
and images with NaN or infinite pixels (naming their count and the first index).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

DATASETS = ("fashion_mnist", "digits", "cifar10", "synthetic")
SPLITS = ("train", "test")
NUM_CLASSES = {"fashion_mnist": 10, "digits": 10, "cifar10": 10, "synthetic": 10}
IMAGE_SHAPES = {
    "fashion_mnist": (28, 28, 1),
    "digits": (8, 8, 1),
    "cifar10": (32, 32, 3),
    "synthetic": (28, 28, 1),
}


class DataFormatError(ValueError):
    """A data file is corrupt, truncated, or does not match the expected format."""


class Dataset(NamedTuple):
    """Images float32 ``[N, H, W, C]`` and int32 labels ``[N]``; a pytree, so jax can place it."""

    images: np.ndarray
    labels: np.ndarray

    @property
    def num_examples(self) -> int:
        return int(self.labels.shape[0])


def check_finite_images(images: np.ndarray) -> None:
    """Raise :class:`DataFormatError` naming how many images hold a NaN or infinite pixel and
    the index of the first one."""
    bad = np.flatnonzero(~np.isfinite(images).reshape(images.shape[0], -1).all(axis=1))
    if bad.size:
        raise DataFormatError(
            f"{bad.size} of {images.shape[0]} images contain NaN or infinite pixels "
            f"(first at index {bad[0]})"
        )


def check_dataset(ds: Dataset) -> Dataset:
    """Raise ``TypeError``/``ValueError`` unless ``ds`` follows the documented layout, and
    :class:`DataFormatError` (a ``ValueError``) if an image has a NaN or infinite pixel."""
    if not isinstance(ds, Dataset):
        raise TypeError(f"expected a xaijax.data.Dataset, got {type(ds).__name__}")
    images, labels = ds
    if not isinstance(images, np.ndarray) or images.dtype != np.float32 or images.ndim != 4:
        raise ValueError(
            "Dataset.images must be a float32 numpy array [N, H, W, C], got "
            f"{type(images).__name__} {getattr(images, 'dtype', None)} "
            f"{getattr(images, 'shape', None)}"
        )
    if not isinstance(labels, np.ndarray) or labels.dtype != np.int32 or labels.ndim != 1:
        raise ValueError(
            "Dataset.labels must be an int32 numpy array [N], got "
            f"{type(labels).__name__} {getattr(labels, 'dtype', None)} "
            f"{getattr(labels, 'shape', None)}"
        )
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    check_finite_images(images)
    return ds


def subset(ds: Dataset, indices: np.ndarray | slice) -> Dataset:
    """The examples of ``ds`` at ``indices`` (in that order)."""
    return Dataset(ds.images[indices], ds.labels[indices])


def balanced_indices(labels: np.ndarray, per_class: int, *, seed: int) -> np.ndarray:
    """``per_class`` indices of every class present in ``labels``, drawn without replacement by
    ``seed``, sorted (so the subset keeps the dataset's order).

    Raises ``ValueError`` when ``per_class < 1`` or some class has fewer examples."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise ValueError(f"per_class must be an integer >= 1, got {per_class!r}")
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if members.size < per_class:
            raise ValueError(
                f"class {label} has {members.size} examples, fewer than per_class={per_class}"
            )
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def balanced_subset(ds: Dataset, per_class: int, *, seed: int) -> Dataset:
    """``per_class`` examples of every class of ``ds`` (:func:`balanced_indices`)."""
    return subset(ds, balanced_indices(ds.labels, per_class, seed=seed))
