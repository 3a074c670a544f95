"""The main job end to end on digits: every report artifact, and kill-and-resume equivalence."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from xaijax import pipeline

REPO = Path(__file__).resolve().parents[1]

SMOKE = REPO / "configs" / "digits_smoke.py"
CONFIG = f"""
import importlib.util

spec = importlib.util.spec_from_file_location("smoke", {str(SMOKE)!r})
smoke = importlib.util.module_from_spec(spec)
spec.loader.exec_module(smoke)


def get_config():
    config = smoke.get_config()
    config.train.epochs = 2
    config.compress.criteria = ("deeplift", "magnitude")
    config.compress.explain_examples = 3
    config.compress.importance_examples = 64
    config.prune.update(dict(num_examples=128, finetune_epochs=1))
    config.share.update(
        dict(bits=(2,), importances=("uniform", "deeplift"), num_examples=128, finetune_epochs=1)
    )
    config.quantize.update(
        dict(
            budgets=(4.0,),
            strategies=("uniform", "deeplift_sensitivity"),
            finetune_epochs=1,
            finetune_batch_size=64,
            importance_examples=64,
            importance_batch_size=64,
            hessian_examples=64,
            hessian_samples=2,
        )
    )
    return config
"""


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "pipeline_digits.py"
    path.write_text(CONFIG)
    return path


def load_config(path: Path):
    spec = importlib.util.spec_from_file_location("pipeline_digits", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.fixture(scope="module")
def finished(config_file, tmp_path_factory) -> tuple[Path, dict]:
    workdir = tmp_path_factory.mktemp("pipeline") / "run"
    return workdir, pipeline.run(load_config(config_file), workdir)


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
    for image in ("accuracy_vs_compression.png", "explain/heatmaps.png"):
        assert f"]({image})" in report
    stages = results["summary"]["stages"]
    assert stages[0]["ratio"] == 1.0
    assert all(row["ratio"] > 1.0 for row in stages[1:])
    assert results["explain"]["max_delta_error"] < 1e-3
    on_disk = json.loads((workdir / "results.json").read_text())
    assert on_disk["summary"]["stages"] == json.loads(json.dumps(stages))


def test_rerun_recomputes_nothing(finished, config_file):
    workdir, results = finished
    stamps = {p: p.stat().st_mtime_ns for p in workdir.rglob("stage.json")}
    again = pipeline.run(load_config(config_file), workdir)
    assert {p: p.stat().st_mtime_ns for p in workdir.rglob("stage.json")} == stamps
    assert again["summary"]["stages"] == results["summary"]["stages"]


def test_bad_section_fails_before_any_work(config_file, tmp_path):
    config = load_config(config_file)
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


def test_killed_mid_stage_then_rerun_gives_the_same_results(finished, config_file, tmp_path):
    """Kill ``compress.py`` while the first pruning stage fine-tunes; the rerun must finish with
    the results of the uninterrupted run (for speed this run stops after pruning)."""
    workdir = tmp_path / "killed"
    flags = ["--config.compress.stages=('prune',)", "--config.compress.criteria=('deeplift',)"]
    process = run_compress(config_file, workdir, *flags)
    marker = workdir / "prune" / "deeplift" / "finetune_1" / "checkpoints"
    deadline = time.monotonic() + 300
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the pipeline ended before it could be killed mid-stage"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert not (workdir / "prune" / "deeplift" / "stage.json").exists()
    assert (workdir / "baseline" / "stage.json").exists()

    rerun = run_compress(config_file, workdir, *flags)
    _, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr.decode()[-3000:]
    resumed = json.loads((workdir / "results.json").read_text())["summary"]["stages"]
    expected = finished[1]["summary"]["stages"][: len(resumed)]
    assert [row["stage"] for row in resumed] == [row["stage"] for row in expected]
    assert len(resumed) == 2  # baseline, pruned
    for got, want in zip(resumed, expected, strict=True):
        for key in ("accuracy", "params", "flops", "size_bytes"):
            np.testing.assert_allclose(got[key], want[key], rtol=1e-6, err_msg=got["stage"])
