"""Everything built from a config: datasets, augmentation, the model, and
:func:`train_and_evaluate` (validate, train, evaluate on the test split)."""

from __future__ import annotations

import functools
import time
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from xaijax import config_utils, data, paths
from xaijax.sharding import initialize_distributed, local_batch_size, make_mesh
from xaijax.training.evaluation import evaluate
from xaijax.training.loop import fit
from xaijax.training.optimizer import make_optimizer
from xaijax.training.state import TrainState, create_train_state
from xaijax.training.steps import AugmentFn


def datasets_from_config(config: ml_collections.ConfigDict) -> data.Splits:
    """Train / validation (or None) / test splits of ``config.data``, standardized if asked."""
    return data.load_splits(
        config.data.name,
        config.data.data_dir,
        validation_size=config.data.validation_size,
        standardize=config.data.standardize,
        seed=config.train.seed,
    )


def augment_from_config(config: ml_collections.ConfigDict) -> AugmentFn | None:
    """``config.data.augment`` as a jax function of ``(key, images)`` (None for ``"none"``)."""
    kind = config.data.augment
    if kind == "none":
        return None
    pad = config.data.crop_padding if kind == "crop_flip" else 0
    return functools.partial(data.augment_batch, flip=True, pad=pad)


def model_from_config(config: ml_collections.ConfigDict) -> nn.Module:
    from xaijax import models

    return models.get_model(
        config.model.name,
        num_classes=config.model.num_classes,
        widths=config_utils.model_widths(config),
        model_kwargs=config_utils.model_kwargs(config) or None,
    )


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: paths.PathLike
) -> tuple[TrainState, dict[str, Any]]:
    """Validate ``config``, train (resuming from ``workdir`` if possible), evaluate on the test
    split. Returns the state and a results dict (test accuracy/loss, parameters, FLOPs per
    example, per-layer costs, epochs, steps, wall time, eval history, config)."""
    from xaijax import models

    config_utils.validate_config(config)
    started = time.perf_counter()
    initialize_distributed(config)
    splits = datasets_from_config(config)
    model = model_from_config(config)
    mesh = make_mesh()
    train = config.train
    local_batch = local_batch_size(train.batch_size, mesh, "config.train.batch_size")
    steps_per_epoch = (splits.train.num_examples // jax.process_count()) // local_batch
    if steps_per_epoch == 0:
        raise ValueError(
            f"config.train.batch_size {train.batch_size} exceeds the "
            f"{splits.train.num_examples} training examples"
        )
    tx = make_optimizer(config.optimizer, steps_per_epoch, train.epochs)
    sample = (1, *splits.train.images.shape[1:])
    state = create_train_state(model, tx, train.seed, sample)
    monitor = splits.validation if splits.validation is not None else splits.test
    state, history = fit(
        state,
        splits.train,
        monitor,
        workdir=workdir,
        epochs=train.epochs,
        batch_size=train.batch_size,
        seed=train.seed,
        checkpoint_every_steps=train.checkpoint_every_steps,
        keep=train.keep_checkpoints,
        eval_batch_size=train.eval_batch_size,
        log_every_steps=train.log_every_steps,
        eval_every_epochs=train.eval_every_epochs,
        augment=augment_from_config(config),
        mesh=mesh,
    )
    test = evaluate(state, splits.test, train.eval_batch_size, mesh=mesh)
    costs = models.layer_costs(model, jax.device_get(state.variables), sample[1:])
    results = {
        "test": test,
        "validation": (
            None
            if splits.validation is None
            else evaluate(state, splits.validation, train.eval_batch_size, mesh=mesh)
        ),
        "params": models.count_params(state.params),
        "flops": int(sum(c["flops"] for c in costs.values())),
        "layers": costs,
        "epochs": train.epochs,
        "steps": int(jax.device_get(state.step)),
        "steps_per_epoch": steps_per_epoch,
        "wall_time_s": time.perf_counter() - started,
        "num_devices": jax.device_count(),
        "history": history,
        "config": config.to_dict(),
    }
    return state, results
