"""Benchmark: DeepLIFT attributions against a plain input gradient of the same target.

For each model (LeNet-5 and the small VGG on 28x28x1 inputs, random weights), batch 128, it times
(jit-compiled, after warm-up, rounds interleaved so load affects every variant alike):

* ``grad``: ``jax.grad`` of the sum over the batch of the target logit w.r.t. the inputs;
* ``deeplift shared``: ``xaijax.deeplift.attribute`` with one reference shared by the batch;
* ``deeplift per-example``: one reference per example;
* ``reveal_cancel shared``: the RevealCancel rule with a shared reference.

Prints median seconds per call, the ratio to ``grad`` and images per second. Run:
``python scripts/bench_deeplift.py [--batch 128] [--rounds 20] [--models lenet5,vgg_small]``.

Measured (2 shared CPU cores under load ~8, jax 0.10.2, two runs; ratio to ``grad``):

    model      shared ref   per-example ref   reveal_cancel shared   grad images/s
    lenet5     0.97, 0.96   1.29, 1.29        2.74, 2.69             1593, 1604
    vgg_small  0.74, 0.76   1.04, 1.05        2.03, 2.06              248,  248

A shared reference is cheaper than the gradient: its side runs once at batch 1, and max-pool's
backward is the cross-max routing (strided slices) rather than XLA's select-and-scatter.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

from xaijax import deeplift
from xaijax.models import get_model


def _median_seconds(fns: dict[str, Callable[[], jax.Array]], rounds: int) -> dict[str, float]:
    for fn in fns.values():  # compile and warm up
        jax.block_until_ready(fn())
        jax.block_until_ready(fn())
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}


def bench_model(name: str, batch: int, rounds: int) -> None:
    model = get_model(name)
    keys = jax.random.split(jax.random.key(0), 4)
    shape = (batch, 28, 28, 1)
    variables = model.init(keys[0], jnp.zeros((1, *shape[1:])), train=False)
    images = jax.random.uniform(keys[1], shape)
    targets = jax.random.randint(keys[2], (batch,), 0, 10)
    shared_reference = jnp.zeros(shape[1:])
    references = jax.random.uniform(keys[3], shape) * 0.1

    # Weights and references are jit arguments: XLA cannot fold the reference side into constants.
    def logits(params, x):
        return model.apply(params, x, train=False)

    def target_sum(params, x):
        return jnp.take_along_axis(logits(params, x), targets[:, None], axis=1).sum()

    def explain(params, x, reference, rule="rescale"):
        return deeplift.attribute(
            lambda inputs: logits(params, inputs), x, reference, target=targets, rule=rule
        )

    grad = jax.jit(jax.grad(target_sum, argnums=1))
    attribute = jax.jit(explain, static_argnames="rule")
    times = _median_seconds(
        {
            "grad": lambda: grad(variables, images),
            "deeplift shared": lambda: attribute(variables, images, shared_reference),
            "deeplift per-example": lambda: attribute(variables, images, references),
            "reveal_cancel shared": lambda: attribute(
                variables, images, shared_reference, rule="reveal_cancel"
            ),
        },
        rounds,
    )
    print(f"{name} (batch {batch}, {jax.devices()[0].platform}):")
    for variant, seconds in times.items():
        ratio = seconds / times["grad"]
        print(
            f"  {variant:22s} {seconds * 1e3:8.2f} ms  {ratio:5.2f}x grad  "
            f"{batch / seconds:9.0f} images/s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--models", default="lenet5,vgg_small")
    args = parser.parse_args()
    for name in args.models.split(","):
        bench_model(name, args.batch, args.rounds)


if __name__ == "__main__":
    main()
