"""The jit-compiled steps: the loss, one optimizer step (on a batch or on staged batches) and
weighted evaluation sums (per batch or scanned over staged batches).

A step takes an optional :class:`xaijax.training.distill.Teacher` (an argument, so its variables
are inputs of the compiled program); without one (``None``) the traced program is the plain
cross-entropy step."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax

from xaijax.training.distill import Teacher, distillation_loss, teacher_logits
from xaijax.training.state import TrainState, _variables

AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example ``-log softmax(logits)[label]``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _train_step(
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    augment: AugmentFn | None,
    teacher: Teacher | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    chex.assert_rank(images, 4)
    chex.assert_rank(labels, 1)
    chex.assert_equal_shape_prefix((images, labels), 1)
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    augment_key, dropout_key = jax.random.split(step_key)
    if augment is not None:
        images = augment(augment_key, images)
    targets = None if teacher is None else teacher_logits(teacher, images)

    def loss_fn(params: Any) -> tuple[jax.Array, tuple[jax.Array, Any]]:
        variables = _variables(params, state.batch_stats)
        rngs = {"dropout": dropout_key}
        if state.batch_stats:
            logits, updates = state.apply_fn(
                variables, images, train=True, mutable=["batch_stats"], rngs=rngs
            )
            batch_stats = updates["batch_stats"]
        else:
            logits = state.apply_fn(variables, images, train=True, rngs=rngs)
            batch_stats = state.batch_stats
        if teacher is None:
            return cross_entropy(logits, labels).mean(), (logits, batch_stats)
        loss = distillation_loss(logits, targets, labels, teacher.weight, teacher.temperature)
        return loss.mean(), (logits, batch_stats)

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
        "grad_norm": optax.tree.norm(grads),
    }
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    return new_state, metrics


@functools.partial(jax.jit, static_argnames=("augment",))
def train_step(
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    *,
    augment: AugmentFn | None = None,
    teacher: Teacher | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on a batch; returns the new state and ``{loss, accuracy, grad_norm}``
    (loss and accuracy of the batch before the update). The loss is the mean cross-entropy, or
    with a ``teacher`` the distillation loss of ``xaijax.training.distill``."""
    return _train_step(state, images, labels, augment, teacher)


@functools.partial(jax.jit, static_argnames=("augment",), donate_argnums=(0,))
def train_step_staged(
    state: TrainState,
    staged_images: jax.Array,
    staged_labels: jax.Array,
    index: jax.Array,
    augment: AugmentFn | None,
    teacher: Teacher | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """``train_step`` on batch ``index`` of device-resident ``[steps, B, ...]`` arrays (see
    :func:`xaijax.sharding.shard_batches`); donates ``state``, so keep only the returned one.
    Indexing inside the compiled step avoids a host round trip per batch."""
    images = jax.lax.dynamic_index_in_dim(staged_images, index, keepdims=False)
    labels = jax.lax.dynamic_index_in_dim(staged_labels, index, keepdims=False)
    return _train_step(state, images, labels, augment, teacher)


def _weighted_sums(
    logits: jax.Array, labels: jax.Array, weights: jax.Array
) -> dict[str, jax.Array]:
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(weights * cross_entropy(logits, labels)),
        "correct_sum": jnp.sum(weights * correct),
        "count": jnp.sum(weights),
    }


@functools.partial(jax.jit, static_argnums=0)
def _eval_sums(
    apply_fn: Callable[..., Any], variables: Any, images: Any, labels: Any, weights: Any
) -> dict[str, jax.Array]:
    return _weighted_sums(apply_fn(variables, images, train=False), labels, weights)


@functools.partial(jax.jit, static_argnums=0)
def _eval_staged(
    apply_fn: Callable[..., Any], variables: Any, images: Any, labels: Any, weights: Any
) -> dict[str, jax.Array]:
    """Sum :func:`_weighted_sums` over batches ``[num_batches, B, ...]`` in one compiled scan."""

    def body(totals: dict[str, jax.Array], batch: tuple[Any, Any, Any]) -> tuple[Any, None]:
        x, y, w = batch
        sums = _weighted_sums(apply_fn(variables, x, train=False), y, w)
        return jax.tree.map(jnp.add, totals, sums), None

    zeros = {k: jnp.zeros((), jnp.float32) for k in ("loss_sum", "correct_sum", "count")}
    totals, _ = jax.lax.scan(body, zeros, (images, labels, weights))
    return totals


def eval_step(
    state: TrainState, images: jax.Array, labels: jax.Array, weights: jax.Array
) -> dict[str, jax.Array]:
    """Weighted sums over a batch: ``loss_sum`` (cross-entropy), ``correct_sum`` and ``count``
    (sum of weights); padded examples carry weight 0."""
    return _eval_sums(state.apply_fn, state.variables, images, labels, weights)
