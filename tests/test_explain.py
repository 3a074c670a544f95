"""Explanations: heatmaps conserve the logit delta, per-layer importance shares, the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from xaijax import checkpoint, data
from xaijax.experiments import explain
from xaijax.models import get_model

REPO = Path(__file__).resolve().parents[1]
SMALL_LENET = {"conv1": 3, "conv2": 4, "fc1": 8, "fc2": 8}


def _png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_heatmaps_conserve_the_predicted_logit_delta(tmp_path):
    model = get_model("lenet5", widths=SMALL_LENET)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    images = np.random.default_rng(0).uniform(size=(3, 28, 28, 1)).astype(np.float32)
    result = explain.explain_images(model, variables, images)
    explain.heatmap_grid(tmp_path / "grid.png", images, np.array([1, 2, 3]), result)
    assert _png(tmp_path / "grid.png")
    logits = model.apply(variables, images)
    np.testing.assert_array_equal(result["predictions"], np.argmax(logits, axis=1))
    assert result["contributions"].shape == images.shape
    reference_logits = model.apply(variables, jnp.zeros((1, 28, 28, 1)))[0]
    delta = logits.max(axis=1) - reference_logits[result["predictions"]]
    total = result["contributions"].reshape(3, -1).sum(axis=1)
    np.testing.assert_allclose(total, delta, atol=1e-4 * (1 + float(np.abs(delta).max())))
    np.testing.assert_allclose(result["errors"], total - delta, atol=1e-4)


def test_run_writes_both_figures_and_shares_sum_to_one(tmp_path):
    model = get_model("lenet5", widths=SMALL_LENET)
    variables = jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, 28, 28, 1)))
    synthetic = data.make_synthetic(64, image_shape=(28, 28, 1), num_classes=10, seed=0)
    splits = data.Splits(train=synthetic, validation=None, test=synthetic)
    result = explain.run(
        model,
        variables,
        splits,
        tmp_path,
        criteria=("deeplift", "magnitude"),
        num_images=2,
        num_examples=32,
    )
    assert _png(tmp_path / result["heatmap_figure"]) and _png(
        tmp_path / result["importance_figure"]
    )
    assert result["max_delta_error"] < 1e-3
    for shares in result["layer_importance"].values():
        assert set(shares) == set(SMALL_LENET) | {"fc3"}
        np.testing.assert_allclose(sum(shares.values()), 1.0, rtol=1e-6)


def test_cli_explains_a_trained_workdir(tmp_path):
    from xaijax import training

    sys.path.insert(0, str(REPO / "configs"))
    try:
        import digits_smoke
    finally:
        sys.path.pop(0)
    config = digits_smoke.get_config()
    model = training.model_from_config(config)
    shape = training.datasets_from_config(config).test.images.shape[1:]
    variables = jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, *shape)))
    checkpoint.save_variables(tmp_path / "variables", jax.device_get(variables))
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "explain.py"),
            f"--config={REPO / 'configs' / 'digits_smoke.py'}",
            f"--workdir={tmp_path}",
            "--num_images=2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert _png(tmp_path / "explanations.png")
    assert "summation-to-delta error" in done.stdout
