"""Benchmark: DeepLIFT unit scoring against one gradient pass over the same examples.

For LeNet-5 and the small VGG (28x28x1, freshly initialised weights), it times, in one run and
after compilation, with rounds interleaved so machine load affects both alike:

* ``deeplift``: ``xaijax.importance.score("deeplift", ..., granularity="unit")`` over
  ``--examples`` examples (all prunable layers, true-label target, zero reference);
* ``grad``: one jit-compiled gradient of the summed cross-entropy with respect to the parameters per
  batch, over the same examples, batches and host loop (padded last batch weighted 0).

Prints the median seconds of each and their ratio (aim: deeplift / grad <= 1.5). Images are the
first ``--examples`` Fashion-MNIST training images when the files are present, else uniform noise.

    python scripts/bench_importance.py [--examples 10000] [--batch 128] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xaijax import data, importance
from xaijax.models import get_model


def load_images(count: int) -> tuple[np.ndarray, np.ndarray, str]:
    try:
        ds = data.load_dataset("fashion_mnist", "train")
        return ds.images[:count], ds.labels[:count], "fashion_mnist"
    except (FileNotFoundError, ValueError):
        rng = np.random.default_rng(0)
        images = rng.uniform(size=(count, 28, 28, 1)).astype(np.float32)
        return images, rng.integers(0, 10, count).astype(np.int32), "uniform noise"


def gradient_pass(model, batch_size: int):
    """``(variables, images, labels) -> summed parameter gradient`` streamed like ``score``."""

    @jax.jit
    def step(variables, images, labels, weights):
        def loss(params):
            logits = model.apply({**variables, "params": params}, images, train=False)
            per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            return jnp.sum(weights * per_example)

        return jax.grad(loss)(variables["params"])

    def run(variables, images, labels):
        total = None
        for start in range(0, images.shape[0], batch_size):
            stop = min(start + batch_size, images.shape[0])
            pad = batch_size - (stop - start)
            batch = np.pad(images[start:stop], ((0, pad), (0, 0), (0, 0), (0, 0)))
            batch_labels = np.pad(labels[start:stop], (0, pad))
            weights = np.concatenate([np.ones(stop - start, np.float32), np.zeros(pad, np.float32)])
            grads = step(variables, batch, batch_labels, weights)
            total = grads if total is None else jax.tree.map(jnp.add, total, grads)
        return total

    return run


def bench(name: str, images: np.ndarray, labels: np.ndarray, batch: int, rounds: int) -> float:
    model = get_model(name)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, *images.shape[1:])))
    grad = gradient_pass(model, batch)
    variants = {
        "deeplift": lambda x, y: importance.score(
            "deeplift", model, variables, (x, y), granularity="unit", batch_size=batch
        ),
        "grad": lambda x, y: grad(variables, x, y),
    }
    for fn in variants.values():  # compile and warm up on two batches
        jax.block_until_ready(fn(images[: 2 * batch], labels[: 2 * batch]))
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(rounds):
        for variant, fn in variants.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(images, labels))
            times[variant].append(time.perf_counter() - start)
    medians = {v: statistics.median(t) for v, t in times.items()}
    ratio = medians["deeplift"] / medians["grad"]
    print(
        f"{name}: {images.shape[0]} examples, batch {batch}, {jax.devices()[0].platform}: "
        f"deeplift unit scores {medians['deeplift']:.2f} s, gradient pass {medians['grad']:.2f} s, "
        f"ratio {ratio:.2f} ({images.shape[0] / medians['deeplift']:.0f} images/s)",
        flush=True,
    )
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", default="lenet5,vgg_small")
    args = parser.parse_args()
    images, labels, source = load_images(args.examples)
    print(f"images: {source}", flush=True)
    for name in args.models.split(","):
        bench(name, images, labels, args.batch, args.rounds)


if __name__ == "__main__":
    main()
