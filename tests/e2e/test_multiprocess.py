"""Scale-out equivalence with a single device.

* Two ``jax.distributed`` processes over localhost (one CPU device each, gloo collectives) train
  through ``training.fit`` (interrupted after one epoch and resumed from the orbax checkpoint
  both processes wrote), evaluate and score importance; the parent process checks the result
  against one device fed the same global batches, and restores the checkpoint alone.
* Importance scores on 8 fake CPU devices equal the 1-device scores (deeplift and taylor).

Device counts and ``jax.distributed`` must be fixed before jax initializes its backends, so the
sharded runs happen in fresh processes that import this module and call a ``*_worker`` function.
"""

import functools
import json
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xaijax import checkpoint, config_utils, data, importance, models, sharding, training

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TINY_VGG = {"conv1": 8, "conv2": 8, "conv3": 16, "conv4": 16, "fc1": 32}
NUM_PROCESSES = 2
FAKE_DEVICES = 8
BATCH_SIZE = 64
EPOCHS = 2
SEED = 1
SCORE_EXAMPLES = 50  # Not a multiple of the batch, the devices or the processes: padding is used.
WORKER_TIMEOUT_S = 240
UNAVAILABLE = "DISTRIBUTED UNAVAILABLE: "


def datasets() -> tuple[data.Dataset, data.Dataset]:
    train = data.subset(data.load_dataset("digits", "train"), slice(0, 640))
    test = data.load_dataset("digits", "test")  # 359 examples: odd, not a multiple of the batch.
    return train, test


def initial_state() -> training.TrainState:
    """Tiny VGG with SGD: its updates are linear in the gradients, so reassociated cross-device
    sums stay at rounding level."""
    model = models.get_model("vgg_small", widths=TINY_VGG)
    optimizer = config_utils.training_config().optimizer
    optimizer.update({"name": "sgd", "learning_rate": 0.05, "momentum": 0.9})
    tx = training.make_optimizer(optimizer, steps_per_epoch=640 // BATCH_SIZE, epochs=EPOCHS)
    return training.create_train_state(model, tx, 0, (1, 8, 8, 1))


def fit(state, train, test, workdir, epochs, mesh=None):
    return training.fit(
        state,
        train,
        test,
        workdir=workdir,
        epochs=epochs,
        batch_size=BATCH_SIZE,
        seed=SEED,
        eval_batch_size=100,
        mesh=mesh,
        progress=False,
    )


def deeplift_scores(variables, test, mesh=None):
    model = models.get_model("vgg_small", widths=TINY_VGG)
    return importance.score(
        "deeplift", model, variables, test, batch_size=16, num_examples=SCORE_EXAMPLES, mesh=mesh
    )


# ----------------------------------------------------------------------------- 2 processes


def train_worker(process_id: int, port: int, workdir: str) -> None:
    """One of the two processes: train (1 epoch, then resume to 2), evaluate, score; pickle the
    results to ``workdir/process{process_id}.pkl``."""
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}",
            num_processes=NUM_PROCESSES,
            process_id=process_id,
            initialization_timeout=60,
        )
    except Exception as err:  # Reported to the parent, which skips.
        print(UNAVAILABLE + repr(err), flush=True)
        sys.exit(3)
    config = config_utils.training_config()
    config.train.multihost = True
    assert sharding.initialize_distributed(config)  # Already initialized: must be a no-op.
    assert jax.process_count() == NUM_PROCESSES and jax.device_count() == NUM_PROCESSES
    train, test = datasets()
    state = initial_state()
    fit(state, train, test, workdir, epochs=1)
    trained, history = fit(state, train, test, workdir, epochs=EPOCHS)  # Resumes at epoch 1.
    variables = jax.device_get(trained.variables)
    result = {
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "step": int(jax.device_get(trained.step)),
        "variables": variables,
        "history": history,
        "evaluation": training.evaluate(trained, test, 100),
        "scores": jax.device_get(deeplift_scores(trained.variables, test)),
    }
    with open(Path(workdir) / f"process{process_id}.pkl", "wb") as f:
        pickle.dump(result, f)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(workdir: Path) -> list[dict]:
    """Start both processes, wait (with a timeout), skip if jax.distributed is unavailable."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    port = free_port()
    workers = []
    for process_id in range(NUM_PROCESSES):
        code = (
            f"import sys; sys.path.insert(0, {str(HERE)!r}); import test_multiprocess; "
            f"test_multiprocess.train_worker({process_id}, {port}, {str(workdir)!r})"
        )
        workers.append(
            subprocess.Popen(
                [sys.executable, "-c", code],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = []
    try:
        for worker in workers:
            outputs.append(worker.communicate(timeout=WORKER_TIMEOUT_S)[0])
    except subprocess.TimeoutExpired:
        for worker in workers:
            worker.kill()
            worker.communicate()
        pytest.fail(f"the {NUM_PROCESSES} jax.distributed workers ran over {WORKER_TIMEOUT_S} s")
    for output in outputs:
        if UNAVAILABLE in output:
            reason = output[output.index(UNAVAILABLE) :].splitlines()[0]
            pytest.skip(f"multi-process CPU jax.distributed over localhost: {reason}")
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output[-4000:]
    results = []
    for process_id in range(NUM_PROCESSES):
        with open(workdir / f"process{process_id}.pkl", "rb") as f:
            results.append(pickle.load(f))
    return results


def global_batches(train: data.Dataset, epoch: int):
    """The global batches of the 2-process run, built directly: process ``p`` holds examples
    ``p::2`` and shuffles them with the same (seed, epoch); a global batch is process 0's local
    batch followed by process 1's."""
    local = [data.shard_for_host(train, p, NUM_PROCESSES) for p in range(NUM_PROCESSES)]
    per_process = BATCH_SIZE // NUM_PROCESSES
    indices = data.epoch_batch_indices(local[0].num_examples, per_process, seed=SEED, epoch=epoch)
    for step_indices in indices:
        yield (
            np.concatenate([shard.images[step_indices] for shard in local]),
            np.concatenate([shard.labels[step_indices] for shard in local]),
        )


def max_abs_difference(a, b) -> float:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_two_processes_match_one_device(tmp_path):
    workers = run_workers(tmp_path)
    first, second = workers
    assert first["process_count"] == first["device_count"] == NUM_PROCESSES

    # Every process ends with the same replicated state, evaluation and scores.
    assert max_abs_difference(first["variables"], second["variables"]) == 0.0
    assert first["evaluation"] == second["evaluation"]
    assert max_abs_difference(first["scores"], second["scores"]) == 0.0

    # One device, plain train_step over the same global batches.
    train, test = datasets()
    start = initial_state()
    state = start
    for epoch in range(EPOCHS):
        for images, labels in global_batches(train, epoch):
            state, _ = training.train_step(state, images, labels)
    steps = EPOCHS * (train.num_examples // BATCH_SIZE)
    assert int(state.step) == first["step"] == steps
    reference = jax.device_get(state.variables)
    scale = max(float(np.max(np.abs(x))) for x in jax.tree.leaves(reference["params"]))
    assert max_abs_difference(start.params, reference["params"]) > 1e-2  # Training did happen.
    assert max_abs_difference(first["variables"], reference) < 1e-5 * max(1.0, scale)

    one_device = sharding.make_mesh(jax.devices()[:1])
    evaluation = training.evaluate(state, test, 100, mesh=one_device)
    assert first["evaluation"]["num_examples"] == evaluation["num_examples"] == test.num_examples
    assert abs(first["evaluation"]["loss"] - evaluation["loss"]) < 1e-4
    assert abs(first["evaluation"]["accuracy"] - evaluation["accuracy"]) <= 1 / test.num_examples
    assert [r["epoch"] for r in first["history"]] == [EPOCHS]  # The resumed call ran epoch 2.

    # Importance: each process scored its half of the examples; the sum is global.
    scores = deeplift_scores(first["variables"], test, mesh=one_device)
    for name, value in scores.items():
        np.testing.assert_allclose(first["scores"][name], value, rtol=1e-4, atol=1e-7)

    # The checkpoints both processes wrote restore in a single process.
    manager = checkpoint.checkpoint_manager(tmp_path / "checkpoints")
    try:
        assert manager.all_steps() == [steps // EPOCHS, steps]
        restored = checkpoint.restore_train_state(manager, start)
    finally:
        manager.close()
    assert max_abs_difference(restored.variables, first["variables"]) == 0.0
    assert int(restored.step) == steps


# ----------------------------------------------------------------------------- 8 fake devices


def scores_worker() -> None:
    """Deeplift and taylor unit scores on all 8 devices and on 1; print them as JSON."""
    assert jax.device_count() == FAKE_DEVICES, jax.devices()
    model = models.get_model("vgg_small", widths=TINY_VGG)
    init = jax.jit(functools.partial(model.init, train=False))  # One compilation.
    variables = init(jax.random.key(0), jnp.zeros((1, 8, 8, 1), jnp.float32))
    _, test = datasets()
    report = {}
    for criterion in ("deeplift", "taylor"):
        for name, mesh in (("one", sharding.make_mesh(jax.devices()[:1])), ("all", None)):
            scores = importance.score(
                criterion,
                model,
                variables,
                test,
                batch_size=20,  # 24 per step on 8 devices: the last step is mostly padding.
                num_examples=SCORE_EXAMPLES,
                mesh=mesh,
            )
            report[f"{criterion}_{name}"] = {k: np.asarray(v).tolist() for k, v in scores.items()}
            report[f"{criterion}_{name}_devices"] = max(len(v.devices()) for v in scores.values())
    print("RESULT " + json.dumps(report))


def test_eight_fake_devices_score_like_one():
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={FAKE_DEVICES}"}
    env["JAX_PLATFORMS"] = "cpu"
    code = (
        f"import sys; sys.path.insert(0, {str(HERE)!r}); import test_multiprocess; "
        "test_multiprocess.scores_worker()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    report = json.loads(line.removeprefix("RESULT "))
    for criterion in ("deeplift", "taylor"):
        one, many = report[f"{criterion}_one"], report[f"{criterion}_all"]
        assert set(one) == set(many) == set(TINY_VGG) | {"fc2"}
        for name in one:
            assert np.max(one[name]) > 0  # Non-trivial scores.
            np.testing.assert_allclose(many[name], one[name], rtol=1e-4, atol=1e-7)
        # Returned as ordinary single-device arrays, whatever the mesh.
        assert report[f"{criterion}_one_devices"] == report[f"{criterion}_all_devices"] == 1
