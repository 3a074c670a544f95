"""Training throughput (images/s) of LeNet-5 and the small VGG on Fashion-MNIST.

    python scripts/bench_train.py [--models lenet5,vgg_small] [--repeats 5]

Adam, batch 128, the training loop of ``xaijax.training.fit`` (data staged on the devices, one
jitted step per batch indexing the staged epoch). Each model is warmed up (compilation and one
timed-out pass), then ``--repeats`` passes of ``--steps`` steps are timed; the median is reported,
together with the cost of staging a whole epoch (host gather + transfer) spread over its steps,
and images per CPU-second used by this process (all threads), which is less sensitive to other
processes competing for the cores than wall-clock throughput; the 1-minute load average is
printed so contended runs can be recognised.
For scale, the issue quotes an equivalent PyTorch CPU loop measured on 2 cores at about 12,500
images/s (LeNet-5) and 1,100 images/s (small VGG); those numbers were not measured by this script.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax

from xaijax import data, models, training

PYTORCH_REFERENCE = {"lenet5": 12_500.0, "vgg_small": 1_100.0}
DEFAULT_STEPS = {"lenet5": 200, "vgg_small": 40}


def bench_arguments(description: str, *, steps_help: str) -> argparse.ArgumentParser:
    """The options of every training benchmark (this script, ``bench_train_vs_torch.py``,
    ``profile_train.py``): ``--models``, ``--batch-size``, ``--steps``, ``--data-dir``."""
    parser = argparse.ArgumentParser(description=description.split("\n")[0])
    parser.add_argument("--models", default="lenet5,vgg_small")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=0, help=steps_help)
    parser.add_argument("--data-dir", default=None)
    return parser


def first_batches(
    ds: data.Dataset, batch_size: int, steps: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[steps, batch_size, ...]`` and labels of the first ``steps`` batches of epoch 0
    (seed 0; None: the whole epoch), the batches every benchmark side trains on."""
    indices = data.epoch_batch_indices(ds.num_examples, batch_size, seed=0, epoch=0)[:steps]
    return ds.images[indices], ds.labels[indices]


def staged_training(name: str, ds: data.Dataset, *, batch_size: int, steps: int) -> tuple:
    """(model, its Adam train state replicated over the mesh, the ``first_batches`` staged on the
    devices as ``training.fit`` stages an epoch)."""
    model = models.get_model(name)
    mesh = training.make_mesh()
    state = training.create_train_state(model, optax.adam(1e-3), 0, (1, *ds.images.shape[1:]))
    images, labels = training.shard_batches(mesh, *first_batches(ds, batch_size, steps))
    jax.block_until_ready((images, labels))
    return model, training.replicate(state, mesh, copy=True), images, labels


def timed_train_steps(
    state: Any, images: jax.Array, labels: jax.Array
) -> Callable[[], tuple[float, float]]:
    """A callable running one ``training.train_step_staged`` per staged batch, continuing from
    the state the call before it left; each call returns (seconds, final loss)."""
    holder = [state]
    steps = images.shape[0]

    def run() -> tuple[float, float]:
        started = time.perf_counter()
        state = holder[0]
        for i in range(steps):
            state, metrics = training.train_step_staged(state, images, labels, np.int32(i), None)
        jax.block_until_ready((state, metrics))
        holder[0] = state
        return time.perf_counter() - started, float(metrics["loss"])

    return run


def staged_train_pass(
    name: str, ds: data.Dataset, *, batch_size: int, steps: int
) -> Callable[[], tuple[float, float]]:
    """A callable running ``steps`` xaijax train steps (``training.train_step_staged``, as in
    ``training.fit``) on ``name``; each call returns (seconds, final loss). Not yet warmed up."""
    _, state, images, labels = staged_training(name, ds, batch_size=batch_size, steps=steps)
    return timed_train_steps(state, images, labels)


def bench_model(name: str, ds: data.Dataset, *, batch_size: int, steps: int, repeats: int):
    mesh = training.make_mesh()
    images, labels = first_batches(ds, batch_size)
    started = time.perf_counter()
    jax.block_until_ready(training.shard_batches(mesh, images, labels))
    stage_seconds = time.perf_counter() - started
    run = staged_train_pass(name, ds, batch_size=batch_size, steps=steps)

    started = time.perf_counter()
    run()  # Warm-up: compilation plus one pass.
    warmup_seconds = time.perf_counter() - started
    rates, cpu_rates = [], []
    for _ in range(repeats):
        cpu_started = time.process_time()
        seconds, loss = run()
        rates.append(steps * batch_size / seconds)
        cpu_rates.append(steps * batch_size / (time.process_time() - cpu_started))
    median = statistics.median(rates)
    epoch_steps = images.shape[0]
    with_staging = epoch_steps * batch_size / (stage_seconds + epoch_steps * batch_size / median)
    return {
        "model": name,
        "images_per_sec_median": median,
        "images_per_sec_min": min(rates),
        "images_per_sec_max": max(rates),
        "images_per_sec_epoch_incl_staging": with_staging,
        "epoch_staging_seconds": stage_seconds,
        "images_per_cpu_second_median": statistics.median(cpu_rates),
        "load_average_1min": os.getloadavg()[0],
        "warmup_seconds": warmup_seconds,
        "steps_per_run": steps,
        "repeats": repeats,
        "final_loss": loss,
        "pytorch_cpu_reference_images_per_sec": PYTORCH_REFERENCE[name],
        "ratio_to_reference": median / PYTORCH_REFERENCE[name],
    }


def main() -> None:
    parser = bench_arguments(__doc__, steps_help="steps per timed run (0: default)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    ds = data.load_dataset("fashion_mnist", "train", args.data_dir)
    print(
        f"jax {jax.__version__}, devices: {jax.device_count()} x {jax.devices()[0].platform}, "
        f"cpus: {os.cpu_count()}, batch {args.batch_size}, Adam",
        flush=True,
    )
    results = []
    for name in args.models.split(","):
        steps = args.steps or DEFAULT_STEPS.get(name, 50)
        result = bench_model(
            name, ds, batch_size=args.batch_size, steps=steps, repeats=args.repeats
        )
        results.append(result)
        print(
            f"{name:10s} {result['images_per_sec_median']:9.0f} images/s median "
            f"(min {result['images_per_sec_min']:.0f}, max {result['images_per_sec_max']:.0f}; "
            f"{result['images_per_sec_epoch_incl_staging']:.0f} over an epoch incl. staging; "
            f"{result['images_per_cpu_second_median']:.0f} per CPU-second of this process; "
            f"load average {result['load_average_1min']:.1f}) | "
            f"PyTorch CPU reference {result['pytorch_cpu_reference_images_per_sec']:.0f} -> "
            f"ratio {result['ratio_to_reference']:.2f}",
            flush=True,
        )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
