"""Jit-compiled, data-parallel, resumable training of Flax linen classifiers.

Parallelism: one ``jax.sharding.Mesh`` over all devices with axis ``"data"``; batches are sharded
along it and the train state is replicated, so XLA inserts the gradient all-reduce (and BatchNorm
statistics are taken over the global batch). The same code runs on 1 CPU, several GPUs or a TPU
slice; with ``config.train.multihost`` each process feeds its share of every batch
(``xaijax.data.shard_for_host``).

Loss: mean softmax cross-entropy of the logits against integer labels. The optimizer is any optax
transformation; :func:`make_optimizer` builds SGD (momentum, Nesterov) / Adam / AdamW with
constant, cosine or step schedules and linear warm-up from a config.

Chaining gradient transforms (e.g. summing gradients per weight-sharing cluster): build the
transformation yourself and hand it to :func:`create_train_state`::

    tx = optax.chain(my_grad_transform, make_optimizer(config.optimizer, steps_per_epoch, epochs))
    state = create_train_state(model, tx, rng, sample_images, variables=loaded_variables)
    state, history = fit(state, train_ds, test_ds, workdir=..., epochs=..., batch_size=...)

Masks (pruning) are optax transforms too: chain ``xaijax.pruning.keep_pruned(mask)`` after the
optimizer and pruned weights stay exactly zero; the mask travels (and is checkpointed) in the
optimizer state.

The package, one module per concept (each imports only those listed before it):
``state`` (:class:`TrainState`, :func:`create_train_state`, :func:`shared_module`),
``optimizer`` (:func:`make_schedule`, :func:`rewound_schedule`, :func:`make_optimizer`),
``distill`` (:class:`Teacher`, :func:`make_teacher`, :func:`distillation_loss`: knowledge
distillation from a frozen model, an option of every step), ``steps`` (:func:`cross_entropy`,
the jit-compiled :func:`train_step`, :func:`train_step_staged`, :func:`eval_step`),
``evaluation`` (:func:`evaluate`), ``metrics`` (:class:`MetricWriter`, :func:`json_line`, the
progress bar), ``loop`` (:func:`fit`) and ``from_config`` (:func:`train_and_evaluate` and the
datasets, augmentation and model of a config). The mesh helpers (``DATA_AXIS``, ``make_mesh``,
``replicate``, ``shard_batches``, ``initialize_distributed``) live in ``xaijax.sharding`` and are
re-exported here.
"""

from xaijax.sharding import DATA_AXIS, initialize_distributed, make_mesh, replicate, shard_batches
from xaijax.training.distill import Teacher, distillation_loss, make_teacher
from xaijax.training.evaluation import evaluate
from xaijax.training.from_config import (
    augment_from_config,
    datasets_from_config,
    model_from_config,
    train_and_evaluate,
)
from xaijax.training.loop import STAGE_BYTES_LIMIT, fit
from xaijax.training.metrics import MetricWriter, json_line
from xaijax.training.optimizer import make_optimizer, make_schedule, rewound_schedule
from xaijax.training.state import TrainState, create_train_state, shared_module
from xaijax.training.steps import AugmentFn, cross_entropy, eval_step, train_step, train_step_staged

__all__ = [
    "DATA_AXIS",
    "STAGE_BYTES_LIMIT",
    "AugmentFn",
    "MetricWriter",
    "Teacher",
    "TrainState",
    "augment_from_config",
    "create_train_state",
    "cross_entropy",
    "datasets_from_config",
    "distillation_loss",
    "eval_step",
    "evaluate",
    "fit",
    "initialize_distributed",
    "json_line",
    "make_mesh",
    "make_optimizer",
    "make_schedule",
    "make_teacher",
    "model_from_config",
    "replicate",
    "rewound_schedule",
    "shard_batches",
    "shared_module",
    "train_and_evaluate",
    "train_step",
    "train_step_staged",
]
