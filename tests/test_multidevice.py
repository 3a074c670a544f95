"""Data parallelism: 8 fake CPU devices train to the same parameters as 1 device.

XLA_FLAGS must be set before jax is imported, so the comparison runs in a fresh process that
imports this module and calls :func:`compare_meshes`.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from xaijax import config_utils, data, models, sharding, training

REPO = Path(__file__).resolve().parents[1]
NUM_DEVICES = 8
TINY_VGG = {"conv1": 8, "conv2": 8, "conv3": 16, "conv4": 16, "fc1": 32}


def compare_meshes(workdir: str) -> None:
    """Train the same state on a 1-device and an 8-device mesh; print the differences."""
    assert jax.device_count() == NUM_DEVICES, jax.devices()
    train = data.subset(data.load_dataset("digits", "train"), slice(0, 640))
    test = data.load_dataset("digits", "test")  # 359 examples: not a multiple of 8.
    model = models.get_model("vgg_small", widths=TINY_VGG)
    # SGD: updates are linear in the gradients, so float reassociation in the cross-device
    # reductions stays at rounding level (Adam's g / sqrt(v) would amplify it for tiny gradients).
    optimizer = config_utils.training_config().optimizer
    optimizer.update({"name": "sgd", "learning_rate": 0.05, "momentum": 0.9})
    tx = training.make_optimizer(optimizer, steps_per_epoch=10, epochs=2)
    state = training.create_train_state(model, tx, 0, (1, 8, 8, 1))
    meshes = {
        "one": sharding.make_mesh(jax.devices()[:1]),
        "all": sharding.make_mesh(),
    }
    results = {}
    for name, mesh in meshes.items():
        trained, history = training.fit(
            state,
            train,
            test,
            workdir=Path(workdir) / name,
            epochs=2,
            batch_size=64,
            seed=1,
            eval_batch_size=100,
            log_every_steps=5,
            mesh=mesh,
            progress=False,
        )
        evaluation = training.evaluate(trained, test, 100, mesh=mesh)
        results[name] = (trained, history, evaluation)
    (one, one_history, one_eval), (many, many_history, many_eval) = results.values()
    difference = lambda a, b: max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )
    staged = sharding.shard_batches(meshes["all"], np.zeros((2, 64, 8, 8, 1), np.float32))[0]
    report = {
        "devices": jax.device_count(),
        "staged_batch_devices": len(staged.sharding.device_set),
        "staged_shard_shape": list(staged.addressable_shards[0].data.shape),
        "params_replicated": all(
            leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == NUM_DEVICES
            for leaf in jax.tree.leaves(many.params)
        ),
        "params_max_abs_diff": difference(one.params, many.params),
        "params_max_abs": max(float(np.max(np.abs(x))) for x in jax.tree.leaves(one.params)),
        "batch_stats_max_abs_diff": difference(one.batch_stats, many.batch_stats),
        "params_moved": difference(state.params, one.params),
        "eval_one": one_eval,
        "eval_all": many_eval,
        "history_one": [r["accuracy"] for r in one_history],
        "history_all": [r["accuracy"] for r in many_history],
    }
    print("RESULT " + json.dumps(report))


def test_eight_devices_match_one(tmp_path):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={NUM_DEVICES}"}
    env["JAX_PLATFORMS"] = "cpu"
    code = (
        f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r}); import test_multidevice; "
        f"test_multidevice.compare_meshes({str(tmp_path)!r})"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    report = json.loads(line.removeprefix("RESULT "))
    assert report["devices"] == NUM_DEVICES
    assert report["staged_batch_devices"] == NUM_DEVICES
    assert report["staged_shard_shape"] == [2, 64 // NUM_DEVICES, 8, 8, 1]
    assert report["params_replicated"]
    assert report["params_moved"] > 1e-2  # Training did happen.
    assert report["params_max_abs_diff"] < 1e-5 * max(1.0, report["params_max_abs"])
    assert report["batch_stats_max_abs_diff"] < 1e-5
    assert report["eval_one"]["num_examples"] == report["eval_all"]["num_examples"] == 359
    assert abs(report["eval_one"]["loss"] - report["eval_all"]["loss"]) < 1e-4
    assert abs(report["eval_one"]["accuracy"] - report["eval_all"]["accuracy"]) <= 1 / 359
    assert len(report["history_all"]) == 2
