"""In-memory datasets, strict file readers, deterministic batching and per-host sharding.

Layout: a :class:`Dataset` holds ``images`` as float32 NHWC ``[N, H, W, C]`` numpy arrays with
pixel values scaled to ``[0, 1]`` (``uint8 / 255``; digits: ``value / 16``) and ``labels`` as
int32 ``[N]``. Optionally :func:`standardize_images` maps images to ``(x - mean_c) / std_c`` with
per-channel statistics of the training split (:func:`channel_stats`). Without it a zero input is
a black image, which is the default DeepLIFT reference.

Sources (:func:`load_dataset`):

* ``"fashion_mnist"``: IDX files (gzipped or raw) from ``data_dir``, else
  ``$XAIJAX_FASHION_MNIST_DIR``, else ``/usr/share/datasets/fashion-mnist`` (Debian package
  ``dataset-fashion-mnist``).
* ``"digits"``: scikit-learn's bundled 8x8 digits, split 80/20 by a fixed permutation.
* ``"cifar10"``: the python-pickle batches (``data_batch_1..5``, ``test_batch``) from
  ``data_dir`` or ``$XAIJAX_CIFAR10_DIR``, read with an unpickler that only rebuilds plain data.
* ``"synthetic"``: class templates plus Gaussian noise, learnable, for unit tests.

Every reader validates what it reads and raises :class:`DataFormatError` (a ``ValueError``) naming
the file and the problem, before allocating memory sized by untrusted headers.
:func:`check_dataset` (run by :func:`load_dataset` on every dataset it loads or builds, and by
training) also refuses images with NaN or infinite pixels, naming their count and the first index.

Modules (each imports only the ones above it): ``dataset`` (the layout, its checks, subsets and
class-balanced samples), ``idx`` (Fashion-MNIST IDX files), ``cifar`` (CIFAR-10 pickles),
``sources`` (digits, synthetic, :func:`load_dataset`), ``splits`` (train / validation / test,
standardisation), ``batching`` (epochs, evaluation batches, host shards), ``augment`` (flips and
crops inside jit).
"""

from xaijax.data.augment import augment_batch
from xaijax.data.batching import (
    epoch_batch_indices,
    epoch_permutation,
    eval_batches,
    num_eval_batches,
    pad_for_eval,
    shard_for_host,
    train_batches,
)
from xaijax.data.cifar import (
    CIFAR10_ENV,
    cifar10_dir,
    load_cifar10,
    read_cifar_batch,
    safe_unpickle,
)
from xaijax.data.dataset import (
    DATASETS,
    IMAGE_SHAPES,
    NUM_CLASSES,
    SPLITS,
    DataFormatError,
    Dataset,
    balanced_indices,
    balanced_subset,
    check_dataset,
    check_finite_images,
    subset,
)
from xaijax.data.idx import (
    FASHION_MNIST_DEFAULT_DIR,
    FASHION_MNIST_ENV,
    fashion_mnist_dir,
    load_fashion_mnist,
    read_idx,
)
from xaijax.data.sources import (
    DIGITS_SPLIT_SEED,
    DIGITS_TEST_FRACTION,
    SYNTHETIC_SIZES,
    load_dataset,
    load_digits,
    make_synthetic,
)
from xaijax.data.splits import (
    Splits,
    channel_stats,
    load_splits,
    standardize_images,
    train_validation_split,
)

__all__ = [
    "CIFAR10_ENV",
    "DATASETS",
    "DIGITS_SPLIT_SEED",
    "DIGITS_TEST_FRACTION",
    "FASHION_MNIST_DEFAULT_DIR",
    "FASHION_MNIST_ENV",
    "IMAGE_SHAPES",
    "NUM_CLASSES",
    "SPLITS",
    "SYNTHETIC_SIZES",
    "DataFormatError",
    "Dataset",
    "Splits",
    "augment_batch",
    "balanced_indices",
    "balanced_subset",
    "channel_stats",
    "check_dataset",
    "check_finite_images",
    "cifar10_dir",
    "epoch_batch_indices",
    "epoch_permutation",
    "eval_batches",
    "fashion_mnist_dir",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_splits",
    "make_synthetic",
    "num_eval_batches",
    "pad_for_eval",
    "read_cifar_batch",
    "read_idx",
    "safe_unpickle",
    "shard_for_host",
    "standardize_images",
    "subset",
    "train_batches",
    "train_validation_split",
]
