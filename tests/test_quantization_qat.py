"""Post-training quantization and quantization-aware fine-tuning through the training loop."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

from xaijax import data, training
from xaijax.models import get_model
from xaijax.quantization import (
    fake_quantize_params,
    post_training_accuracy,
    quantization_aware_finetune,
    quantized_model,
)

WIDTHS = {"conv1": 8, "conv2": 8, "conv3": 16, "conv4": 16, "fc1": 32}


@pytest.mark.parametrize("backend", ["aqt", "qwix"])
def test_qat_trains_the_quantized_model(tmp_path, backend):
    train_ds, test_ds = data.load_dataset("digits", "train"), data.load_dataset("digits", "test")
    model = get_model("vgg_small", widths=WIDTHS)
    variables = jax.jit(lambda k, x: model.init(k, x, train=False))(
        jax.random.key(0), train_ds.images[:1]
    )
    variables = jax.device_get(variables)
    bits = {spec.name: 3 for spec in model.layer_specs()}
    before = post_training_accuracy(model, variables, bits, test_ds, backend=backend)
    state, history = quantization_aware_finetune(
        model,
        variables,
        bits,
        train_ds,
        test_ds,
        tx=optax.adam(3e-3),
        workdir=tmp_path,
        epochs=3,
        batch_size=64,
        progress=False,
        backend=backend,
    )
    after = post_training_accuracy(model, state.variables, bits, test_ds, backend=backend)
    assert after["accuracy"] > before["accuracy"] + 0.3 and after["loss"] < before["loss"]
    assert history[-1]["accuracy"] == after["accuracy"]
    # Every layer's kernel moved and the BatchNorm statistics were updated.
    for name in bits:
        assert not np.allclose(state.params[name]["kernel"], variables["params"][name]["kernel"])
    assert not np.allclose(
        state.batch_stats["conv1_bn"]["mean"], variables["batch_stats"]["conv1_bn"]["mean"]
    )
    # PTQ of the fine-tuned weights == the float model on fake-quantized weights.
    fake = {**state.variables, "params": fake_quantize_params(state.params, bits)}
    float_eval = training.evaluate(model, test_ds, variables=fake)
    assert float_eval["accuracy"] == after["accuracy"]
    quantized = quantized_model(model, bits, backend=backend)
    assert quantized.layer_kwargs.keys() == bits.keys() and model.layer_kwargs is None
