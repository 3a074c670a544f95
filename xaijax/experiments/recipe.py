"""The fine-tuning recipe: the ``config.finetune`` section, the same for every stage and every
criterion, read by ``xaijax.experiments.common.finetune``.

Two options, both off by default (a run without them is exactly the plain fine-tuning, and keeps
its fingerprint):

* **Knowledge distillation** (``distill_weight`` ``a`` in [0, 1], ``distill_temperature``
  ``T > 0``): the loss is ``(1 - a) CE(z, y) + a T^2 KL(softmax(t/T) || softmax(z/T))``
  (``xaijax.training.distill``), ``t`` the logits of the *teacher* in eval mode. The teacher
  is the dense model the stage starts from: for pruning the model before pruning (every round of
  iterative pruning distills from it, not from the previous round), for weight sharing the float
  model before clustering, for quantization the float (unquantized) model. In a pipeline that is
  the stage's starting point: sharing after pruning distills from the pruned, fine-tuned model.
* **Learning-rate rewinding** (``lr_rewind``; Renda, Frankle & Carbin, ICLR 2020): an
  ``E``-epoch fine-tuning follows ``config.optimizer``'s schedule over ``config.train.epochs``
  (warm-up included) from epoch ``train.epochs - E``, i.e.
  ``eta(s) = eta_train(s + (train.epochs - E) * steps_per_epoch)`` with the fine-tuning's own
  steps per epoch, instead of the stage's ``finetune_learning_rate`` and schedule.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
import optax

from xaijax import provenance, training
from xaijax.training.distill import check_distillation


def finetune_defaults() -> ml_collections.ConfigDict:
    """The ``config.finetune`` section and its defaults (module docstring)."""
    return ml_collections.ConfigDict(
        {"distill_weight": 0.0, "distill_temperature": 4.0, "lr_rewind": False}
    )


def validate_finetune(options: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the first bad ``config.finetune`` field."""
    check_distillation(
        options["distill_weight"], options["distill_temperature"], where="config.finetune."
    )
    if not isinstance(options["lr_rewind"], bool):
        raise ValueError(f"config.finetune.lr_rewind must be a bool, got {options['lr_rewind']!r}")


def finetune_section(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config.finetune`` merged over :func:`finetune_defaults` (unknown fields rejected) and
    validated before merging, so that a value of the wrong type is named, not cast."""
    defaults = finetune_defaults()
    section = config.get("finetune")
    given = section.to_dict() if hasattr(section, "to_dict") else dict(section or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"config.finetune has unknown fields {unknown}; known: {sorted(defaults)}")
    merged = {**defaults.to_dict(), **given}
    validate_finetune(merged)
    return ml_collections.ConfigDict(merged)


def recipe(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The ``config.finetune`` options that are on: ``distill_weight`` and
    ``distill_temperature`` when distilling, ``lr_rewind`` when rewinding; ``{}`` by default."""
    options = finetune_section(config)
    on: dict[str, Any] = {}
    if options.distill_weight > 0:
        on["distill_weight"] = float(options.distill_weight)
        on["distill_temperature"] = float(options.distill_temperature)
    if options.lr_rewind:
        on["lr_rewind"] = True
    return on


def with_recipe(
    fingerprint: Callable[[ml_collections.ConfigDict, Any, str], provenance.Fingerprint],
) -> Callable[[ml_collections.ConfigDict, Any, str], provenance.Fingerprint]:
    """A stage fingerprint that also holds the :func:`recipe` (as ``finetune.*``) when an option
    is on; unchanged otherwise."""

    def extended(
        config: ml_collections.ConfigDict, model: Any, start_digest: str
    ) -> provenance.Fingerprint:
        found = fingerprint(config, model, start_digest)
        options = recipe(config)
        return found.extend(finetune=options) if options else found

    return extended


def finetune_optimizer(
    config: ml_collections.ConfigDict,
    *,
    steps_per_epoch: int,
    epochs: int,
    learning_rate: float,
    schedule: str = "constant",
) -> optax.GradientTransformation:
    """The config's optimizer for an ``epochs``-epoch fine-tuning: at ``learning_rate`` with
    ``schedule`` (no warm-up), or with ``config.finetune.lr_rewind`` the original schedule's
    last ``epochs`` epochs (``xaijax.training.rewound_schedule`` over ``config.train.epochs``,
    in steps of this fine-tuning's batch size)."""
    if finetune_section(config).lr_rewind:
        if epochs > config.train.epochs:
            raise ValueError(
                f"config.finetune.lr_rewind replays the last fine-tuning epochs of the "
                f"config.train.epochs={config.train.epochs} schedule; {epochs} epochs is more"
            )
        rewound = training.rewound_schedule(
            config.optimizer, steps_per_epoch, config.train.epochs, epochs
        )
        return training.make_optimizer(config.optimizer, steps_per_epoch, epochs, schedule=rewound)
    optimizer = copy.deepcopy(config.optimizer)
    optimizer.learning_rate = learning_rate
    optimizer.schedule = schedule
    optimizer.warmup_epochs = 0.0
    return training.make_optimizer(optimizer, steps_per_epoch, epochs)
