"""AQT vs qwix on one bit allocation: PTQ, QAT and integer-export accuracy on a small VGG (digits).

Trains a float ``vgg_small`` (narrow widths) on scikit-learn's digits, allocates bits per layer
(default: DeepLIFT sensitivity) under an average budget, then for each backend evaluates
post-training quantization, fine-tunes the quantized model (QAT) and checks the integer export::

    python scripts/bench_quant_backends.py [--budget 3.0] [--epochs 10] [--qat_epochs 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import ml_collections
import optax
from etils import epath

from xaijax import data, training
from xaijax.experiments import quantize as quantize_experiment
from xaijax.models import get_model
from xaijax.quantization import (
    allocate_bits,
    dequantize,
    export_integer_model,
    get_strategy,
    layer_sizes,
    post_training_accuracy,
    quantization_aware_finetune,
)

WIDTHS = {"conv1": 8, "conv2": 8, "conv3": 16, "conv4": 16, "fc1": 32}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=3.0, help="average bits per weight")
    parser.add_argument("--epochs", type=int, default=10, help="float training epochs")
    parser.add_argument("--qat_epochs", type=int, default=2)
    parser.add_argument("--strategy", default="deeplift_sensitivity", help="allocation strategy")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    train_ds, test_ds = data.load_dataset("digits", "train"), data.load_dataset("digits", "test")
    model = get_model("vgg_small", widths=WIDTHS)
    sample = (1, *train_ds.images.shape[1:])
    with tempfile.TemporaryDirectory() as tmp:
        state = training.create_train_state(model, optax.adam(3e-3), args.seed, sample)
        state, _ = training.fit(
            state,
            train_ds,
            None,
            workdir=Path(tmp) / "float",
            epochs=args.epochs,
            batch_size=64,
            seed=args.seed,
            progress=False,
        )
        variables = jax.device_get(state.variables)
        float_acc = training.evaluate(model, test_ds, variables=variables)["accuracy"]

        q = quantize_experiment.defaults()
        q.seed = args.seed
        names = [spec.name for spec in model.layer_specs()]
        config = ml_collections.ConfigDict({"data": {"name": "digits"}})  # what the scores saw
        tables = quantize_experiment.sensitivities(
            config, q, model, variables, train_ds, names, epath.Path(tmp) / "scores"
        )
        sizes = layer_sizes(variables["params"], names)
        table = tables.get(get_strategy(args.strategy).needs)
        bits = allocate_bits(args.strategy, sizes, args.budget, table=table)
        print(
            f"float test accuracy {float_acc:.4f}; {args.strategy} bits at {args.budget:g}: {bits}"
        )
        print("| backend | PTQ accuracy | QAT accuracy | integer export accuracy | seconds |")
        print("|---|---|---|---|---|")
        for backend in ("aqt", "qwix"):
            started = time.perf_counter()
            ptq = post_training_accuracy(model, variables, bits, test_ds, backend=backend)
            tuned, _ = quantization_aware_finetune(
                model,
                variables,
                bits,
                train_ds,
                None,
                tx=optax.adam(3e-4),
                workdir=Path(tmp) / backend,
                epochs=args.qat_epochs,
                batch_size=64,
                seed=args.seed,
                backend=backend,
                progress=False,
            )
            qat = post_training_accuracy(model, tuned.variables, bits, test_ds, backend=backend)
            integer_variables = dequantize(export_integer_model(tuned.variables, bits))
            integer = training.evaluate(model, test_ds, variables=integer_variables)
            seconds = time.perf_counter() - started
            print(
                f"| {backend} | {ptq['accuracy']:.4f} | {qat['accuracy']:.4f} | "
                f"{integer['accuracy']:.4f} | {seconds:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
