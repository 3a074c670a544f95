"""The fine-tuning recipe (``config.finetune``): knowledge distillation from the dense model and
learning-rate rewinding, checked against formulas computed independently in numpy."""

from __future__ import annotations

import copy
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from xaijax import models, provenance, training
from xaijax.defaults import base_config
from xaijax.experiments import common, recipe
from xaijax.study import rows as study_rows

TINY_VGG = {"conv1": 4, "conv2": 4, "conv3": 8, "conv4": 8, "fc1": 16}


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _numpy_distillation(z, t, y, a, temperature):
    """Per-example (1 - a) CE(z, y) + a T^2 KL(softmax(t/T) || softmax(z/T)), in float64."""
    ce = -_log_softmax(z)[np.arange(len(y)), y]
    log_p, log_q = _log_softmax(t / temperature), _log_softmax(z / temperature)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(-1)
    return (1 - a) * ce + a * temperature**2 * kl


def _fixed_logits():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, (6, 10)).astype(np.float32)
    t = rng.normal(0, 3, (6, 10)).astype(np.float32)
    y = rng.integers(0, 10, 6).astype(np.int32)
    return z, t, y


# ------------------------------------------------------------------------------- the loss itself


@pytest.mark.parametrize(("a", "temperature"), [(0.0, 4.0), (0.3, 2.5), (1.0, 1.0)])
def test_distillation_loss_equals_the_formula_in_numpy(a, temperature):
    z, t, y = _fixed_logits()
    got = training.distillation_loss(z, t, y, a, temperature)
    np.testing.assert_allclose(got, _numpy_distillation(z, t, y, a, temperature), rtol=2e-5)


def test_distillation_gradient_is_the_closed_form():
    z, t, y = _fixed_logits()
    a, temperature = 0.6, 3.0
    grad = jax.grad(lambda logits: training.distillation_loss(logits, t, y, a, temperature).sum())(
        jnp.asarray(z)
    )
    softmax = lambda x: np.exp(_log_softmax(x))
    onehot = np.eye(10)[y]
    expected = (1 - a) * (softmax(z) - onehot) + a * temperature * (
        softmax(z / temperature) - softmax(t / temperature)
    )
    np.testing.assert_allclose(grad, expected, atol=1e-5)


def test_soft_term_has_zero_gradient_when_teacher_equals_student():
    z, _, y = _fixed_logits()
    grad = jax.grad(lambda logits: training.distillation_loss(logits, z, y, 1.0, 4.0).sum())(
        jnp.asarray(z)
    )
    np.testing.assert_allclose(grad, 0.0, atol=1e-6)


# ----------------------------------------------------------------------------- the train step


class _Mlp(nn.Module):
    """flatten, fc1 (16 units), (BatchNorm), relu, fc2 (logits): compiles in a moment."""

    bn: bool = False
    widths: Any = None

    def layer_specs(self):
        bn = "fc1_bn" if self.bn else None
        return (
            models.LayerSpec("fc1", "dense", bn, ("fc2",), None, False),
            models.LayerSpec("fc2", "dense", None, (), None, True),
        )

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Dense((self.widths or {}).get("fc1", 16), name="fc1")(x.reshape((x.shape[0], -1)))
        if self.bn:
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="fc1_bn")(x)
        return nn.Dense(10, name="fc2")(nn.relu(x))


def _state(model, seed):
    return training.create_train_state(model, optax.sgd(0.1), seed, (1, 8, 8, 1))


def _batch(n=16):
    rng = np.random.default_rng(1)
    images = rng.normal(size=(n, 8, 8, 1)).astype(np.float32)
    return images, (np.arange(n) % 10).astype(np.int32)


def test_weight_zero_step_equals_the_plain_step():
    model = _Mlp()
    state, other = _state(model, 0), _state(model, 7)
    images, labels = _batch()
    teacher = training.make_teacher(model, other.variables, weight=0.0, temperature=4.0)
    plain_state, plain = training.train_step(state, images, labels)
    distilled_state, distilled = training.train_step(state, images, labels, teacher=teacher)
    np.testing.assert_allclose(distilled["loss"], plain["loss"], rtol=1e-6)
    np.testing.assert_allclose(distilled["grad_norm"], plain["grad_norm"], rtol=1e-6)
    for got, want in zip(
        jax.tree.leaves(distilled_state.params), jax.tree.leaves(plain_state.params), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # The teacher is used: at weight 0.5 the loss is another number.
    half = training.make_teacher(model, other.variables, weight=0.5, temperature=4.0)
    _, mixed = training.train_step(state, images, labels, teacher=half)
    assert abs(float(mixed["loss"]) - float(plain["loss"])) > 1e-3


def test_weight_one_with_the_student_as_teacher_has_zero_gradient():
    model = _Mlp()
    state = _state(model, 0)
    images, labels = _batch()
    teacher = training.make_teacher(model, state.variables, weight=1.0, temperature=4.0)
    new_state, metrics = training.train_step(state, images, labels, teacher=teacher)
    assert float(metrics["loss"]) == pytest.approx(0.0, abs=1e-6)
    assert float(metrics["grad_norm"]) == pytest.approx(0.0, abs=1e-6)
    for got, want in zip(
        jax.tree.leaves(new_state.params), jax.tree.leaves(state.params), strict=True
    ):
        np.testing.assert_allclose(got, want, atol=1e-7)


def test_step_loss_uses_the_teacher_in_eval_mode_and_its_variables_as_an_argument():
    """A BatchNorm student and teacher: the step's loss is the numpy formula on the student's
    train-mode logits and the teacher's eval-mode (running statistics) logits; a teacher with
    other values of the same shapes reuses the compiled step and gives its own loss."""
    model = _Mlp(bn=True)
    state = _state(model, 0)
    images, labels = _batch()
    rng = np.random.default_rng(2)
    a, temperature = 0.7, 2.0
    student_logits, _ = model.apply(state.variables, images, train=True, mutable=["batch_stats"])

    def teacher_and_expected(seed):
        variables = jax.device_get(_state(model, seed).variables)
        variables["batch_stats"] = jax.tree.map(
            lambda s: rng.uniform(0.5, 2.0, s.shape).astype(np.float32), variables["batch_stats"]
        )
        eval_logits = model.apply(variables, images, train=False)
        train_logits, _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
        assert np.abs(np.asarray(eval_logits) - np.asarray(train_logits)).max() > 1e-2
        expected = _numpy_distillation(
            np.asarray(student_logits), np.asarray(eval_logits), labels, a, temperature
        ).mean()
        teacher = training.make_teacher(_Mlp(bn=True), variables, weight=a, temperature=temperature)
        return teacher, expected

    teacher, expected = teacher_and_expected(3)
    _, metrics = training.train_step(state, images, labels, teacher=teacher)
    assert float(metrics["loss"]) == pytest.approx(expected, rel=1e-5)

    size = training.train_step._cache_size()
    other, other_expected = teacher_and_expected(5)
    assert abs(other_expected - expected) > 1e-3
    _, other_metrics = training.train_step(state, images, labels, teacher=other)
    assert training.train_step._cache_size() == size
    assert float(other_metrics["loss"]) == pytest.approx(other_expected, rel=1e-5)


# ------------------------------------------------------------------------ learning-rate rewinding


def _original_lr(step, *, base, steps_per_epoch, epochs, warmup_epochs, kind, decay=()):
    """The training schedule, written out: linear warm-up from 0, then cosine to 0 at the last
    step, or times ``factor`` from each decay epoch on."""
    warmup = round(warmup_epochs * steps_per_epoch)
    if step < warmup:
        return base * step / warmup
    if kind == "cosine":
        span = steps_per_epoch * epochs - warmup
        return base * 0.5 * (1 + math.cos(math.pi * min(step - warmup, span) / span))
    factor, decay_epochs = decay
    return base * factor ** sum(step >= round(e * steps_per_epoch) for e in decay_epochs)


@pytest.mark.parametrize("kind", ["cosine", "step"])
def test_rewound_learning_rate_is_the_original_schedule_shifted(kind):
    spe, epochs, rewind = 7, 6, 2
    optimizer = ml_collections.ConfigDict(
        {
            "name": "sgd",
            "learning_rate": 0.2,
            "schedule": kind,
            "warmup_epochs": 1.0,
            "decay_epochs": (2.0, 5.0),
            "decay_factor": 0.1,
            "momentum": 0.0,
            "weight_decay": 0.0,
        }
    )
    original = dict(
        base=0.2,
        steps_per_epoch=spe,
        epochs=epochs,
        warmup_epochs=1.0,
        kind=kind,
        decay=(0.1, (2.0, 5.0)),
    )
    schedule = training.rewound_schedule(optimizer, spe, epochs, rewind)
    offset = (epochs - rewind) * spe
    for step in range(rewind * spe):
        assert float(schedule(step)) == pytest.approx(
            _original_lr(step + offset, **original), rel=1e-5, abs=1e-8
        )
    # Rewinding all epochs replays the whole schedule, warm-up included.
    full = training.rewound_schedule(optimizer, spe, epochs, epochs)
    assert [float(full(s)) for s in range(3)] == pytest.approx(
        [_original_lr(s, **original) for s in range(3)], abs=1e-8
    )
    with pytest.raises(ValueError, match="rewind_epochs"):
        training.rewound_schedule(optimizer, spe, epochs, epochs + 1)


def _digits_config(**finetune):
    config = base_config()
    config.data.name = "digits"
    config.model.name = "vgg_small"
    config.model.widths = dict(TINY_VGG)
    config.optimizer.name = "sgd"
    config.optimizer.momentum = 0.0
    config.optimizer.weight_decay = 0.0
    config.optimizer.learning_rate = 0.05
    config.optimizer.schedule = "cosine"
    config.optimizer.warmup_epochs = 0.5
    config.train.epochs = 4
    config.train.batch_size = 64
    config.train.eval_batch_size = 200
    config.train.log_every_steps = 10
    config.finetune.update(finetune)
    return config


def test_finetune_optimizer_applies_the_rewound_rate_each_step():
    """sgd on a unit gradient moves each weight by exactly -learning_rate(step)."""
    spe, epochs = 5, 2
    params = {"w": jnp.zeros((3,))}
    grads = {"w": jnp.ones((3,))}

    def moves(config):
        tx = recipe.finetune_optimizer(
            config, steps_per_epoch=spe, epochs=epochs, learning_rate=1e-3, schedule="constant"
        )
        opt_state, out = tx.init(params), []
        for _ in range(epochs * spe):
            updates, opt_state = tx.update(grads, opt_state, params)
            out.append(-float(updates["w"][0]))
        return out

    config = _digits_config(lr_rewind=True)
    original = dict(base=0.05, steps_per_epoch=spe, epochs=4, warmup_epochs=0.5, kind="cosine")
    offset = (4 - epochs) * spe
    expected = [_original_lr(s + offset, **original) for s in range(epochs * spe)]
    np.testing.assert_allclose(moves(config), expected, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(moves(_digits_config()), [1e-3] * (epochs * spe), rtol=1e-6)
    with pytest.raises(ValueError, match="lr_rewind"):
        recipe.finetune_optimizer(
            config, steps_per_epoch=spe, epochs=5, learning_rate=1e-3, schedule="constant"
        )


# ------------------------------------------------------------------- config, fingerprints, rows


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("distill_weight", -0.1),
        ("distill_weight", 1.5),
        ("distill_weight", float("nan")),
        ("distill_weight", True),
        ("distill_temperature", 0.0),
        ("distill_temperature", -2.0),
        ("lr_rewind", 1),
        ("lr_rewind", "yes"),
    ],
)
def test_bad_finetune_values_raise_naming_the_field(field, value):
    config = _digits_config()
    config.finetune = ml_collections.ConfigDict({field: value})
    with pytest.raises(ValueError, match=rf"config\.finetune\.{field}"):
        recipe.finetune_section(config)


def test_unknown_finetune_field_is_rejected():
    config = _digits_config()
    config.finetune = ml_collections.ConfigDict({"distil_weight": 0.5})
    with pytest.raises(ValueError, match="distil_weight"):
        recipe.recipe(config)


def test_default_recipe_keeps_the_fingerprint_and_options_change_it():
    config = _digits_config()
    kwargs = dict(epochs=3, learning_rate=5e-4, batch_size=None)
    # The settings as they were built before config.finetune existed.
    before = {
        "epochs": 3,
        "learning_rate": 5e-4,
        "batch_size": config.train.batch_size,
        "schedule": "constant",
        "seed": config.train.seed,
        "optimizer": common.plain(config.optimizer, ("learning_rate", "schedule", "warmup_epochs")),
        "data": config.data,
    }
    assert recipe.recipe(config) == {}
    assert common.finetune_settings(config, **kwargs) == before
    del config.finetune  # a config without the section reads the defaults
    assert common.finetune_settings(config, **kwargs) == before
    digest = provenance.fingerprint(finetune=before).digest

    off = _digits_config(distill_weight=0.0, distill_temperature=9.0)  # T is moot when off
    assert provenance.fingerprint(finetune=common.finetune_settings(off, **kwargs)).digest == digest

    distill = common.finetune_settings(_digits_config(distill_weight=0.5), **kwargs)
    assert distill == {**before, "distill_weight": 0.5, "distill_temperature": 4.0}
    rewind = common.finetune_settings(_digits_config(lr_rewind=True), **kwargs)
    assert rewind == {
        **before,
        "lr_rewind": True,
        "rewound_schedule": {
            "learning_rate": 0.05,
            "schedule": "cosine",
            "warmup_epochs": 0.5,
            "train_epochs": 4,
        },
    }
    for settings in (distill, rewind):
        assert provenance.fingerprint(finetune=settings).digest != digest

    stage_fp = lambda c, model, start: provenance.fingerprint(unit="x", start=start, train=c.train)
    extended = recipe.with_recipe(stage_fp)
    plain_config = _digits_config()
    assert extended(plain_config, None, "s") == stage_fp(plain_config, None, "s")
    assert extended(_digits_config(lr_rewind=True), None, "s").inputs["finetune.lr_rewind"] is True


def _results(finetune=None):
    """The fields of one seed's pipeline results that ``rows_from_results`` reads."""
    prune = {
        "prune": {
            "seed": 0,
            "granularity": "hybrid",
            "finetune_epochs": 3,
            "finetune_learning_rate": 5e-4,
            "finetune_batch_size": None,
        },
        "accuracy": {"after_finetune": 0.9, "pruned_before_finetune": 0.5},
        "params": {"dense": 100},
        "nonzero_params": 40,
        "flops": {"masked": 1000},
        "size_bits": {"pruned": 3200},
    }
    if finetune is not None:
        prune["finetune"] = finetune
    return {
        "model": "lenet5",
        "dataset": "digits",
        "provenance": {"baseline": {"fingerprint": "b"}, "prune/magnitude": {"fingerprint": "p"}},
        "baseline": {"accuracy": 0.95, "params": 100, "flops": 2000, "size_bits": 3200},
        "prune": {"magnitude": prune},
    }


def test_study_rows_record_the_recipe_options_that_are_on():
    old = study_rows.rows_from_results(_results(), 0)[1]["recipe"]
    assert old == {
        "finetune_epochs": 3,
        "finetune_learning_rate": 5e-4,
        "finetune_batch_size": None,
    }
    assert study_rows.rows_from_results(_results({}), 0)[1]["recipe"] == old
    on = {"distill_weight": 0.5, "distill_temperature": 4.0, "lr_rewind": True}
    assert study_rows.rows_from_results(_results(on), 0)[1]["recipe"] == {**old, **on}
    with pytest.raises(ValueError, match="nope"):
        study_rows.rows_from_results(_results({"nope": 1}), 0)


# ------------------------------------------------------------------------ fine-tuning on digits


def test_digits_finetune_with_distillation_and_rewinding(tmp_path):
    config = _digits_config(distill_weight=0.5, distill_temperature=2.0, lr_rewind=True)
    splits = training.datasets_from_config(config)
    model = _Mlp(bn=True)
    start = jax.device_get(_state(model, 0).variables)
    unit = provenance.fingerprint(unit="test")
    kwargs = dict(workdir=tmp_path / "ft", unit=unit, epochs=1, learning_rate=1e-3)
    with pytest.raises(ValueError, match="teacher"):
        common.finetune(config, model, splits, start, **kwargs)
    tuned = common.finetune(config, model, splits, start, teacher=(model, start), **kwargs)
    assert jax.tree.structure(tuned) == jax.tree.structure(start)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(tuned))
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(
            jax.tree.leaves(tuned["params"]), jax.tree.leaves(start["params"]), strict=True
        )
    )
    recorded = provenance.recorded_inputs(tmp_path / "ft")
    assert recorded["run.distill_weight"] == 0.5 and recorded["run.lr_rewind"] is True
    assert recorded["run_teacher.variables"] == provenance.variables_digest(start)


def test_prune_run_distills_from_the_dense_model_and_records_the_recipe(tmp_path):
    from xaijax.experiments import prune as prune_experiment

    config = _digits_config(distill_weight=0.5)
    config.prune = ml_collections.ConfigDict(
        {"criterion": "magnitude", "importance": {"num_examples": 64}, "finetune_epochs": 1}
    )
    model = _Mlp(bn=True)
    variables = jax.device_get(_state(model, 0).variables)
    results = prune_experiment.run(config, tmp_path, model=model, variables=variables)
    pruned = common.load_variables(tmp_path / "pruned_variables")
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(pruned))
    assert results["finetune"] == {"distill_weight": 0.5, "distill_temperature": 4.0}
    recorded = provenance.recorded_inputs(tmp_path / "finetune_1")
    assert recorded["run_teacher.variables"] == provenance.variables_digest(variables)
    assert recorded["finetune.distill_weight"] == 0.5
    default = copy.deepcopy(config)
    default.finetune.distill_weight = 0.0
    on = prune_experiment.stage_fingerprint(config, model, "s").inputs
    off = prune_experiment.stage_fingerprint(default, model, "s").inputs
    assert on["finetune.distill_weight"] == 0.5
    assert not any(key.startswith("finetune.distill") for key in off)
    assert 0 <= results["accuracy"]["after_finetune"] <= 1
