"""The main job end to end on digits: every report artifact, and kill-and-resume equivalence."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xaijax import artifact, pipeline, training
from xaijax.experiments import prune as prune_experiment
from xaijax.experiments import share as share_experiment
from xaijax.provenance import StaleResultError

REPO = Path(__file__).resolve().parents[2]

# The shared digits config (tests/e2e/conftest.py): two epochs, 64 examples scored.
DIGITS = dict(epochs=2, explain_examples=3, examples=64, prune_examples=128, hessian_samples=2)


@pytest.fixture(scope="module")
def finished(digits_config, tmp_path_factory) -> tuple[Path, dict]:
    workdir = tmp_path_factory.mktemp("pipeline") / "run"
    return workdir, pipeline.run(digits_config(), workdir)


def test_every_report_artifact(finished):
    workdir, results = finished
    for name in ("report.md", "results.json", "accuracy_vs_compression.png"):
        assert (workdir / name).stat().st_size > 0, name
    for name in ("explain/heatmaps.png", "explain/layer_importance.png"):
        assert (workdir / name).read_bytes()[:4] == b"\x89PNG", name
    assert list((workdir / "quantize").glob("bits_per_layer_*.png"))
    for stage in ("baseline", "explain", "prune/deeplift", "prune/magnitude", "share", "quantize"):
        assert (workdir / stage / "stage.json").exists(), stage
    report = (workdir / "report.md").read_text()
    for heading in ("## Stages", "### prune", "### share", "### quantize"):
        assert heading in report
    assert "## Explanation consistency" in report and len(results["consistency"]["rows"]) == 2
    assert all(
        -1.0 <= r["spearman"] <= 1.0 and 0.0 <= r["top_overlap"] <= 1.0
        for r in results["consistency"]["rows"]
    ), results["consistency"]["rows"]
    for image in ("accuracy_vs_compression.png", "explain/heatmaps.png"):
        assert f"]({image})" in report
    stages = results["summary"]["stages"]
    assert stages[0]["ratio"] == 1.0
    assert all(row["ratio"] > 1.0 for row in stages[1:])
    assert results["explain"]["max_delta_error"] < 1e-3
    # Accuracy floors: this config measured (2026-11-29) baseline 0.880, pruned (DeepLIFT) 0.357,
    # + 2-bit sharing 0.265, + 4-bit QAT 0.446; each floor is that less 0.05 (chance is 0.10).
    floors = (0.83, 0.30, 0.21, 0.39)
    for row, floor in zip(stages, floors, strict=True):
        assert row["accuracy"] >= floor, row
    on_disk = json.loads((workdir / "results.json").read_text())
    assert on_disk["summary"]["stages"] == json.loads(json.dumps(stages))


def test_rerun_recomputes_nothing(finished, digits_config):
    workdir, results = finished
    stamps = {p: p.stat().st_mtime_ns for p in workdir.rglob("stage.json")}
    again = pipeline.run(digits_config(), workdir)
    assert {p: p.stat().st_mtime_ns for p in workdir.rglob("stage.json")} == stamps
    assert again["summary"]["stages"] == results["summary"]["stages"]


def test_rerun_with_a_changed_field_recomputes_that_stage_and_reports_it(
    finished, digits_config, tmp_path
):
    """Changing a share field reuses baseline, explain, prune and quantize, recomputes share
    (its rows equal a fresh share run's on the same pruned model), and says so in the report;
    the strict policy refuses, naming the field, before touching the stage."""
    source, _ = finished
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir)
    changed = digits_config()
    changed.share.finetune_learning_rate = 3e-3

    strict = digits_config()
    strict.share.finetune_learning_rate = 3e-3
    strict.resume = "strict"
    share_record = workdir / "share" / "stage.json"
    stamp = share_record.stat().st_mtime_ns
    with pytest.raises(StaleResultError, match=r"share\.finetune_learning_rate"):
        pipeline.run(strict, workdir)
    assert share_record.stat().st_mtime_ns == stamp

    rerun = pipeline.run(changed, workdir)
    statuses = {stage: entry["status"] for stage, entry in rerun["provenance"].items()}
    assert statuses == {
        "baseline": "reused",
        "explain": "reused",
        "prune/deeplift": "reused",
        "prune/magnitude": "reused",
        "share": "recomputed",
        "quantize": "reused",
    }
    assert "share.finetune_learning_rate" in rerun["provenance"]["share"]["changed"]
    report = (workdir / "report.md").read_text()
    assert "| share | recomputed |" in report and "share.finetune_learning_rate" in report

    model = training.model_from_config(changed)
    carry_model, carry_variables = prune_experiment.load_result(model, workdir / "prune/deeplift")
    fresh = share_experiment.run(
        changed, tmp_path / "fresh_share", model=carry_model, variables=carry_variables
    )
    measured = {"wall_time_s", "score_time_s"}
    strip = lambda rows: [{k: v for k, v in r.items() if k not in measured} for r in rows]
    assert strip(rerun["share"]["rows"]) == strip(json.loads(json.dumps(fresh["rows"])))


def test_bad_section_fails_before_any_work(digits_config, tmp_path):
    config = digits_config()
    config.share.bits = (9,)
    with pytest.raises(ValueError, match=r"config\.share\.bits"):
        pipeline.run(config, tmp_path / "bad")
    assert not (tmp_path / "bad" / "baseline").exists()


def run_compress(config_file: Path, workdir: Path, *flags: str) -> subprocess.Popen:
    command = [
        sys.executable,
        str(REPO / "scripts" / "compress.py"),
        f"--config={config_file}",
        f"--workdir={workdir}",
        *flags,
    ]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


#: Runs scripts/compress.py and SIGKILLs it at the point named by $KILL_AT: ``replace:<suffix>``
#: when a file whose path ends with <suffix> is about to be moved into place (its temporary copy
#: written, the old one still there), ``save:<suffix>`` right after a train-state checkpoint
#: write into such a directory has started (orbax writes asynchronously), ``time:<seconds>``.
KILLER = """
import os, runpy, signal, sys, threading

from xaijax import checkpoint

kind, _, where = os.environ["KILL_AT"].partition(":")
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if kind == "replace":
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith(where):
            die()
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace
elif kind == "save":
    real_save = checkpoint.save_train_state

    def save(manager, state):
        real_save(manager, state)
        if str(manager.directory).endswith(where):
            die()

    checkpoint.save_train_state = save
else:
    threading.Timer(float(where), die).start()
sys.argv = ["compress.py", *sys.argv[1:]]
runpy.run_path(sys.argv.pop(1), run_name="__main__")
"""

KILL_POINTS = (
    "save:baseline/checkpoints",  # the baseline's first checkpoint, mid-write
    "replace:baseline/stage.json",  # a stage record written but not in place
    "replace:prune/magnitude/results.json",  # an experiment's results, mid-write
    "save:share/deeplift_2bit/finetune/checkpoints",  # fine-tuning inside a stage
    "replace:quantize/results.json",  # between two allocations
)


def test_killed_at_many_points_then_resumed_gives_the_uninterrupted_results(
    finished, config_file, tmp_path
):
    """SIGKILL the main job at checkpoint writes, result writes and a random moment, resuming
    each time; the final rows equal those of the uninterrupted run exactly."""
    workdir = tmp_path / "killed"
    driver = tmp_path / "killer.py"
    driver.write_text(KILLER)
    delay = np.random.default_rng(20261129).uniform(3.0, 15.0)
    for point in (*KILL_POINTS, f"time:{delay:.2f}"):
        command = [sys.executable, str(driver), str(REPO / "scripts" / "compress.py")]
        command += [f"--config={config_file}", f"--workdir={workdir}"]
        done = subprocess.run(
            command,
            cwd=REPO,
            env={**os.environ, "KILL_AT": point},
            capture_output=True,
            timeout=900,
        )
        if point.startswith("time:"):
            assert done.returncode in (0, -signal.SIGKILL), done.stderr.decode()[-3000:]
        else:
            assert done.returncode == -signal.SIGKILL, (point, done.stderr.decode()[-3000:])
    final = run_compress(config_file, workdir)
    _, stderr = final.communicate(timeout=900)
    assert final.returncode == 0, stderr.decode()[-3000:]
    resumed = json.loads((workdir / "results.json").read_text())
    expected = json.loads((finished[0] / "results.json").read_text())
    assert resumed["summary"]["stages"] == expected["summary"]["stages"]
    assert resumed["summary"]["criteria"] == expected["summary"]["criteria"]
    for stage, entry in resumed["provenance"].items():
        assert entry["fingerprint"] == expected["provenance"][stage]["fingerprint"], stage


def test_the_artifact_predicts_at_the_reported_accuracy(
    finished, config_file, tmp_path, digits_config
):
    """The artifact of the carried quantize run scores on the test set exactly as the report
    says and as the stage's integer model did; the script exports the same weights again."""
    workdir, results = finished
    entry = results["artifact"]
    loaded = artifact.load(workdir / "artifact")
    config = digits_config()
    test = training.datasets_from_config(config).test
    accuracy = loaded.accuracy(test.images, test.labels, batch_size=config.train.eval_batch_size)
    assert accuracy == entry["accuracy"] == loaded.manifest["accuracy"]
    source = entry["source"]
    assert (source["stage"], source["strategy"]) == ("quantize", "deeplift_sensitivity")
    (run,) = [r for r in results["quantize"]["runs"] if r["strategy"] == source["strategy"]]
    assert accuracy == run["qat_accuracy"] == source["accuracy"]
    assert entry["disk_bytes"] == artifact.disk_bytes(workdir / "artifact")
    # The computed size is the stage's (params) plus the float32 batch-norm statistics.
    stats = [w for name, w in loaded.manifest["weights"].items() if "/batch_stats/" in name]
    stats_bytes = 4 * sum(int(np.prod(w["shape"])) for w in stats)
    assert entry["computed_bytes"] == run["size"]["total"] + stats_bytes < entry["weights_bytes"]
    report = (workdir / "report.md").read_text()
    assert "## Deployable artifact" in report and f"{entry['disk_bytes']:,}" in report

    out = tmp_path / "exported"
    command = [sys.executable, str(REPO / "scripts" / "export_artifact.py")]
    command += [f"--config={config_file}", f"--workdir={workdir}", f"--out={out}"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    again = artifact.read_manifest(out)
    assert again["accuracy"] == accuracy
    assert again["files"]["weights"] == loaded.manifest["files"]["weights"]
