"""Optax optimizers and learning-rate schedules (and their rewinding) from a
``config.optimizer`` section."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

from xaijax import config_utils


def make_schedule(
    config: ml_collections.ConfigDict, steps_per_epoch: int, epochs: int
) -> optax.Schedule:
    """Learning rate per step: linear warm-up over ``warmup_epochs`` from 0, then ``constant``,
    ``cosine`` (to 0 at the last step) or ``step`` (times ``decay_factor`` at each of
    ``decay_epochs``)."""
    if steps_per_epoch < 1 or epochs < 1:
        raise ValueError(
            f"need steps_per_epoch >= 1 and epochs >= 1, got {steps_per_epoch}, {epochs}"
        )
    base = float(config.learning_rate)
    total = steps_per_epoch * epochs
    warmup = round(float(config.get("warmup_epochs", 0.0)) * steps_per_epoch)
    kind = config.get("schedule", "constant")
    if kind == "constant":
        main = optax.constant_schedule(base)
    elif kind == "cosine":
        main = optax.cosine_decay_schedule(base, decay_steps=max(total - warmup, 1))
    elif kind == "step":
        boundaries = {
            round(float(e) * steps_per_epoch) - warmup: float(config.decay_factor)
            for e in config.decay_epochs
        }
        main = optax.piecewise_constant_schedule(base, boundaries)
    else:
        raise ValueError(
            f"config.optimizer.schedule must be one of {config_utils.SCHEDULES}, got {kind!r}"
        )
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, base, warmup), main], [warmup])


def rewound_schedule(
    config: ml_collections.ConfigDict, steps_per_epoch: int, epochs: int, rewind_epochs: int
) -> optax.Schedule:
    """Learning-rate rewinding (Renda, Frankle & Carbin, ICLR 2020): the schedule of
    :func:`make_schedule` over ``epochs`` epochs (warm-up included), replayed from epoch
    ``epochs - rewind_epochs`` for a ``rewind_epochs``-epoch retraining:

        eta_rewound(s) = eta(s + (epochs - rewind_epochs) * steps_per_epoch),
        s = 0 .. rewind_epochs * steps_per_epoch - 1,

    so the retraining ends where the original training ended."""
    if not isinstance(rewind_epochs, int) or not 1 <= rewind_epochs <= epochs:
        raise ValueError(
            f"learning-rate rewinding replays the last rewind_epochs of the {epochs} training "
            f"epochs: rewind_epochs must be an integer in [1, {epochs}], got {rewind_epochs!r}"
        )
    schedule = make_schedule(config, steps_per_epoch, epochs)
    offset = (epochs - rewind_epochs) * steps_per_epoch
    return lambda step: schedule(step + offset)


def _decay_mask(params: Any) -> Any:
    """Weight decay applies to kernels (ndim > 1), not to biases or BatchNorm scales."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(
    config: ml_collections.ConfigDict,
    steps_per_epoch: int,
    epochs: int,
    *,
    schedule: optax.Schedule | None = None,
) -> optax.GradientTransformation:
    """Optax transformation from ``config`` (a ``config.optimizer`` section).

    ``sgd``: momentum (optionally Nesterov) with L2 weight decay added to the gradient;
    ``adam``: Adam with the same coupled L2 decay; ``adamw``: decoupled weight decay. Decay skips
    1-D parameters. ``grad_clip_norm > 0`` clips the global gradient norm first. ``schedule``
    (e.g. :func:`rewound_schedule`) replaces the config's learning-rate schedule.
    """
    if schedule is None:
        schedule = make_schedule(config, steps_per_epoch, epochs)
    name = config.name
    decay = float(config.get("weight_decay", 0.0))
    parts = []
    if float(config.get("grad_clip_norm", 0.0)) > 0:
        parts.append(optax.clip_by_global_norm(float(config.grad_clip_norm)))
    if name in ("sgd", "adam") and decay > 0:
        parts.append(optax.add_decayed_weights(decay, mask=_decay_mask))
    if name == "sgd":
        momentum = float(config.get("momentum", 0.0)) or None
        parts.append(optax.sgd(schedule, momentum=momentum, nesterov=bool(config.get("nesterov"))))
    elif name == "adam":
        parts.append(optax.adam(schedule))
    elif name == "adamw":
        parts.append(optax.adamw(schedule, weight_decay=decay, mask=_decay_mask))
    else:
        raise ValueError(
            f"config.optimizer.name must be one of {config_utils.OPTIMIZERS}, got {name!r}"
        )
    return optax.chain(*parts)
