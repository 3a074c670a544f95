"""CIFAR-10 from its python-pickle batches (``data_batch_1..5``, ``test_batch``), read with an
unpickler that only rebuilds plain data, so a crafted file cannot run code.

The directory is ``data_dir`` or ``$XAIJAX_CIFAR10_DIR`` (there is no default copy).
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from xaijax.data.dataset import NUM_CLASSES, DataFormatError, Dataset

CIFAR10_ENV = "XAIJAX_CIFAR10_DIR"
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


def cifar10_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """``data_dir`` if given, else ``$XAIJAX_CIFAR10_DIR``, else ``None`` (no default copy)."""
    if data_dir:
        return Path(data_dir)
    env = os.environ.get(CIFAR10_ENV)
    return Path(env) if env else None


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
