"""Benchmark: Hutchinson trace probes one compiled call at a time against all of them in one
``lax.map``.

For each model (LeNet-5 and the small VGG at the study's half widths, 28x28x1 inputs, random
weights), it times ``xaijax.quantization.hutchinson_traces`` (one jit-compiled forward-over-reverse
Hessian-vector product per probe, called ``--probes`` times) against the same probes run inside
one compiled ``lax.map`` (a while loop), each after a warm-up call with the same shapes, and
prints seconds, the ratio ``lax.map / per-probe call`` and the largest relative difference of the
traces (the two must agree). Each call builds and compiles its program, as a stage's call does.
Run: ``python scripts/bench_hessian.py [--examples 1024] [--probes 8] [--models lenet5,vgg_small]``.

Measured (2 CPU cores shared with a running study, jax 0.10.2, 1,024 examples, 4 probes):

    model      per-probe calls   one lax.map   ratio   max relative difference
    lenet5       6.41 s            11.88 s      1.9x    4.4e-06
    vgg_small   13.93 s           361.94 s     26.0x    1.9e-05
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from xaijax import training
from xaijax.models import get_model
from xaijax.quantization import hutchinson_traces

WIDTHS = {"vgg_small": {"conv1": 16, "conv2": 16, "conv3": 32, "conv4": 32, "fc1": 128}}


def traces_in_one_map(loss_fn, params, names, rng, num_samples: int) -> dict[str, float]:
    """The same estimator as ``hutchinson_traces`` with every probe inside one ``lax.map``."""

    def probe(params, key):
        keys = dict(zip(names, jax.random.split(key, len(names)), strict=True))

        def direction(path, leaf):
            layer = "/".join(str(entry.key) for entry in path[:-1])
            if layer in keys and path[-1].key == "kernel":
                return jax.random.rademacher(keys[layer], leaf.shape, leaf.dtype)
            return jnp.zeros_like(leaf)

        v = jax.tree_util.tree_map_with_path(direction, params)
        _, hv = jax.jvp(jax.grad(loss_fn), (params,), (v,))
        return {n: jnp.vdot(v[n]["kernel"], hv[n]["kernel"]) for n in names}

    run = jax.jit(lambda p, keys: jax.lax.map(lambda k: probe(p, k), keys))
    samples = run(dict(params), jax.random.split(rng, num_samples))
    return {n: float(jnp.mean(samples[n])) for n in names}


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def compare(
    name: str, images: jax.Array, labels: jax.Array, probes: int
) -> tuple[dict[str, float], float]:
    """Seconds of both variants on model ``name`` and the largest relative trace difference."""
    model = get_model(name, **({"widths": WIDTHS[name]} if name in WIDTHS else {}))
    variables = model.init(jax.random.key(0), images[:1], train=False)
    others = {k: v for k, v in variables.items() if k != "params"}
    names = [spec.name for spec in model.layer_specs()]

    def loss_fn(params):
        logits = model.apply({"params": params, **others}, images, train=False)
        return jnp.mean(training.cross_entropy(logits, labels))

    params, key = variables["params"], jax.random.key(1)
    runs = {
        "calls": lambda: hutchinson_traces(loss_fn, params, names, key, probes),
        "map": lambda: traces_in_one_map(loss_fn, params, names, key, probes),
    }
    seconds, traces = {}, {}
    for variant, fn in runs.items():
        fn()  # compile
        seconds[variant], traces[variant] = timed(fn)
    difference = max(
        abs(traces["calls"][n] - traces["map"][n]) / max(abs(traces["map"][n]), 1e-12)
        for n in names
    )
    return seconds, difference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1024)
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--models", default="lenet5,vgg_small")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.random((args.examples, 28, 28, 1), np.float32))
    labels = jnp.asarray(np.arange(args.examples) % 10)
    print(f"{args.examples} examples, {args.probes} probes; seconds after a warm-up call")
    print("| model | per-probe calls (s) | one lax.map (s) | ratio | max relative difference |")
    print("|---|---|---|---|---|")
    for name in args.models.split(","):
        seconds, difference = compare(name, images, labels, args.probes)
        ratio = seconds["map"] / seconds["calls"]
        print(
            f"| {name} | {seconds['calls']:.2f} | {seconds['map']:.2f} | {ratio:.1f}x "
            f"| {difference:.1e} |"
        )


if __name__ == "__main__":
    main()
