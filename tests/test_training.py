"""Train state, optimizers, masked steps, evaluation, checkpointed and resumable fitting."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from xaijax import checkpoint, data, models, pruning, training
from xaijax.config_utils import training_config

REPO = Path(__file__).resolve().parents[1]
TINY_VGG = {"conv1": 8, "conv2": 8, "conv3": 16, "conv4": 16, "fc1": 32}
TINY_LENET = {"conv1": 3, "conv2": 4, "fc1": 16, "fc2": 12}
BATCH = 64


def optimizer_config(**overrides) -> ml_collections.ConfigDict:
    """The library's optimizer section (``config_utils.training_config``) at a learning rate of
    3e-3, with ``overrides``."""
    config = training_config().optimizer
    config.update({"learning_rate": 3e-3, **overrides})
    return config


def digits_setup(schedule: str = "constant", epochs: int = 2):
    """A narrow VGG (with BatchNorm) on digits; deterministic, shared by the resume tests and
    the fresh process they start."""
    train, test = data.load_dataset("digits", "train"), data.load_dataset("digits", "test")
    model = models.get_model("vgg_small", widths=TINY_VGG)
    steps_per_epoch = train.num_examples // BATCH
    tx = training.make_optimizer(optimizer_config(schedule=schedule), steps_per_epoch, epochs)
    state = training.create_train_state(model, tx, 0, (1, 8, 8, 1))
    return state, train, test


FIT_KWARGS = {"batch_size": BATCH, "seed": 3, "log_every_steps": 7, "progress": False}


def fit_digits_in_subprocess(workdir: Path, epochs: int) -> None:
    """Entry point of the fresh process in ``test_resume_in_a_fresh_process``."""
    state, train, test = digits_setup()
    training.fit(state, train, test, workdir=workdir, epochs=epochs, **FIT_KWARGS)


def assert_trees_close(a, b, atol=1e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=atol), a, b)


@pytest.fixture(scope="module")
def digits():
    return digits_setup()


@pytest.fixture(scope="module")
def lenet():
    model = models.get_model("lenet5", widths=TINY_LENET)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    return model, variables


# ----------------------------------------------------------------------------- steps


def test_train_step_lowers_the_loss_on_a_fixed_batch(digits):
    state, train, _ = digits
    images, labels = train.images[:BATCH], train.labels[:BATCH]
    losses = []
    for _ in range(25):
        state, metrics = training.train_step(state, images, labels)
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 25
    assert losses[-1] < 0.3 * losses[0]
    assert np.isfinite(losses).all()
    # BatchNorm running statistics were updated in train mode.
    initial = digits[0].batch_stats["conv1_bn"]["mean"]
    assert not np.allclose(state.batch_stats["conv1_bn"]["mean"], initial)


def test_mask_keeps_pruned_weights_exactly_zero(lenet):
    model, variables = lenet
    rng = np.random.default_rng(0)
    conv_mask = rng.integers(0, 2, variables["params"]["conv1"]["kernel"].shape).astype(np.float32)
    fc_mask = rng.integers(0, 2, variables["params"]["fc1"]["kernel"].shape).astype(np.float32)
    mask = {
        "conv1": {"kernel": conv_mask, "bias": None},
        "conv2": None,
        "fc1": {"kernel": fc_mask, "bias": None},
        "fc2": None,
        "fc3": None,
    }
    tx = optax.chain(optax.adam(1e-2), pruning.keep_pruned(mask))
    state = training.create_train_state(model, tx, 1, (1, 28, 28, 1), variables=variables)
    synthetic = data.load_dataset("synthetic", "train")
    new = state
    for i in range(3):
        batch = slice(i * 32, (i + 1) * 32)
        new, _ = training.train_step(new, synthetic.images[batch], synthetic.labels[batch])
    for name, m in (("conv1", conv_mask), ("fc1", fc_mask)):
        kernel = np.asarray(new.params[name]["kernel"])
        assert np.all(kernel[m == 0] == 0.0)
        moved = kernel[m == 1] != np.asarray(state.params[name]["kernel"])[m == 1]
        assert moved.mean() > 0.5  # Kept weights train (a few may see only dead inputs).
    assert not np.allclose(new.params["fc2"]["kernel"], state.params["fc2"]["kernel"])


def test_mask_with_wrong_shape_is_rejected(lenet):
    _, variables = lenet
    bad = jax.tree.map(lambda p: np.ones((*p.shape[:-1], p.shape[-1] + 1)), variables["params"])
    with pytest.raises(ValueError, match=r"mask at .*has shape"):
        pruning.keep_pruned(bad).init(variables["params"])


def test_create_train_state_checks_given_variables(lenet):
    model, variables = lenet
    wider = models.get_model("lenet5", widths={**TINY_LENET, "conv1": 5})
    with pytest.raises(ValueError, match="variables do not match the model"):
        training.create_train_state(wider, optax.sgd(0.1), 0, (1, 28, 28, 1), variables=variables)
    with pytest.raises(ValueError, match="NHWC"):
        training.create_train_state(model, optax.sgd(0.1), 0, (28, 28, 1))


# ----------------------------------------------------------------------------- optimizers


def test_schedules_follow_their_formulas():
    steps_per_epoch, epochs, base = 10, 8, 0.4
    cosine = training.make_schedule(
        optimizer_config(learning_rate=base, schedule="cosine", warmup_epochs=2.0),
        steps_per_epoch,
        epochs,
    )
    assert float(cosine(0)) == 0.0
    assert float(cosine(10)) == pytest.approx(base / 2)
    assert float(cosine(20)) == pytest.approx(base)
    assert float(cosine(50)) == pytest.approx(base * 0.5 * (1 + np.cos(np.pi * 30 / 60)))
    assert float(cosine(80)) == pytest.approx(0.0, abs=1e-7)
    step = training.make_schedule(
        optimizer_config(
            learning_rate=base, schedule="step", decay_epochs=(3, 6), decay_factor=0.5
        ),
        steps_per_epoch,
        epochs,
    )
    assert [float(step(s)) for s in (0, 29, 30, 59, 60, 79)] == pytest.approx(
        [base, base, base / 2, base / 2, base / 4, base / 4]
    )
    constant = training.make_schedule(optimizer_config(learning_rate=base), 5, 2)
    assert float(constant(7)) == pytest.approx(base)


def one_update(config, params, grads):
    tx = training.make_optimizer(config, steps_per_epoch=10, epochs=1)
    updates, _ = tx.update(grads, tx.init(params), params)
    return updates


def test_weight_decay_applies_to_kernels_only():
    rng = np.random.default_rng(0)
    normal = lambda *shape: rng.normal(size=shape).astype(np.float32)
    params = {"layer": {"kernel": normal(3, 2), "bias": normal(2)}}
    grads = jax.tree.map(lambda p: normal(*p.shape), params)
    lr, wd = 0.1, 0.01
    sgd = one_update(optimizer_config(name="sgd", learning_rate=lr, weight_decay=wd), params, grads)
    np.testing.assert_allclose(
        sgd["layer"]["kernel"],
        -lr * (grads["layer"]["kernel"] + wd * params["layer"]["kernel"]),
        rtol=1e-5,
    )
    np.testing.assert_allclose(sgd["layer"]["bias"], -lr * grads["layer"]["bias"], rtol=1e-5)
    adamw = one_update(
        optimizer_config(name="adamw", learning_rate=lr, weight_decay=wd), params, grads
    )
    # Adam's first step is g / (|g| + eps) = sign(g); AdamW adds wd * param, decoupled.
    sign = jax.tree.map(np.sign, grads)
    np.testing.assert_allclose(
        adamw["layer"]["kernel"],
        -lr * (sign["layer"]["kernel"] + wd * params["layer"]["kernel"]),
        rtol=1e-4,
    )
    np.testing.assert_allclose(adamw["layer"]["bias"], -lr * sign["layer"]["bias"], rtol=1e-4)
    clipped = one_update(
        optimizer_config(name="sgd", learning_rate=1.0, momentum=0.0, grad_clip_norm=0.5),
        params,
        grads,
    )
    assert float(optax.tree.norm(clipped)) == pytest.approx(0.5, rel=1e-5)


# ----------------------------------------------------------------------------- evaluation


def reference_metrics(model, variables, ds):
    logits = np.asarray(model.apply(variables, ds.images, train=False), np.float64)
    shifted = logits - logits.max(1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    loss = -log_probs[np.arange(len(ds.labels)), ds.labels].mean()
    return float(np.mean(logits.argmax(1) == ds.labels)), float(loss)


@pytest.mark.parametrize(("n", "batch_size"), [(37, 8), (37, 37), (1, 500), (100, 7)])
def test_evaluate_counts_every_example_once(lenet, n, batch_size):
    model, variables = lenet
    ds = data.subset(data.load_dataset("synthetic", "test"), slice(0, n))
    accuracy, loss = reference_metrics(model, variables, ds)
    for result in (
        training.evaluate(model, ds, batch_size, variables=variables),
        training.evaluate(model.apply, ds, batch_size, variables=variables),
    ):
        assert result["num_examples"] == n
        assert result["accuracy"] == pytest.approx(accuracy)
        assert result["loss"] == pytest.approx(loss, rel=1e-5)
    state = training.create_train_state(model, optax.sgd(0.1), 0, (1, 28, 28, 1), variables)
    assert training.evaluate(state, ds, batch_size)["loss"] == pytest.approx(loss, rel=1e-5)
    images, labels, weights = (a[0] for a in data.pad_for_eval(ds, n))
    sums = training.eval_step(state, images, labels, weights)
    assert float(sums["count"]) == n
    assert float(sums["correct_sum"]) == pytest.approx(accuracy * n)


def test_evaluate_requires_variables_for_a_model(lenet):
    with pytest.raises(ValueError, match="needs variables"):
        training.evaluate(lenet[0], data.load_dataset("synthetic", "test"))


# ----------------------------------------------------------------------------- fit


def test_fit_logs_checkpoints_and_resumes_mid_epoch_exactly(digits, tmp_path):
    state, train, test = digits
    steps_per_epoch = train.num_examples // BATCH
    straight, history = training.fit(
        state,
        train,
        test,
        workdir=tmp_path / "a",
        epochs=2,
        checkpoint_every_steps=10,
        keep=100,
        **FIT_KWARGS,
    )
    assert int(straight.step) == 2 * steps_per_epoch
    saved = sorted(int(p.name) for p in (tmp_path / "a" / "checkpoints").iterdir())
    assert saved == sorted(
        {*range(10, 2 * steps_per_epoch + 1, 10), steps_per_epoch, 2 * steps_per_epoch}
    )
    assert [r["epoch"] for r in history] == [1, 2]
    assert history[-1]["accuracy"] == pytest.approx(training.evaluate(straight, test)["accuracy"])

    lines = [
        json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    ]
    train_steps = [r["step"] for r in lines if r["kind"] == "train"]
    assert {7, 10, 14, 20, 21, 22, 28, 30, 35, 40, 42, 44} == set(train_steps)
    assert [r["accuracy"] for r in lines if r["kind"] == "eval"] == [r["accuracy"] for r in history]
    assert list((tmp_path / "a" / "tensorboard").glob("events.out.tfevents.*"))

    # Interrupted mid-way through epoch 2: keep checkpoints up to step 30 only, then rerun.
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for path in (tmp_path / "b" / "checkpoints").iterdir():
        if path.name.isdigit() and int(path.name) > 30:
            shutil.rmtree(path)
    resumed, resumed_history = training.fit(
        state, train, test, workdir=tmp_path / "b", epochs=2, keep=100, **FIT_KWARGS
    )
    assert [r["epoch"] for r in resumed_history] == [2]
    assert_trees_close(resumed.params, straight.params)
    assert_trees_close(resumed.batch_stats, straight.batch_stats)
    assert_trees_close(resumed.opt_state, straight.opt_state)

    # A finished run rerun in its workdir restores and stops.
    again, again_history = training.fit(
        state, train, test, workdir=tmp_path / "a", epochs=2, **FIT_KWARGS
    )
    assert again_history == [] and int(again.step) == int(straight.step)
    assert_trees_close(again.params, straight.params, atol=0.0)


def test_resume_in_a_fresh_process(digits, tmp_path):
    state, train, test = digits
    straight, _ = training.fit(
        state, train, test, workdir=tmp_path / "straight", epochs=2, **FIT_KWARGS
    )
    code = (
        f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r}); import test_training; "
        f"test_training.fit_digits_in_subprocess({str(tmp_path / 'split')!r}, 1)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=300)
    steps = sorted(int(p.name) for p in (tmp_path / "split" / "checkpoints").iterdir())
    assert steps == [train.num_examples // BATCH]
    resumed, history = training.fit(
        state, train, test, workdir=tmp_path / "split", epochs=2, **FIT_KWARGS
    )
    assert [r["epoch"] for r in history] == [2]
    assert int(resumed.step) == int(straight.step)
    assert_trees_close(resumed.params, straight.params)
    assert_trees_close(resumed.batch_stats, straight.batch_stats)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(digits, tmp_path):
    state, train, test = digits
    order = data.epoch_permutation(train.num_examples, seed=FIT_KWARGS["seed"], epoch=0)
    bad_step = 6  # The poisoned example sits in the 6th batch of the first epoch.
    images = train.images.copy()
    # The largest finite float32 passes the data checks (which refuse inf / NaN pixels) and
    # overflows in the first layers, so the loss of that batch is not finite.
    images[order[(bad_step - 1) * BATCH + 3]] = np.finfo(np.float32).max
    poisoned = data.Dataset(images, train.labels)
    with pytest.raises(FloatingPointError, match=rf"at step {bad_step} \(epoch 1\).*step 4"):
        training.fit(
            state,
            poisoned,
            test,
            workdir=tmp_path,
            epochs=1,
            checkpoint_every_steps=4,
            **FIT_KWARGS,
        )
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["4"]
    manager = checkpoint.checkpoint_manager(tmp_path / "checkpoints")
    restored = checkpoint.restore_train_state(manager, state)
    manager.close()
    assert int(restored.step) == 4
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(restored.params))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs must be an integer >= 1"),
        ({"batch_size": 5000}, "exceeds"),
        ({"log_every_steps": 0}, "log_every_steps"),
    ],
)
def test_fit_rejects_bad_arguments_before_training(digits, tmp_path, kwargs, message):
    state, train, test = digits
    arguments = {**FIT_KWARGS, "epochs": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        training.fit(state, train, test, workdir=tmp_path, **arguments)
    assert not (tmp_path / "checkpoints").exists()


def test_variables_and_json_round_trip(lenet, tmp_path):
    _, variables = lenet
    checkpoint.save_variables(tmp_path / "vars", variables)
    assert_trees_close(checkpoint.load_variables(tmp_path / "vars"), variables, atol=0.0)
    checkpoint.save_variables(tmp_path / "vars", jax.tree.map(jnp.zeros_like, variables))
    zeros = checkpoint.load_variables(tmp_path / "vars")
    assert all(np.all(leaf == 0) for leaf in jax.tree.leaves(zeros))
    payload = {"a": np.float32(1.5), "b": np.arange(3), "c": (1, Path("/x"))}
    checkpoint.write_json_atomic(tmp_path / "out" / "r.json", payload)
    assert json.loads((tmp_path / "out" / "r.json").read_text()) == {
        "a": 1.5,
        "b": [0, 1, 2],
        "c": [1, "/x"],
    }
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["r.json"]  # No temp file left.


def test_checkpoint_paths_with_brackets_fail_before_writing(tmp_path):
    """orbax writes under a bracketed path what it cannot read back: refused up front, named."""
    from xaijax import checkpoint

    bad = tmp_path / "run[1]" / "variables"
    with pytest.raises(ValueError, match=r"contains a bracket"):
        checkpoint.save_variables(bad, {"params": {"w": np.ones(2, np.float32)}})
    with pytest.raises(ValueError, match=r"contains a bracket"):
        checkpoint.checkpoint_manager(tmp_path / "run[1]" / "checkpoints")
    assert not (tmp_path / "run[1]").exists()
    good = tmp_path / "run+1=a" / "variables"
    checkpoint.save_variables(good, {"params": {"w": np.arange(2, dtype=np.float32)}})
    np.testing.assert_array_equal(checkpoint.load_variables(good)["params"]["w"], [0.0, 1.0])
