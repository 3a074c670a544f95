"""Knowledge distillation (Hinton, Vinyals & Dean, 2015): the teacher and the loss.

With student logits ``z``, teacher logits ``t``, label ``y``, weight ``a`` in [0, 1] and
temperature ``T > 0``, the per-example loss is

    L = (1 - a) * CE(z, y) + a * T^2 * KL(softmax(t / T) || softmax(z / T))
    KL(p || q) = sum_k p_k (log p_k - log q_k).

The ``T^2`` keeps the soft term's gradient on the scale of the hard one:
``dL/dz = (1 - a) (softmax(z) - onehot(y)) + a T (softmax(z / T) - softmax(t / T))``.
The teacher runs in eval mode (BatchNorm running statistics, no dropout) on the same
(augmented) batch as the student, and no gradient flows into it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from xaijax.training.state import shared_module


@struct.dataclass
class Teacher:
    """A frozen model the train step distills from: its ``variables`` (an argument of the
    compiled step, not a constant baked into it), the loss ``weight`` and ``temperature``
    (traced scalars: changing them does not recompile) and its static ``apply_fn``."""

    variables: Any
    weight: jax.Array
    temperature: jax.Array
    apply_fn: Callable[..., Any] = struct.field(pytree_node=False)


def check_distillation(weight: float, temperature: float, where: str = "") -> None:
    """Raise ``ValueError`` unless ``0 <= weight <= 1`` and ``temperature > 0`` (finite numbers;
    ``where`` prefixes the field names in the message, e.g. ``"config.finetune."``)."""
    for name, value in (("distill_weight", weight), ("distill_temperature", temperature)):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ValueError(f"{where}{name} must be a finite number, got {value!r}")
    if not 0 <= weight <= 1:
        raise ValueError(f"{where}distill_weight must be in [0, 1], got {weight!r}")
    if not temperature > 0:
        raise ValueError(f"{where}distill_temperature must be > 0, got {temperature!r}")


def make_teacher(
    model: nn.Module, variables: Mapping[str, Any], *, weight: float, temperature: float
) -> Teacher:
    """The :class:`Teacher` ``model`` with ``variables`` (bound to the shared module, so equal
    teachers reuse the compiled step)."""
    check_distillation(weight, temperature)
    return Teacher(
        variables=jax.tree.map(jnp.asarray, dict(variables)),
        weight=jnp.asarray(weight, jnp.float32),
        temperature=jnp.asarray(temperature, jnp.float32),
        apply_fn=shared_module(model).apply,
    )


def teacher_logits(teacher: Teacher, images: jax.Array) -> jax.Array:
    """The teacher's logits on ``images`` in eval mode, cut from the gradient."""
    return jax.lax.stop_gradient(teacher.apply_fn(teacher.variables, images, train=False))


def distillation_loss(
    logits: jax.Array,
    targets: jax.Array,
    labels: jax.Array,
    weight: jax.Array | float,
    temperature: jax.Array | float,
) -> jax.Array:
    """Per-example ``(1 - a) CE(logits, labels) + a T^2 KL(softmax(targets/T) ||
    softmax(logits/T))`` (module docstring); ``targets`` are the teacher's logits."""
    hard = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    log_p = jax.nn.log_softmax(targets / temperature, axis=-1)
    log_q = jax.nn.log_softmax(logits / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
    return (1 - weight) * hard + weight * temperature**2 * kl
