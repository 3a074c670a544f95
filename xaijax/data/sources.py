"""Every dataset by name (:func:`load_dataset`): Fashion-MNIST, scikit-learn's digits, CIFAR-10
and a synthetic task for unit tests.

* ``"fashion_mnist"``: IDX files (``xaijax.data.idx``).
* ``"digits"``: scikit-learn's bundled 8x8 digits (values 0..16 scaled by ``1 / 16``), split
  80/20 by a fixed permutation.
* ``"cifar10"``: the python-pickle batches (``xaijax.data.cifar``).
* ``"synthetic"``: class templates plus Gaussian noise, learnable.

:func:`load_dataset` checks every dataset it loads or builds (``check_dataset``).
"""

from __future__ import annotations

import os

import numpy as np

from xaijax.data.cifar import load_cifar10
from xaijax.data.dataset import DATASETS, IMAGE_SHAPES, NUM_CLASSES, SPLITS, Dataset, check_dataset
from xaijax.data.idx import load_fashion_mnist

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
SYNTHETIC_SIZES = {"train": 512, "test": 256}


def load_digits(split: str) -> Dataset:
    """scikit-learn's 1797 8x8 digits, values 0..16 scaled to [0, 1]; fixed 80/20 split."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = (np.asarray(bunch.images, np.float32) / 16.0)[..., None]
    labels = np.asarray(bunch.target, np.int32)
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(labels.shape[0])
    num_test = round(labels.shape[0] * DIGITS_TEST_FRACTION)
    chosen = order[num_test:] if split == "train" else order[:num_test]
    return Dataset(images[chosen], labels[chosen])


def make_synthetic(
    num_examples: int,
    *,
    image_shape: tuple[int, int, int] = IMAGE_SHAPES["synthetic"],
    num_classes: int = NUM_CLASSES["synthetic"],
    noise: float = 0.3,
    seed: int = 0,
    template_seed: int = 1234,
) -> Dataset:
    """Images ``clip(template[label] + noise * N(0, 1), 0, 1)``; templates are fixed by
    ``template_seed`` so different ``seed`` values draw new samples of the same task."""
    if num_examples < 0 or num_classes < 1 or noise < 0:
        raise ValueError(
            f"make_synthetic: need num_examples >= 0, num_classes >= 1, noise >= 0; got "
            f"{num_examples}, {num_classes}, {noise}"
        )
    templates = np.random.default_rng(template_seed).uniform(size=(num_classes, *image_shape))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=num_examples).astype(np.int32)
    images = templates[labels] + noise * rng.standard_normal((num_examples, *image_shape))
    return Dataset(np.clip(images, 0.0, 1.0).astype(np.float32), labels)


def load_dataset(name: str, split: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load ``split`` ("train" | "test") of dataset ``name`` (see :data:`DATASETS`)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if name == "fashion_mnist":
        ds = load_fashion_mnist(split, data_dir)
    elif name == "digits":
        ds = load_digits(split)
    elif name == "cifar10":
        ds = load_cifar10(split, data_dir)
    else:
        ds = make_synthetic(SYNTHETIC_SIZES[split], seed=SPLITS.index(split))
    return check_dataset(ds)
