"""Workdir paths (xaijax.paths): local writes as before, and ``gs://`` workdirs end to end on an
in-memory object store registered as epath's ``gs`` backend for the test."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest
from etils import epath
from memory_store import MemoryStore, serve_gs

from xaijax import checkpoint, paths, pipeline, provenance, report
from xaijax.artifact import writer
from xaijax.experiments import sweep
from xaijax.study import ablation, rows


@pytest.fixture
def store(monkeypatch) -> MemoryStore:
    """The in-memory store, serving every ``gs://`` path for the test."""
    return serve_gs(monkeypatch)


def test_the_store_serves_gs_paths(store):
    path = epath.Path("gs://bucket/run/x.txt")
    path.write_text("hi")
    assert store.objects == {"gs://bucket/run/x.txt": b"hi"}
    assert path.read_text() == "hi" and epath.Path("gs://bucket/run").is_dir()
    assert not paths.is_local(path) and paths.is_local("runs/x") and paths.is_local(pathlib.Path())


def test_as_path_checks_its_input():
    assert paths.as_path("runs/a") == epath.Path("runs/a")
    assert str(paths.as_path("gs://bucket/run") / "x") == "gs://bucket/run/x"
    with pytest.raises(TypeError, match=r"str or os\.PathLike"):
        paths.as_path(3)
    with pytest.raises(ValueError, match="empty"):
        paths.as_path("")


# Local paths: today's behaviour.


def test_local_atomic_write_replaces_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "sub" / "result.json"
    checkpoint.write_json_atomic(target, {"a": 1, "where": tmp_path})
    checkpoint.write_json_atomic(target, {"a": 2, "where": epath.Path(tmp_path)})
    assert json.loads(target.read_text()) == {"a": 2, "where": str(tmp_path)}
    assert os.listdir(target.parent) == ["result.json"]
    assert report.write_text_atomic(tmp_path / "r.md", "text") == epath.Path(tmp_path / "r.md")
    assert sorted(os.listdir(tmp_path)) == ["r.md", "sub"]


def test_local_failed_write_keeps_the_old_file_and_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "result.txt"
    report.write_text_atomic(target, "old")

    def failing_replace(source, destination):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        report.write_text_atomic(target, "new")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["result.txt"]


def test_local_figure_is_written_whole(tmp_path):
    path = report.line_plot(tmp_path / "f.png", {"a": ([1, 2], [3, 4])}, xlabel="x", ylabel="y")
    assert path.read_bytes().startswith(b"\x89PNG") and os.listdir(tmp_path) == ["f.png"]


def test_local_remove_does_not_follow_links(tmp_path):
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "file").write_text("x")
    (tmp_path / "link").symlink_to(kept)
    paths.remove(tmp_path / "link")
    paths.remove(tmp_path / "missing")
    assert (kept / "file").exists() and not (tmp_path / "link").exists()
    paths.remove(kept)
    assert os.listdir(tmp_path) == []


def test_local_variables_round_trip_through_epath(tmp_path):
    variables = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}}
    checkpoint.save_variables(epath.Path(tmp_path) / "v", variables)
    np.testing.assert_array_equal(
        checkpoint.load_variables(str(tmp_path / "v"))["params"]["w"], variables["params"]["w"]
    )


def test_checkpoint_paths_local_absolute_urls_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert checkpoint.checked_path("ckpt") == epath.Path(tmp_path / "ckpt")
    assert str(checkpoint.checked_path("gs://bucket/run/ckpt")) == "gs://bucket/run/ckpt"
    with pytest.raises(ValueError, match="bracket"):
        checkpoint.checked_path("gs://bucket/run[1]")


def test_fingerprints_do_not_depend_on_the_path_class():
    digests = {
        provenance.fingerprint(dir=p).digest
        for p in ("runs/a", pathlib.Path("runs/a"), epath.Path("runs/a"))
    }
    assert len(digests) == 1


def test_local_ablation_copy_is_renamed_into_place(tmp_path):
    source = tmp_path / "study" / "baseline"
    (source / "variables").mkdir(parents=True)
    (source / "variables" / "a").write_text("weights")
    (source / "stage.json").write_text("{}")
    destination = tmp_path / "variant" / "baseline"
    ablation._copy_atomic(source, destination)
    assert (destination / "variables" / "a").read_text() == "weights"
    assert os.listdir(tmp_path / "variant") == ["baseline"]
    assert ablation._copied(destination)


# A gs:// workdir on the in-memory store.


def test_gs_json_result_is_one_upload_and_reads_back(store):
    path = "gs://bucket/run/prune/results.json"
    checkpoint.write_json_atomic(path, {"accuracy": np.float32(0.5), "dir": epath.Path(path)})
    assert store.uploads == [path]  # The object itself: no temporary object, no rename.
    assert json.loads(epath.Path(path).read_text()) == {"accuracy": 0.5, "dir": path}


def test_gs_text_figure_and_rows(store):
    run = epath.Path("gs://bucket/run")
    report.write_text_atomic(run / "report.md", "# report\n")
    report.line_plot(run / "f.png", {"a": ([1, 2], [3, 4])}, xlabel="x", ylabel="y")
    rows.write_rows(run / "rows.jsonl", [{"seed": 0}, {"seed": 1}])
    assert (run / "report.md").read_text() == "# report\n"
    assert store.objects["gs://bucket/run/f.png"].startswith(b"\x89PNG")
    assert rows.read_rows("gs://bucket/run/rows.jsonl") == [{"seed": 0}, {"seed": 1}]
    assert sorted(store.uploads) == [
        f"gs://bucket/run/{n}" for n in ("f.png", "report.md", "rows.jsonl")
    ]


def test_gs_sweep_csv_round_trip(store):
    row = {
        "granularity": "unit",
        "criterion": "deeplift",
        "sparsity": 0.5,
        **{k: 1 for k in sweep.SWEEP_COLUMNS if k not in ("granularity", "criterion", "sparsity")},
        "fingerprint": "abc",
    }
    path = "gs://bucket/run/sweep.csv"
    report.write_csv_atomic(path, [row], columns=tuple(sweep.SWEEP_COLUMNS))
    local = sweep.read_sweep_rows(path)
    assert len(local) == 1 and local[0]["criterion"] == "deeplift" and local[0]["sparsity"] == 0.5
    assert sweep.read_sweep_rows("gs://bucket/run/absent.csv") == []


def test_gs_claim_round_trip(store):
    directory = "gs://bucket/run/baseline/train"
    fp = provenance.fingerprint(config={"lr": 0.1})
    assert provenance.claim(directory, fp, what="baseline", policy="strict").status == "new"
    assert provenance.recorded_inputs(directory) == dict(fp.inputs)
    epath.Path(directory, "checkpoints", "1", "data").write_bytes(b"partial")
    assert provenance.claim(directory, fp, what="baseline", policy="strict").status == "resumed"
    assert epath.Path(directory, "checkpoints", "1", "data").exists()
    other = provenance.fingerprint(config={"lr": 0.2})
    with pytest.raises(provenance.StaleResultError, match=r"config\.lr"):
        provenance.claim(directory, other, what="baseline", policy="strict")
    found = provenance.claim(directory, other, what="baseline", policy="recompute")
    assert found.status == "recomputed" and found.changed == ("config.lr",)
    assert sorted(store.objects) == [f"{directory}/{provenance.FINGERPRINT_FILE}"]
    assert provenance.recorded_inputs(directory) == dict(other.inputs)


def test_gs_stage_marker_round_trip(store):
    workdir = epath.Path("gs://bucket/run")
    fp = provenance.fingerprint(stage={"x": 1})
    calls = []

    def compute(stage_dir: epath.Path) -> dict:
        calls.append(str(stage_dir))
        (stage_dir / "out.txt").write_text("done")
        return {"accuracy": 0.75}

    first = pipeline.run_stage(workdir, "prune", fp, compute, policy="strict")
    again = pipeline.run_stage(workdir, "prune", fp, compute, policy="strict")
    assert first == (
        {"accuracy": 0.75},
        {"fingerprint": fp.digest, "changed": [], "status": "computed"},
    )
    assert again[0] == {"accuracy": 0.75} and again[1]["status"] == "reused"
    assert calls == ["gs://bucket/run/prune"]
    record = json.loads(store.objects["gs://bucket/run/prune/stage.json"])
    assert record["digest"] == fp.digest and record["results"] == {"accuracy": 0.75}


def test_copy_tree_uploads_the_marker_last(store, tmp_path):
    source = tmp_path / "stage"
    (source / "a" / "b").mkdir(parents=True)
    (source / "a" / "b" / "w").write_bytes(b"w")
    (source / "stage.json").write_text("{}")
    (source / "z").write_text("z")
    paths.copy_tree(source, "gs://bucket/copy", last=("stage.json",))
    assert store.uploads[-1] == "gs://bucket/copy/stage.json"
    assert sorted(store.uploads) == [f"gs://bucket/copy/{n}" for n in ("a/b/w", "stage.json", "z")]
    back = tmp_path / "back"
    paths.copy_tree("gs://bucket/copy", back)
    assert (back / "a" / "b" / "w").read_bytes() == b"w" and (back / "z").read_text() == "z"
    with pytest.raises(FileExistsError, match="destination exists"):
        paths.copy_tree(source, "gs://bucket/copy")
    paths.remove("gs://bucket/copy")
    assert store.objects == {}


def test_gs_ablation_copy_redoes_an_unfinished_copy(store):
    source = epath.Path("gs://bucket/study/seed_0/baseline")
    (source / "variables" / "a").write_bytes(b"weights")
    (source / "stage.json").write_text("{}")
    destination = epath.Path("gs://bucket/variant/seed_0/baseline")
    (destination / "variables" / "stale").write_bytes(b"from an interrupted copy")
    assert not ablation._copied(destination)
    ablation._copy_atomic(source, destination)
    assert ablation._copied(destination)
    assert sorted(k for k in store.objects if k.startswith(str(destination))) == [
        f"{destination}/stage.json",
        f"{destination}/variables/a",
    ]


def test_gs_artifact_upload_replaces_an_artifact_manifest_last(store, tmp_path):
    staging = tmp_path / "staging"
    staging.mkdir()
    for name in (writer.PROGRAM, writer.WEIGHTS, writer.MANIFEST):
        (staging / name).write_bytes(name.encode())
    target = epath.Path("gs://bucket/run/artifact")
    (target / writer.MANIFEST).write_text("{}")
    (target / "old_file").write_text("old")
    writer._upload_dir(staging, target)
    assert store.uploads[-1] == f"{target}/{writer.MANIFEST}"
    assert sorted(p.name for p in target.iterdir()) == sorted(
        [writer.PROGRAM, writer.WEIGHTS, writer.MANIFEST]
    )
    assert writer.disk_bytes(target) == sum(
        len(n.encode()) for n in (writer.PROGRAM, writer.WEIGHTS, writer.MANIFEST)
    )
    other = epath.Path("gs://bucket/run/not_an_artifact")
    (other / "notes.txt").write_text("mine")
    with pytest.raises(writer.ArtifactError, match="not an artifact"):
        writer._upload_dir(staging, other)
    assert (other / "notes.txt").read_text() == "mine"
