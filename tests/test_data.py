"""Data sources, strict file validation, batching coverage, shuffling and per-host sharding."""

import gzip
import os
import pickle
import struct
from pathlib import Path

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xaijax import data

IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode ``array`` in the IDX format (big-endian header and payload)."""
    header = bytes([0, 0, IDX_CODES[array.dtype.type], array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path: Path, payload: bytes, gzipped: bool = False) -> Path:
    path.write_bytes(gzip.compress(payload) if gzipped else payload)
    return path


# ----------------------------------------------------------------------------- IDX


@settings(max_examples=20, deadline=None)
@given(
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=3),
    dtype=st.sampled_from(list(IDX_CODES)),
    gzipped=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_idx_round_trip(tmp_path_factory, shape, dtype, gzipped, seed):
    array = (np.random.default_rng(seed).normal(size=shape) * 50).astype(dtype)
    path = write(tmp_path_factory.mktemp("idx") / "a.idx", idx_bytes(array), gzipped)
    read = data.read_idx(path)
    assert read.dtype == np.dtype(dtype) and read.shape == tuple(shape)
    np.testing.assert_array_equal(read, array)


VALID = idx_bytes(np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4))


@pytest.mark.parametrize("gzipped", [False, True])
@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x01" + VALID[1:], "magic"),
        (VALID[:2] + b"\x07" + VALID[3:], "magic"),  # Unknown dtype code.
        (VALID[:3] + b"\x00" + VALID[4:], "dimensions"),
        (VALID[:-1], "truncated|need"),
        (VALID + b"\x00", "trailing|need"),
        (VALID[:6], "truncated|need"),  # Header cut inside the dimensions.
        (b"\x00\x00", "truncated"),
        # Header claims 2^32-1 x 2^32-1 x 2^32-1 bytes: must fail fast, allocating nothing big.
        (bytes([0, 0, 8, 3]) + b"\xff" * 12 + b"\x00" * 10, "truncated|need"),
    ],
)
def test_idx_rejects_corrupt_files(tmp_path, payload, message, gzipped):
    path = write(tmp_path / "bad.idx", payload, gzipped)
    with pytest.raises(data.DataFormatError, match=message):
        data.read_idx(path)


def test_idx_rejects_broken_gzip_stream(tmp_path):
    compressed = gzip.compress(VALID)
    path = write(tmp_path / "bad.gz", compressed[: len(compressed) // 2])
    with pytest.raises(data.DataFormatError, match=r"bad\.gz"):
        data.read_idx(path)
    garbage = write(tmp_path / "garbage.gz", b"\x1f\x8b" + b"\x13" * 64)
    with pytest.raises(data.DataFormatError):
        data.read_idx(garbage)


def write_fashion(directory: Path, images: np.ndarray, labels: np.ndarray, split: str, gz: bool):
    prefix = "train" if split == "train" else "t10k"
    suffix = ".gz" if gz else ""
    write(directory / f"{prefix}-images-idx3-ubyte{suffix}", idx_bytes(images), gz)
    write(directory / f"{prefix}-labels-idx1-ubyte{suffix}", idx_bytes(labels), gz)


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_from_env_dir(tmp_path, monkeypatch, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 7).astype(np.uint8)
    write_fashion(tmp_path, images, labels, "test", gz)
    monkeypatch.setenv(data.FASHION_MNIST_ENV, str(tmp_path))
    ds = data.load_dataset("fashion_mnist", "test")
    assert ds.images.shape == (7, 28, 28, 1) and ds.images.dtype == np.float32
    np.testing.assert_allclose(ds.images[..., 0] * 255.0, images, atol=1e-4)
    np.testing.assert_array_equal(ds.labels, labels)
    # An explicit data_dir wins over the environment variable.
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_dataset("fashion_mnist", "test", tmp_path / "elsewhere")


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (np.zeros((3, 28, 28), np.uint8), np.zeros(4, np.uint8), "3 images but .* 4 labels"),
        (np.zeros((3, 27, 28), np.uint8), np.zeros(3, np.uint8), r"\[N, 28, 28\]"),
        (np.zeros((3, 28, 28), np.int32), np.zeros(3, np.uint8), "uint8 images"),
        (np.zeros((3, 28, 28), np.uint8), np.full(3, 10, np.uint8), "out of range"),
        (np.zeros((3, 28, 28), np.uint8), np.zeros((3, 1), np.uint8), r"labels \[N\]"),
    ],
)
def test_fashion_mnist_rejects_mismatched_files(tmp_path, images, labels, message):
    write_fashion(tmp_path, images, labels, "train", gz=True)
    with pytest.raises(data.DataFormatError, match=message):
        data.load_dataset("fashion_mnist", "train", tmp_path)


@pytest.mark.skipif(
    not Path(data.FASHION_MNIST_DEFAULT_DIR).is_dir(), reason="Fashion-MNIST not installed"
)
def test_real_fashion_mnist_layout(monkeypatch):
    monkeypatch.delenv(data.FASHION_MNIST_ENV, raising=False)
    test = data.load_dataset("fashion_mnist", "test")
    assert test.images.shape == (10000, 28, 28, 1)
    assert test.images.min() >= 0.0 and test.images.max() <= 1.0
    assert np.array_equal(np.bincount(test.labels), np.full(10, 1000))  # Balanced test split.


# ----------------------------------------------------------------------------- digits / synthetic


def test_digits_split_is_a_deterministic_partition():
    from sklearn.datasets import load_digits

    train, test = data.load_dataset("digits", "train"), data.load_dataset("digits", "test")
    assert train.images.shape[1:] == (8, 8, 1) and train.images.dtype == np.float32
    assert train.num_examples + test.num_examples == 1797
    assert train.images.min() >= 0.0 and train.images.max() == 1.0
    # Train and test together are exactly sklearn's images (as a multiset, scaled by 1/16).
    ours = np.concatenate([train.images, test.images]).reshape(1797, -1) * 16.0
    reference = load_digits().images.reshape(1797, -1)
    key = lambda a: np.round(a).astype(np.int64).tolist()
    assert sorted(map(tuple, key(ours))) == sorted(map(tuple, key(reference)))
    np.testing.assert_array_equal(data.load_dataset("digits", "test").labels, test.labels)


def test_synthetic_is_deterministic_and_learnable_by_nearest_template():
    train, test = data.load_dataset("synthetic", "train"), data.load_dataset("synthetic", "test")
    np.testing.assert_array_equal(train.images, data.load_dataset("synthetic", "train").images)
    assert not np.array_equal(train.images[:10], test.images[:10])
    means = np.stack([train.images[train.labels == c].mean(0) for c in range(10)])
    distances = ((test.images[:, None] - means[None]) ** 2).sum(axis=(2, 3, 4))
    assert np.mean(distances.argmin(1) == test.labels) > 0.9


def test_load_dataset_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        data.load_dataset("mnist", "train")
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        data.load_dataset("digits", "valid")


# ----------------------------------------------------------------------------- CIFAR-10


def cifar_batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"testing batch",
        b"labels": rng.integers(0, 10, n).tolist(),
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def write_cifar(directory: Path, sizes=(3, 2, 2, 1, 2), test_size=4, protocol=2) -> dict:
    batches = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for seed, (name, n) in enumerate(zip(names, [*sizes, test_size], strict=True)):
        batches[name] = cifar_batch(n, seed)
        (directory / name).write_bytes(pickle.dumps(batches[name], protocol=protocol))
    return batches


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_pickle_batches(tmp_path, protocol):
    batches = write_cifar(tmp_path, protocol=protocol)
    train = data.load_dataset("cifar10", "train", tmp_path)
    test = data.load_dataset("cifar10", "test", tmp_path)
    assert train.images.shape == (10, 32, 32, 3) and test.images.shape == (4, 32, 32, 3)
    raw = batches["test_batch"][b"data"]
    # Row layout: 1024 red values, then green, then blue, each row-major 32x32.
    for i, c, h, w in [(0, 0, 0, 0), (1, 2, 31, 5), (3, 1, 7, 30)]:
        assert test.images[i, h, w, c] == pytest.approx(raw[i, c * 1024 + h * 32 + w] / 255.0)
    np.testing.assert_array_equal(test.labels, batches["test_batch"][b"labels"])
    expected_train = np.concatenate([batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)])
    np.testing.assert_array_equal(train.labels, expected_train)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_cifar10_refuses_code_in_pickles(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_cifar(tmp_path)
    batch = cifar_batch(4, 0)
    batch[b"batch_label"] = _Exploit()
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(data.DataFormatError, match="refusing to unpickle global"):
        data.load_dataset("cifar10", "test", tmp_path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda b: b.update({b"labels": b[b"labels"][:-1]}), "expected 4 labels"),
        (lambda b: b.update({b"data": b[b"data"][:, :100]}), "3072"),
        (lambda b: b.update({b"data": b[b"data"].astype(np.float64)}), "uint8"),
        (lambda b: b.update({b"labels": [11, 0, 0, 0]}), "out of range"),
        (lambda b: b.pop(b"data"), "no 'data'"),
    ],
)
def test_cifar10_rejects_malformed_batches(tmp_path, edit, message):
    write_cifar(tmp_path)
    batch = cifar_batch(4, 0)
    edit(batch)
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(data.DataFormatError, match=message):
        data.load_dataset("cifar10", "test", tmp_path)
    (tmp_path / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(data.DataFormatError, match="not a valid pickle"):
        data.load_dataset("cifar10", "test", tmp_path)


def test_cifar10_without_a_directory_says_where_to_point(monkeypatch):
    monkeypatch.delenv(data.CIFAR10_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match="XAIJAX_CIFAR10_DIR"):
        data.load_dataset("cifar10", "train")


# ----------------------------------------------------------------------------- batching


def numbered(n: int) -> data.Dataset:
    """Example i has every pixel equal to i and label i % 10, so batches reveal their indices."""
    images = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 2, 2, 1))
    return data.Dataset(np.ascontiguousarray(images), (np.arange(n) % 10).astype(np.int32))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 60), batch_size=st.integers(1, 17), extra=st.integers(0, 2))
def test_eval_batches_cover_every_example_once(n, batch_size, extra):
    ds = numbered(n)
    num_batches = data.num_eval_batches(n, batch_size) + extra
    batches = list(data.eval_batches(ds, batch_size, num_batches))
    assert len(batches) == num_batches
    assert all(x.shape == (batch_size, 2, 2, 1) and w.shape == (batch_size,) for x, _, w in batches)
    images = np.concatenate([x for x, _, _ in batches])
    weights = np.concatenate([w for _, _, w in batches])
    labels = np.concatenate([y for _, y, _ in batches])
    assert set(np.unique(weights)) <= {0.0, 1.0}
    np.testing.assert_array_equal(images[weights == 1, 0, 0, 0], np.arange(n))
    np.testing.assert_array_equal(labels[weights == 1], ds.labels)


def test_eval_batches_reject_too_few_batches():
    with pytest.raises(ValueError, match="need 3 batches"):
        list(data.eval_batches(numbered(10), 4, num_batches=2))


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 80), batch_size=st.integers(1, 20), seed=st.integers(0, 5))
def test_train_batches_shuffle_deterministically_without_repeats(n, batch_size, seed):
    ds = numbered(n)
    if batch_size > n:
        with pytest.raises(ValueError, match="exceeds"):
            list(data.train_batches(ds, batch_size, seed=seed, epoch=0))
        return
    first = [x[:, 0, 0, 0] for x, _ in data.train_batches(ds, batch_size, seed=seed, epoch=0)]
    again = [x[:, 0, 0, 0] for x, _ in data.train_batches(ds, batch_size, seed=seed, epoch=0)]
    assert len(first) == n // batch_size
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(again))
    seen = np.concatenate(first).astype(int)
    assert len(set(seen.tolist())) == len(seen) == (n // batch_size) * batch_size
    for x, y in data.train_batches(ds, batch_size, seed=seed, epoch=0):
        np.testing.assert_array_equal(y, x[:, 0, 0, 0].astype(int) % 10)  # Pairs stay together.


def test_epochs_and_seeds_change_the_order():
    order = lambda seed, epoch: data.epoch_permutation(1000, seed=seed, epoch=epoch)
    assert not np.array_equal(order(0, 0), order(0, 1))
    assert not np.array_equal(order(0, 0), order(1, 0))
    np.testing.assert_array_equal(np.sort(order(3, 7)), np.arange(1000))


@settings(max_examples=20, deadline=None)
@given(n=st.integers(0, 50), processes=st.integers(1, 6))
def test_shard_for_host_partitions(n, processes):
    ds = numbered(n)
    shards = [data.shard_for_host(ds, p, processes, drop_remainder=False) for p in range(processes)]
    together = np.concatenate([s.images[:, 0, 0, 0] for s in shards])
    np.testing.assert_array_equal(np.sort(together), np.arange(n))
    equal = [data.shard_for_host(ds, p, processes) for p in range(processes)]
    assert {s.num_examples for s in equal} == {n // processes}
    disjoint = np.concatenate([s.images[:, 0, 0, 0] for s in equal])
    assert len(set(disjoint.tolist())) == disjoint.size


def test_shard_for_host_rejects_bad_indices():
    with pytest.raises(ValueError, match="process_index"):
        data.shard_for_host(numbered(4), 2, 2)


def test_standardize_uses_train_statistics():
    splits = data.load_splits("synthetic", standardize=True, validation_size=100, seed=1)
    flat = splits.train.images.reshape(-1, 1)
    np.testing.assert_allclose(flat.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(flat.std(0), 1.0, atol=1e-4)
    raw = data.load_splits("synthetic", validation_size=100, seed=1)
    mean, std = data.channel_stats(raw.train)
    np.testing.assert_allclose(splits.test.images, (raw.test.images - mean) / std, atol=1e-5)
    assert splits.validation.num_examples == 100
    assert splits.train.num_examples + 100 == data.load_dataset("synthetic", "train").num_examples


def test_augment_batch_flips_and_crops_without_inventing_pixels():
    images = np.random.default_rng(0).uniform(size=(16, 6, 5, 2)).astype(np.float32)
    flipped = np.asarray(data.augment_batch(jax.random.key(0), images, flip=True, pad=0))
    for original, out in zip(images, flipped, strict=True):
        assert np.array_equal(out, original) or np.array_equal(out, original[:, ::-1])
    assert any(not np.array_equal(a, b) for a, b in zip(images, flipped, strict=True))
    pad = 2
    cropped = np.asarray(data.augment_batch(jax.random.key(1), images, flip=False, pad=pad))
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    for original, out in zip(padded, cropped, strict=True):
        windows = [
            original[dy : dy + 6, dx : dx + 5]
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
        ]
        assert any(np.array_equal(out, w) for w in windows)


def test_check_dataset_rejects_wrong_layout():
    with pytest.raises(ValueError, match="float32"):
        data.check_dataset(data.Dataset(np.zeros((2, 3, 3, 1)), np.zeros(2, np.int32)))
    with pytest.raises(ValueError, match="int32"):
        data.check_dataset(data.Dataset(np.zeros((2, 3, 3, 1), np.float32), np.zeros(2)))
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        data.check_dataset(data.Dataset(np.zeros((2, 3, 3, 1), np.float32), np.zeros(3, np.int32)))


def test_check_dataset_refuses_non_finite_pixels():
    images = np.zeros((5, 3, 3, 1), np.float32)
    images[3, 0, 0, 0] = np.nan
    images[1, 2, 1, 0] = np.inf
    images[3, 1, 1, 0] = -np.inf
    ds = data.Dataset(images, np.zeros(5, np.int32))
    with pytest.raises(data.DataFormatError, match=r"2 of 5 images .*NaN or infinite.*index 1\)"):
        data.check_dataset(ds)
    images[1, 2, 1, 0] = 0.0
    with pytest.raises(data.DataFormatError, match=r"1 of 5 images .*index 3\)"):
        data.check_dataset(ds)
    images[3] = 0.5
    assert data.check_dataset(ds) is ds


def test_load_dataset_refuses_a_built_dataset_with_nan_pixels(monkeypatch):
    def synthetic_with_nan(num_examples, **kwargs):
        ds = make_synthetic(num_examples, **kwargs)
        ds.images[7, 4, 4, 0] = np.nan
        return ds

    make_synthetic = data.make_synthetic
    monkeypatch.setattr(data.sources, "make_synthetic", synthetic_with_nan)
    with pytest.raises(data.DataFormatError, match=r"1 of 512 images .*index 7\)"):
        data.load_dataset("synthetic", "train")


@settings(max_examples=25, deadline=None)
@given(
    counts=st.lists(st.integers(3, 12), min_size=2, max_size=6),
    per_class=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_balanced_indices_take_per_class_distinct_examples_of_every_class(counts, per_class, seed):
    labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(len(counts)), counts))
    chosen = data.balanced_indices(labels, per_class, seed=seed)
    assert np.all(np.diff(chosen) > 0)  # sorted and distinct
    np.testing.assert_array_equal(np.bincount(labels[chosen]), np.full(len(counts), per_class))
    np.testing.assert_array_equal(chosen, data.balanced_indices(labels, per_class, seed=seed))


def test_balanced_indices_reject_bad_requests():
    labels = np.array([0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="class 0 has 2 examples, fewer than per_class=3"):
        data.balanced_indices(labels, 3, seed=0)
    with pytest.raises(ValueError, match="per_class must be an integer >= 1"):
        data.balanced_indices(labels, 0, seed=0)
