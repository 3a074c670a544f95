"""Training, integer export and artifacts with a ``gs://`` workdir on the in-memory object store
(``memory_store``), compared with the same work in a local workdir.

Train-state checkpoints of a ``gs://`` workdir are redirected to a local folder here (the
``local_orbax`` fixture): orbax writes ``gs://`` arrays with tensorstore's own GCS driver, which
no epath backend can serve. Everything else goes through the store.
"""

from __future__ import annotations

import json
import os
import re
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath
from memory_store import MemoryStore, serve_gs
from tensorboardX.proto import event_pb2
from test_training import digits_setup

from xaijax import artifact, checkpoint, data, models, paths, quantization, training

TIMING = ("steps_per_sec", "images_per_sec")
BITS = {"conv1": 4, "conv2": 8, "fc1": 2, "fc2": 3, "fc3": 6}
SHAPE = (28, 28, 1)


@pytest.fixture
def store(monkeypatch) -> MemoryStore:
    return serve_gs(monkeypatch)


@pytest.fixture
def local_orbax(monkeypatch, tmp_path):
    """Train-state checkpoints of ``gs://`` workdirs in ``tmp_path/orbax`` (module doc)."""
    original = checkpoint.checkpoint_manager

    def redirected(directory, **kwargs):
        text = os.fspath(directory)
        if text.startswith("gs://"):
            directory = tmp_path / "orbax" / text.removeprefix("gs://")
        return original(directory, **kwargs)

    monkeypatch.setattr(checkpoint, "checkpoint_manager", redirected)
    return tmp_path / "orbax"


def objects_under(store: MemoryStore, prefix: str) -> dict[str, bytes]:
    """The store's objects below ``prefix``, by name relative to it."""
    return {k[len(prefix) + 1 :]: v for k, v in store.objects.items() if k.startswith(prefix + "/")}


def records(text: str) -> list[dict]:
    """The records of a ``metrics.jsonl``, timing fields dropped (they differ run to run)."""
    lines = [json.loads(line) for line in text.splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in lines]


def scalars(event_file: bytes) -> list[tuple[int, str, float]]:
    """``(step, tag, value)`` of every scalar in a TensorBoard event file (TFRecord framing:
    u64 length, u32 crc, payload, u32 crc), timing tags dropped."""
    found, offset = [], 0
    while offset < len(event_file):
        (length,) = struct.unpack("<Q", event_file[offset : offset + 8])
        event = event_pb2.Event.FromString(event_file[offset + 12 : offset + 12 + length])
        offset += 12 + length + 4
        found += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
    return sorted(s for s in found if s[1].split("/")[-1] not in TIMING)


def metadata_files(names) -> set[str]:
    """The ``names`` of an orbax directory's files outside its data folders (``d/``: their number
    and random names vary from save to save)."""
    return {name for name in names if not re.search(r"(^|/)d/", name)}


def assert_trees_equal(a, b, rtol: float = 0.0):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=0.0), a, b)


# The mirror and the metric writer.


def test_a_local_mirror_is_the_destination_itself(tmp_path):
    mirror = paths.LocalMirror(tmp_path / "run")
    (mirror.local / "m.txt").write_text("x")
    assert mirror.local == tmp_path / "run" and mirror.sync() == []
    mirror.close()
    assert (tmp_path / "run" / "m.txt").read_text() == "x"


def test_a_remote_mirror_uploads_changed_files_whole_and_continues_downloads(store):
    run = epath.Path("gs://bucket/run")
    (run / "log.txt").write_text("earlier\n")
    (run / "other.txt").write_text("not downloaded")
    store.uploads.clear()
    mirror = paths.LocalMirror(run, download=("log.txt", "absent.txt"))
    local = mirror.local
    assert sorted(p.name for p in local.iterdir()) == ["log.txt"]
    assert mirror.sync() == []  # The download is what the store holds: nothing to upload.
    with open(local / "log.txt", "a") as log:
        log.write("later\n")
    (local / "sub").mkdir()
    (local / "sub" / "new.bin").write_bytes(b"\x00\x01")
    assert sorted(map(str, mirror.sync())) == [f"{run}/log.txt", f"{run}/sub/new.bin"]
    assert mirror.sync() == []
    mirror.close()
    assert not local.exists()
    assert objects_under(store, str(run)) == {
        "log.txt": b"earlier\nlater\n",
        "other.txt": b"not downloaded",
        "sub/new.bin": b"\x00\x01",
    }
    assert sorted(store.uploads) == [f"{run}/log.txt", f"{run}/sub/new.bin"]


def test_metric_writer_on_gs_continues_the_log_and_uploads_when_due(store):
    path = "gs://bucket/run/metrics.jsonl"
    epath.Path(path).write_text('{"kind": "eval", "step": 0}\n')
    writer = training.MetricWriter("gs://bucket/run", upload_every_s=0)
    for step in (1, 2):
        writer.write({"kind": "train", "step": step, "loss": np.float32(step / 4)})
        uploaded = [json.loads(line) for line in epath.Path(path).read_text().splitlines()]
        assert [r["step"] for r in uploaded] == list(range(step + 1))
    assert uploaded[-1] == {"kind": "train", "step": 2, "loss": 0.5}
    writer.close()
    assert store.uploads.count(path) == 3  # The seed and one per write; close had nothing new.

    slow = training.MetricWriter("gs://bucket/slow", upload_every_s=3600)
    slow.write({"kind": "train", "step": 1, "loss": 1.0})
    assert not epath.Path("gs://bucket/slow/metrics.jsonl").exists()
    slow.close()
    assert records(epath.Path("gs://bucket/slow/metrics.jsonl").read_text()) == [
        {"kind": "train", "step": 1, "loss": 1.0}
    ]
    with pytest.raises(ValueError, match="upload_every_s"):
        training.MetricWriter("gs://bucket/x", upload_every_s=-1)


# Training.


def test_gs_training_resumes_and_logs_as_the_local_run(store, local_orbax, tmp_path):
    state, train, test = digits_setup()
    train, test = data.subset(train, slice(0, 256)), data.subset(test, slice(0, 100))
    kwargs = {"batch_size": 64, "seed": 3, "log_every_steps": 3, "progress": False}
    local, local_history = training.fit(
        state, train, test, workdir=tmp_path / "local", epochs=2, **kwargs
    )
    run = "gs://bucket/run"
    training.fit(state, train, test, workdir=run, epochs=1, **kwargs)  # Then resumed:
    remote, remote_history = training.fit(state, train, test, workdir=run, epochs=2, **kwargs)

    assert int(remote.step) == int(local.step) == 8
    assert sorted(p.name for p in (local_orbax / "bucket" / "run" / "checkpoints").iterdir()) == [
        "4",
        "8",
    ]
    for name in ("params", "batch_stats", "opt_state"):
        assert_trees_equal(getattr(remote, name), getattr(local, name), rtol=1e-6)
    assert [r["epoch"] for r in remote_history] == [2]
    assert remote_history[0]["accuracy"] == local_history[-1]["accuracy"]

    stored = objects_under(store, run)
    events = sorted(name for name in stored if name.startswith("tensorboard/events.out.tfevents"))
    assert sorted(stored) == sorted(["metrics.jsonl", *events]) and len(events) == 2
    local_log = records((tmp_path / "local" / "metrics.jsonl").read_text())
    remote_log = records(stored["metrics.jsonl"].decode())
    assert [(r["kind"], r["step"]) for r in remote_log] == [
        (r["kind"], r["step"]) for r in local_log
    ]
    for got, want in zip(remote_log, local_log, strict=True):
        assert got.keys() == want.keys()
        numbers = [k for k in want if k != "kind"]
        np.testing.assert_allclose([got[k] for k in numbers], [want[k] for k in numbers], 1e-6)
    (local_events,) = (tmp_path / "local" / "tensorboard").glob("events.out.tfevents.*")
    remote_scalars = sorted(s for name in events for s in scalars(stored[name]))
    local_scalars = scalars(local_events.read_bytes())
    assert [s[:2] for s in remote_scalars] == [s[:2] for s in local_scalars]
    np.testing.assert_allclose([s[2] for s in remote_scalars], [s[2] for s in local_scalars], 1e-6)


# Saved variables and the integer export.


@pytest.fixture(scope="module")
def lenet():
    """LeNet-5 with numpy-drawn weights (no training), images and labels."""
    model = models.get_model("lenet5")
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *SHAPE), jnp.float32))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(
        lambda leaf: (0.1 * rng.standard_normal(leaf.shape)).astype(np.float32), abstract
    )
    images = rng.uniform(0.0, 1.0, (9, *SHAPE)).astype(np.float32)
    return model, variables, data.Dataset(images, (np.arange(9) % 10).astype(np.int32))


def test_gs_integer_export_round_trips_like_the_local_one(store, lenet, tmp_path):
    _, variables, _ = lenet
    exported = quantization.export_integer_model(variables, BITS, pack=True)
    local_size = quantization.save_integer_model(tmp_path / "export", exported)
    remote = "gs://bucket/run/quantize/export"
    remote_size = quantization.save_integer_model(remote, exported)

    stored = objects_under(store, remote)
    local_files = paths.files_under(tmp_path / "export")
    local_names = [str(f.relative_to(tmp_path / "export")) for f in local_files]
    assert metadata_files(stored) == metadata_files(local_names)
    assert store.uploads[-1] == f"{remote}/_CHECKPOINT_METADATA"  # The completion mark, last.
    assert remote_size == sum(map(len, stored.values())) == quantization.directory_size(remote)
    assert local_size == sum(os.path.getsize(f) for f in local_files)
    for restored in (quantization.load_integer_model(remote), checkpoint.load_variables(remote)):
        assert jax.tree.structure(restored) == jax.tree.structure(exported)
        for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(exported), strict=True):
            np.testing.assert_array_equal(a, b)
            assert a.dtype == np.asarray(b).dtype

    unpacked = quantization.export_integer_model(variables, BITS, pack=False)
    quantization.save_integer_model(remote, unpacked)  # Replaces: no object of the first stays.
    assert not set(stored.items()) & set(objects_under(store, remote).items())
    assert_trees_equal(quantization.load_integer_model(remote), unpacked)

    del store.objects[f"{remote}/_CHECKPOINT_METADATA"]
    with pytest.raises(FileNotFoundError, match="unfinished"):
        checkpoint.load_variables(remote)
    with pytest.raises(FileNotFoundError, match="no saved variables"):
        checkpoint.load_variables("gs://bucket/absent")


# The deployable artifact of a workdir.


def test_gs_artifact_export_and_load_equal_the_local_ones(store, lenet, tmp_path):
    model, variables, test = lenet
    exported = quantization.export_integer_model(variables, BITS, pack=True)
    run = {
        "strategy": "deeplift_knapsack",
        "budget": 4.0,
        "allocation": "a0",
        "bits": BITS,
        "integer_accuracy": 0.5,
        "size": {"total": 1.0},
    }
    results = {"model": "lenet5", "dataset": "synthetic", "quantize": {"runs": [run]}}
    summaries, loaded = {}, {}
    for where, workdir in (("local", tmp_path / "run"), ("gs", "gs://bucket/run")):
        export_dir = epath.Path(workdir) / "quantize" / "allocations" / "a0" / "export"
        quantization.save_integer_model(export_dir, exported)
        summaries[where] = artifact.export_final(
            workdir, results, carry="deeplift", model=model, variables=variables, test=test
        )
        loaded[where] = artifact.load(epath.Path(workdir) / "artifact")

    assert summaries["gs"] == summaries["local"]
    assert summaries["gs"]["path"] == "artifact" and summaries["gs"]["encoding"] == "integer"
    stored = objects_under(store, "gs://bucket/run/artifact")
    assert stored == {
        name: (tmp_path / "run" / "artifact" / name).read_bytes()
        for name in (artifact.writer.PROGRAM, artifact.writer.WEIGHTS, artifact.writer.MANIFEST)
    }
    assert loaded["gs"].manifest == loaded["local"].manifest
    logits = loaded["gs"].predict(test.images)
    np.testing.assert_array_equal(logits, loaded["local"].predict(test.images))
    reference = model.apply(quantization.dequantize(exported), test.images, train=False)
    np.testing.assert_allclose(logits, reference, rtol=1e-5, atol=1e-5)
    assert loaded["gs"].accuracy(test.images, test.labels) == summaries["gs"]["accuracy"]
