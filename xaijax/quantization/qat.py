"""Post-training quantization and quantization-aware fine-tuning through ``xaijax.training``.

Post-training quantization (PTQ) evaluates the quantized model with the float weights unchanged.
Quantization-aware training (QAT) fine-tunes the float weights of the quantized model: the forward
pass sees ``fake_quantize(w, b_l)`` and the straight-through gradient updates ``w`` itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import optax

from xaijax import data, training
from xaijax.quantization.backend import QuantizationBackend, quantized_model


def post_training_accuracy(
    model: nn.Module,
    variables: Mapping[str, Any],
    bits_per_layer: Mapping[str, int],
    ds: data.Dataset,
    *,
    activation_bits: int | None = None,
    batch_size: int = 500,
    backend: QuantizationBackend | str = "aqt",
) -> dict[str, float]:
    """Accuracy and loss on ``ds`` of ``model`` quantized at ``bits_per_layer`` by ``backend``
    (float weights)."""
    qmodel = quantized_model(
        model, bits_per_layer, activation_bits=activation_bits, backend=backend
    )
    return training.evaluate(qmodel, ds, batch_size, variables=dict(variables))


def quantization_aware_finetune(
    model: nn.Module,
    variables: Mapping[str, Any],
    bits_per_layer: Mapping[str, int],
    train_ds: data.Dataset,
    eval_ds: data.Dataset | None,
    *,
    tx: optax.GradientTransformation,
    workdir: str | Path,
    epochs: int,
    batch_size: int,
    seed: int = 0,
    activation_bits: int | None = None,
    backend: QuantizationBackend | str = "aqt",
    **fit_kwargs: Any,
) -> tuple[training.TrainState, list[dict[str, Any]]]:
    """Fine-tune ``variables`` with the quantized model in the jit training loop (resumable).

    Returns ``training.fit``'s ``(state, eval history)``; ``state.variables`` are float weights
    whose quantization at ``bits_per_layer`` is the fine-tuned model (``backend``: as in
    ``quantized_model``).
    """
    qmodel = quantized_model(
        model, bits_per_layer, activation_bits=activation_bits, backend=backend
    )
    sample = (1, *train_ds.images.shape[1:])
    state = training.create_train_state(qmodel, tx, seed, sample, variables=dict(variables))
    return training.fit(
        state,
        train_ds,
        eval_ds,
        workdir=workdir,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        **fit_kwargs,
    )
