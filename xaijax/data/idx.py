"""Fashion-MNIST from IDX files (gzipped or raw), read with strict header checks.

The directory is ``data_dir``, else ``$XAIJAX_FASHION_MNIST_DIR``, else
``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``). Every header is
validated before memory sized by it is allocated; a bad file raises
:class:`~xaijax.data.dataset.DataFormatError` naming it.
"""

from __future__ import annotations

import gzip
import io
import math
import os
from pathlib import Path

import numpy as np

from xaijax.data.dataset import NUM_CLASSES, DataFormatError, Dataset

FASHION_MNIST_ENV = "XAIJAX_FASHION_MNIST_DIR"
FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
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
