"""Models rebuilt with the same settings reuse compiled steps instead of compiling again."""

import jax
import numpy as np
import optax

from xaijax import data, models, training

WIDTHS = {"conv1": 2, "conv2": 3, "fc1": 8, "fc2": 8}


def test_equal_models_with_widths_are_hashable_and_equal():
    a = models.get_model("lenet5", widths={"conv1": 4, "fc1": 30})
    b = models.get_model("lenet5", widths={"fc1": 30, "conv1": 4})
    assert a == b
    assert hash(a) == hash(b)
    assert a != models.get_model("lenet5", widths={"conv1": 5, "fc1": 30})


def _train_and_evaluate_once(tx):
    model = models.get_model("lenet5", widths=dict(WIDTHS))
    state = training.create_train_state(model, tx, 0, (1, 28, 28, 1))
    images, labels = np.zeros((1, 4, 28, 28, 1), np.float32), np.zeros((1, 4), np.int32)
    state, _ = training.train_step_staged(state, images, labels, np.int32(0), None)
    ds = data.Dataset(images[0], labels[0])
    training.evaluate(model, ds, 4, variables=jax.device_get(state.variables))
    return model


def _cache_sizes():
    steps = (
        training.train_step_staged,
        training.state._init_variables,
        training.steps._eval_staged,
    )
    return tuple(step._cache_size() for step in steps)


def test_rebuilt_model_reuses_the_compiled_train_eval_and_init_steps():
    tx = optax.adam(1e-3)
    _train_and_evaluate_once(tx)
    sizes = _cache_sizes()
    model = _train_and_evaluate_once(tx)
    assert _cache_sizes() == sizes
    rebuilt = models.get_model("lenet5", widths=dict(WIDTHS))
    assert training.shared_module(rebuilt) is training.shared_module(model)
