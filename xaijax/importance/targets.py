"""Which output a data-driven criterion explains: the target class of each example.

* ``"label"``: the true class.
* ``"predicted"``: ``argmax`` of the logits.
* ``"all"``: every class (vmapped over the classes); the per-example absolute scores are averaged
  over the classes, ``S_n = mean_c S_n(c)``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from xaijax.importance.criterion import Criterion, Granularity, Scores, Variables
from xaijax.models import inference_kwargs

TARGETS = ("label", "predicted", "all")


def _class_count(model: nn.Module, variables: Variables, images: jax.Array) -> int:
    apply = lambda x: model.apply(variables, x, **inference_kwargs(model))
    return jax.eval_shape(apply, images[:1]).shape[-1]


def per_example_scores(
    criterion: Criterion,
    model: nn.Module,
    variables: Variables,
    images: jax.Array,
    labels: jax.Array,
    references: jax.Array,
    *,
    granularity: Granularity,
    target: str,
    rule: str,
) -> Scores:
    """Scores of each example (leading batch axis) for the chosen ``target`` mode."""

    def for_targets(targets):
        return criterion.per_example(
            model, variables, images, targets, references, granularity=granularity, rule=rule
        )

    if target == "label":
        return for_targets(labels.astype(jnp.int32))
    if target == "predicted":
        logits = model.apply(variables, images, **inference_kwargs(model))
        return for_targets(jnp.argmax(logits, axis=-1).astype(jnp.int32))
    classes = jnp.arange(_class_count(model, variables, images), dtype=jnp.int32)
    # One class after another (lax.map), not vmapped: vmapping the kernel pullback of a
    # convolution over classes hits a batching rule JAX does not implement (the transposed
    # conv's batch groups), and a loop holds one class's scores at a time.
    per_class = jax.lax.map(lambda c: for_targets(jnp.full(labels.shape, c)), classes)
    return jax.tree.map(lambda s: s.mean(axis=0), per_class)
