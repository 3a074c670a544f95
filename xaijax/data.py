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
"""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
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
FASHION_MNIST_ENV = "XAIJAX_FASHION_MNIST_DIR"
FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
CIFAR10_ENV = "XAIJAX_CIFAR10_DIR"
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
SYNTHETIC_SIZES = {"train": 512, "test": 256}


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


# ----------------------------------------------------------------------------- IDX files

_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_READ_CHUNK = 1 << 20


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _read_exactly(stream: io.BufferedIOBase, num_bytes: int, path: Path, what: str) -> bytes:
    """Read ``num_bytes`` in chunks (memory grows with the data actually present)."""
    chunks, remaining = [], num_bytes
    while remaining > 0:
        chunk = stream.read(min(remaining, _READ_CHUNK))
        if not chunk:
            raise DataFormatError(
                f"{path}: truncated {what}: expected {num_bytes} bytes, "
                f"file ends after {num_bytes - remaining}"
            )
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (raw or gzipped) into a native-endian numpy array.

    Header: two zero bytes, a dtype code, the number of dimensions ``d``, then ``d`` big-endian
    uint32 sizes; the payload must hold exactly ``prod(sizes)`` items.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    gzipped = _is_gzip(path)
    opener = gzip.open if gzipped else open
    try:
        with opener(path, "rb") as stream:
            magic = _read_exactly(stream, 4, path, "header")
            if magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES:
                raise DataFormatError(f"{path}: bad IDX magic number {magic.hex()}")
            ndim = magic[3]
            if not 1 <= ndim <= 4:
                raise DataFormatError(f"{path}: IDX header claims {ndim} dimensions (expected 1-4)")
            dims = tuple(
                int(d)
                for d in np.frombuffer(_read_exactly(stream, 4 * ndim, path, "header"), ">u4")
            )
            dtype = _IDX_DTYPES[magic[2]]
            payload_bytes = math.prod(dims) * dtype.itemsize
            if not gzipped:
                actual = path.stat().st_size - 4 - 4 * ndim
                if actual != payload_bytes:
                    raise DataFormatError(
                        f"{path}: header dims {dims} need {payload_bytes} data bytes, "
                        f"file has {actual}"
                    )
            payload = _read_exactly(stream, payload_bytes, path, "data")
            if stream.read(1):
                raise DataFormatError(
                    f"{path}: trailing bytes after the {payload_bytes} data bytes of dims {dims}"
                )
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise DataFormatError(f"{path}: cannot decompress/read IDX file: {err}") from err
    return np.frombuffer(payload, dtype).astype(dtype.newbyteorder("="), copy=True).reshape(dims)


def _find_file(data_dir: Path, stem: str) -> Path:
    for candidate in (data_dir / stem, data_dir / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"missing {stem}(.gz) in {data_dir}")


def fashion_mnist_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir`` if given, else ``$XAIJAX_FASHION_MNIST_DIR``, else the Debian package path."""
    if data_dir:
        return Path(data_dir)
    return Path(os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DEFAULT_DIR)


def cifar10_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """``data_dir`` if given, else ``$XAIJAX_CIFAR10_DIR``, else ``None`` (no default copy)."""
    if data_dir:
        return Path(data_dir)
    env = os.environ.get(CIFAR10_ENV)
    return Path(env) if env else None


def load_fashion_mnist(split: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    directory = fashion_mnist_dir(data_dir)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"Fashion-MNIST directory {directory} does not exist (install the Debian package "
            f"dataset-fashion-mnist, set ${FASHION_MNIST_ENV} or config.data.data_dir)"
        )
    prefix = "train" if split == "train" else "t10k"
    images_path = _find_file(directory, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_file(directory, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataFormatError(
            f"{images_path}: expected uint8 images [N, 28, 28], got {images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataFormatError(
            f"{labels_path}: expected uint8 labels [N], got {labels.dtype} {labels.shape}"
        )
    if images.shape[0] != labels.shape[0]:
        raise DataFormatError(
            f"{images_path} has {images.shape[0]} images but {labels_path} has "
            f"{labels.shape[0]} labels"
        )
    if labels.size and labels.max() >= NUM_CLASSES["fashion_mnist"]:
        raise DataFormatError(f"{labels_path}: label {labels.max()} out of range [0, 10)")
    return Dataset(
        (images.astype(np.float32) / 255.0)[..., None],
        labels.astype(np.int32),
    )


# ----------------------------------------------------------------------------- digits


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


# ----------------------------------------------------------------------------- CIFAR-10

_CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST_FILES = ("test_batch",)
_SAFE_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy._core.numeric", "_frombuffer"): np._core.numeric._frombuffer,
    ("numpy.core.numeric", "_frombuffer"): np._core.numeric._frombuffer,
    ("_codecs", "encode"): __import__("_codecs").encode,
}


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds only builtins containers and numpy arrays; any other global is
    refused, so a crafted file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise DataFormatError(
                f"refusing to unpickle global {module}.{name}: only plain data is allowed"
            ) from None


def safe_unpickle(raw: bytes, source: str) -> Any:
    """``pickle.loads`` restricted to plain data (``encoding='bytes'`` as for python2 pickles)."""
    try:
        return _PlainDataUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except DataFormatError as err:
        raise DataFormatError(f"{source}: {err}") from err
    except Exception as err:
        raise DataFormatError(f"{source}: not a valid pickle: {err}") from err


def _field(batch: dict, key: str) -> Any:
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise KeyError(key)


def read_cifar_batch(path: str | os.PathLike) -> Dataset:
    """One CIFAR-10 pickle batch: ``data`` uint8 ``[n, 3072]`` (channel-major 32x32 planes) and
    ``labels`` (n ints in [0, 10))."""
    path = Path(path)
    batch = safe_unpickle(path.read_bytes(), str(path))
    if not isinstance(batch, dict):
        raise DataFormatError(f"{path}: expected a dict batch, got {type(batch).__name__}")
    try:
        data, labels = _field(batch, "data"), _field(batch, "labels")
    except KeyError as err:
        raise DataFormatError(f"{path}: batch has no {err} entry") from None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DataFormatError(
            f"{path}: 'data' must be a uint8 array [n, 3072], got "
            f"{type(data).__name__} {getattr(data, 'dtype', None)} {getattr(data, 'shape', None)}"
        )
    if data.shape[1] != 3 * 32 * 32:
        raise DataFormatError(f"{path}: 'data' rows have {data.shape[1]} values, expected 3072")
    if not isinstance(labels, list | tuple | np.ndarray) or len(labels) != data.shape[0]:
        raise DataFormatError(
            f"{path}: expected {data.shape[0]} labels, got {type(labels).__name__} of "
            f"length {len(labels) if hasattr(labels, '__len__') else '?'}"
        )
    if not all(isinstance(v, int | np.integer) for v in labels):
        raise DataFormatError(f"{path}: labels must be integers")
    labels = np.asarray(labels, np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES["cifar10"]):
        raise DataFormatError(f"{path}: labels out of range [0, 10)")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float32) / 255.0
    return Dataset(np.ascontiguousarray(images), labels.astype(np.int32))


def load_cifar10(split: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    directory = cifar10_dir(data_dir)
    if directory is None:
        raise FileNotFoundError(
            f"CIFAR-10 needs a local copy: set config.data.data_dir or ${CIFAR10_ENV} to the "
            "extracted cifar-10-batches-py directory"
        )
    if not directory.is_dir():
        raise FileNotFoundError(f"CIFAR-10 directory {directory} does not exist")
    if (directory / "cifar-10-batches-py").is_dir():
        directory = directory / "cifar-10-batches-py"
    names = _CIFAR_TRAIN_FILES if split == "train" else _CIFAR_TEST_FILES
    missing = [name for name in names if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"CIFAR-10 directory {directory} lacks {', '.join(missing)}")
    parts = [read_cifar_batch(directory / name) for name in names]
    return Dataset(
        np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts])
    )


# ----------------------------------------------------------------------------- synthetic


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


# ----------------------------------------------------------------------------- entry point


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


# ----------------------------------------------------------------------------- batching


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


# ----------------------------------------------------------------------------- augmentation


def augment_batch(rng: Any, images: Any, *, flip: bool = True, pad: int = 0) -> Any:
    """Per-example random horizontal flip and random crop after zero-padding by ``pad`` pixels
    (jax; call inside jit). Output shape equals input shape."""
    batch, height, width, _ = images.shape
    flip_key, crop_key = jax.random.split(rng)
    if flip:
        flips = jax.random.bernoulli(flip_key, 0.5, (batch, 1, 1, 1))
        images = jnp.where(flips, images[:, :, ::-1, :], images)
    if pad > 0:
        padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        offsets = jax.random.randint(crop_key, (batch, 2), 0, 2 * pad + 1)

        def crop(image: Any, offset: Any) -> Any:
            return jax.lax.dynamic_slice(
                image, (offset[0], offset[1], 0), (height, width, image.shape[-1])
            )

        images = jax.vmap(crop)(padded, offsets)
    return images
