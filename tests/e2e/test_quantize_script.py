"""End-to-end: scripts/quantize.py on digits (small VGG), every strategy at one budget, resumed."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import jax

from xaijax import checkpoint
from xaijax.experiments import quantize
from xaijax.models import get_model

REPO = Path(__file__).resolve().parents[2]
WIDTHS = {"conv1": 4, "conv2": 4, "conv3": 8, "conv4": 8, "fc1": 16}

CONFIG = f"""
import importlib.util

spec = importlib.util.spec_from_file_location("base", {str(REPO / "configs" / "digits_smoke.py")!r})
base = importlib.util.module_from_spec(spec)
spec.loader.exec_module(base)


def get_config():
    config = base.get_config()
    config.model.widths = {WIDTHS!r}
    config.quantize.update(
        {{
            "budgets": (4.0,),
            "finetune_epochs": 1,
            "finetune_batch_size": 64,
            "importance": {{"num_examples": 64, "batch_size": 64}},
            "hessian_examples": 64,
            "hessian_samples": 2,
        }}
    )
    return config
"""


def run_script(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "scripts" / "quantize.py"), *flags]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_quantize_script_end_to_end(tmp_path):
    config_path = tmp_path / "config.py"
    config_path.write_text(CONFIG)
    model = get_model("vgg_small", widths=WIDTHS)
    variables = jax.jit(lambda k, x: model.init(k, x, train=False))(
        jax.random.key(0), jax.numpy.zeros((1, 8, 8, 1))
    )
    checkpoint.save_variables(tmp_path / "variables", jax.device_get(variables))
    workdir = tmp_path / "run"
    done = run_script(
        tmp_path,
        f"--config={config_path}",
        f"--workdir={workdir}",
        f"--config.quantize.variables_dir={tmp_path / 'variables'}",
    )
    assert done.returncode == 0, done.stderr[-3000:]

    results = json.loads((workdir / "results.json").read_text())
    sizes = results["layer_sizes"]
    assert [r["strategy"] for r in results["runs"]] == [
        "uniform",
        "deeplift_rank",
        "deeplift_sensitivity",
        "hessian",
    ]
    for run in results["runs"]:
        assert sum(sizes[n] * b for n, b in run["bits"].items()) <= 4 * sum(sizes.values())
        assert run["integer_accuracy"] == run["qat_accuracy"]
        assert run["disk_bytes"] > 0 and 0 <= run["ptq_accuracy"] <= 1
    assert results["runs"][0]["bits"] == dict.fromkeys(sizes, 4)
    with open(workdir / "results.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 4
    for name in ("bits_per_layer_b4.png", "accuracy_vs_size_ptq.png", "accuracy_vs_size_qat.png"):
        assert (workdir / name).stat().st_size > 0

    # A rerun (in-process) finds every allocation finished: same results, nothing recomputed.
    allocations = sorted(p.name for p in (workdir / "allocations").iterdir())
    run_files = {p: p.stat().st_mtime_ns for p in (workdir / "allocations").rglob("*.json")}
    spec = importlib.util.spec_from_file_location("quantize_config", config_path)
    config_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(config_module)
    config = config_module.get_config()
    config.quantize.variables_dir = str(tmp_path / "variables")
    rerun = quantize.run(config, workdir)
    assert {p: p.stat().st_mtime_ns for p in (workdir / "allocations").rglob("*.json")} == run_files
    assert [r["qat_accuracy"] for r in rerun["runs"]] == [
        r["qat_accuracy"] for r in results["runs"]
    ]
    assert sorted(p.name for p in (workdir / "allocations").iterdir()) == allocations

    bad = run_script(
        tmp_path,
        f"--config={config_path}",
        f"--workdir={tmp_path / 'bad'}",
        "--config.quantize.budgets=(1.5,)",
    )
    assert bad.returncode != 0 and "below the 2-bit minimum" in bad.stderr
