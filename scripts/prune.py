"""Prune a trained model by importance scores, fine-tune it with the mask, evaluate, report.

    python scripts/prune.py --config configs/lenet5_fmnist.py --workdir runs/lenet5_prune \\
        [--prune.criterion=taylor --prune.granularity=hybrid --prune.conv_sparsity=0.5 ...]

The trained model comes from ``prune.trained_workdir`` (default ``<workdir>/trained``): its
``variables/`` (saved by ``scripts/train.py``) are loaded, or, if absent, the model is trained there
with ``xaijax.training.train_and_evaluate`` first. Then: score on the first ``prune.num_examples``
training examples, mask (``prune.iterations`` rounds of prune + fine-tune), evaluate on the test
split, and for structured masks build the physically narrower model (``xaijax.pruning.shrink``).

Pruning settings are the ``prune`` section below (:func:`prune_defaults`); a ``prune`` section in
the config file overrides the defaults, ``--prune.<field>`` flags override both.
``workdir/results.json`` (written atomically) holds accuracy before pruning, after pruning and
after fine-tuning, unit and kernel sparsity per layer, parameters and FLOPs (dense, masked,
shrunk) and the wall time of each phase.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_dict, config_flags

from xaijax import checkpoint, data, importance, models, pruning, training

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file.", lock_config=False
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the pruning run's outputs.")


def prune_defaults() -> ml_collections.ConfigDict:
    """The ``prune`` config section and its defaults."""
    return ml_collections.ConfigDict(
        {
            # Where the trained model lives (None: <workdir>/trained).
            "trained_workdir": config_dict.placeholder(str),
            # Importance: a name of xaijax.importance.CRITERIA and its options.
            "criterion": "deeplift",
            "target": "label",
            "reference": config_dict.placeholder(str),  # None: the criterion's default
            "num_references": 8,
            "num_examples": 10_000,
            "score_batch_size": 128,
            "seed": 0,
            # Masks: "unit" (filters / neurons), "weight" (single weights) or "hybrid" (conv
            # filters and dense weights); fractions removed from conv and from dense layers.
            "granularity": "hybrid",
            "conv_sparsity": 0.5,
            "dense_sparsity": 0.9,
            "scope": "layer",
            "normalize": "mean",
            "min_units": 1,
            "prune_classifier": False,
            # Iterative schedule: rounds of prune + fine-tune.
            "iterations": 1,
            "schedule": "linear",
            # Fine-tuning (the config's optimizer with this learning rate, constant schedule).
            "finetune_epochs": 3,
            "finetune_learning_rate": 5e-4,
            "finetune_batch_size": config_dict.placeholder(int),  # None: config.train.batch_size
        }
    )


def prune_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Defaults, updated by the config file's ``prune`` section, then by ``--prune.*`` flags."""
    merged = prune_defaults()
    if "prune" in config:
        unknown = sorted(set(config.prune) - set(merged))
        if unknown:
            raise ValueError(f"config.prune has unknown fields {unknown}; known: {sorted(merged)}")
        merged.update(config.prune.to_dict())
    for field in merged:
        name = f"prune.{field}"
        if name in flags.FLAGS and flags.FLAGS[name].present:
            merged[field] = _PRUNE.value[field]
    validate_prune_config(merged)
    return merged


def validate_prune_config(prune: ml_collections.ConfigDict) -> None:
    """Raise ``ValueError`` naming the first bad ``prune`` field (before any work)."""
    importance.get_criterion(prune.criterion)
    choices = {
        "target": importance.TARGETS,
        "granularity": tuple(pruning.GRANULARITY_KINDS),
        "scope": pruning.SCOPES,
        "normalize": pruning.NORMALIZATIONS,
        "schedule": ("linear", "cubic"),
    }
    for field, allowed in choices.items():
        if prune[field] not in allowed:
            raise ValueError(f"config.prune.{field} must be one of {allowed}, got {prune[field]!r}")
    if prune.reference is not None and prune.reference not in importance.REFERENCES:
        raise ValueError(
            f"config.prune.reference must be None or one of {importance.REFERENCES}, "
            f"got {prune.reference!r}"
        )
    for field in ("conv_sparsity", "dense_sparsity"):
        if not 0 <= prune[field] < 1:
            raise ValueError(f"config.prune.{field} must be in [0, 1), got {prune[field]!r}")
    minimums = {
        "num_examples": 1,
        "score_batch_size": 1,
        "iterations": 1,
        "min_units": 1,
        "num_references": 1,
        "finetune_epochs": 0,
    }
    for field, minimum in minimums.items():
        if not isinstance(prune[field], int) or prune[field] < minimum:
            raise ValueError(
                f"config.prune.{field} must be an integer >= {minimum}, got {prune[field]!r}"
            )
    if not prune.finetune_learning_rate > 0:
        raise ValueError("config.prune.finetune_learning_rate must be > 0")


class Timer:
    """Wall time per named phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            logging.info("%s: %.1f s", name, self.seconds[name])


def load_or_train(config: ml_collections.ConfigDict, trained_workdir: Path) -> dict[str, Any]:
    """The trained variables in ``trained_workdir/variables``, training them first if absent."""
    variables_dir = trained_workdir / "variables"
    if not variables_dir.is_dir():
        logging.info("no trained model in %s: training it", trained_workdir)
        state, results = training.train_and_evaluate(config, trained_workdir)
        checkpoint.save_variables(variables_dir, jax.device_get(state.variables))
        checkpoint.write_json_atomic(trained_workdir / "results.json", results)
    return jax.tree.map(np.asarray, checkpoint.load_variables(variables_dir))


def finetune_fn(
    config: ml_collections.ConfigDict,
    prune: ml_collections.ConfigDict,
    model: Any,
    splits: data.Splits,
    workdir: Path,
) -> Callable[[Mapping[str, Any], Any], dict[str, Any]]:
    """``(variables, params_mask) -> fine-tuned variables`` via ``training.fit(..., mask=...)``;
    round ``r`` trains in ``workdir/finetune_<r>`` (resumable)."""
    batch_size = prune.finetune_batch_size or config.train.batch_size
    steps_per_epoch = splits.train.num_examples // batch_size
    optimizer = copy.deepcopy(config.optimizer)
    optimizer.learning_rate = prune.finetune_learning_rate
    optimizer.schedule = "constant"
    optimizer.warmup_epochs = 0.0
    rounds = {"count": 0}

    def finetune(variables: Mapping[str, Any], mask: Any) -> dict[str, Any]:
        rounds["count"] += 1
        if prune.finetune_epochs == 0:
            return dict(variables)
        epochs = prune.finetune_epochs
        tx = training.make_optimizer(optimizer, steps_per_epoch, epochs)
        sample = (1, *splits.train.images.shape[1:])
        state = training.create_train_state(
            model, tx, config.train.seed, sample, variables=variables
        )
        monitor = splits.validation if splits.validation is not None else splits.test
        state, _ = training.fit(
            state,
            splits.train,
            monitor,
            workdir=workdir / f"finetune_{rounds['count']}",
            epochs=epochs,
            batch_size=batch_size,
            seed=config.train.seed + rounds["count"],
            mask=mask,
            eval_batch_size=config.train.eval_batch_size,
            log_every_steps=config.train.log_every_steps,
            augment=training.augment_from_config(config),
        )
        return jax.device_get(state.variables)

    return finetune


def score_fn(
    prune: ml_collections.ConfigDict, model: Any, train: data.Dataset
) -> Callable[[Mapping[str, Any], str], Any]:
    """``(variables, granularity) -> scores`` with the ``prune`` options."""

    def scores(variables: Mapping[str, Any], granularity: str) -> Any:
        return jax.device_get(
            importance.score(
                prune.criterion,
                model,
                variables,
                train,
                granularity=granularity,
                batch_size=prune.score_batch_size,
                num_examples=min(prune.num_examples, train.num_examples),
                target=prune.target,
                reference=prune.reference,
                num_references=prune.num_references,
                seed=prune.seed,
            )
        )

    return scores


def accuracy(model: Any, variables: Mapping[str, Any], ds: data.Dataset, batch_size: int) -> float:
    return training.evaluate(model, ds, batch_size, variables=variables)["accuracy"]


def run(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, Any]:
    """The whole pruning experiment; returns the results dict (also written to results.json)."""
    prune = prune_config(config)
    workdir.mkdir(parents=True, exist_ok=True)
    trained_workdir = Path(prune.trained_workdir or workdir / "trained")
    timer = Timer()
    with timer.phase("load_or_train"):
        variables = load_or_train(config, trained_workdir)
    splits = training.datasets_from_config(config)
    model = training.model_from_config(config)
    specs = model.layer_specs()
    input_shape = splits.train.images.shape[1:]
    eval_batch = config.train.eval_batch_size
    exclude = () if prune.prune_classifier else pruning.default_exclude(specs)

    with timer.phase("evaluate_dense"):
        dense_accuracy = accuracy(model, variables, splits.test, eval_batch)
    score = score_fn(prune, model, splits.train)
    finetune = finetune_fn(config, prune, model, splits, workdir)
    before_finetune: list[float] = []

    def timed_score(current: Mapping[str, Any], granularity: str) -> Any:
        with timer.phase("score"):
            return score(current, granularity)

    def evaluate_then_finetune(current: Mapping[str, Any], mask: Any) -> dict[str, Any]:
        with timer.phase("evaluate_pruned"):
            before_finetune.append(accuracy(model, current, splits.test, eval_batch))
        with timer.phase("finetune"):
            return finetune(current, mask)

    result = pruning.iterative_prune(
        variables,
        specs=specs,
        score_fn=timed_score,
        finetune_fn=evaluate_then_finetune,
        num_steps=prune.iterations,
        conv_sparsity=prune.conv_sparsity,
        dense_sparsity=prune.dense_sparsity,
        granularity=prune.granularity,
        scope=prune.scope,
        schedule=prune.schedule,
        exclude=exclude,
        min_units=prune.min_units,
        normalize=prune.normalize,
    )
    with timer.phase("evaluate_finetuned"):
        final_accuracy = accuracy(model, result.variables, splits.test, eval_batch)

    dense_costs = models.layer_costs(model, variables, input_shape)
    masked = pruning.masked_costs(model, result.variables, result.params_mask, input_shape)
    results: dict[str, Any] = {
        "model": config.model.name,
        "dataset": config.data.name,
        "prune": prune.to_dict(),
        "accuracy": {
            "dense": dense_accuracy,
            "pruned_before_finetune": before_finetune[-1],
            "after_finetune": final_accuracy,
            "per_round_before_finetune": before_finetune,
        },
        "unit_sparsity": None
        if result.unit_masks is None
        else pruning.unit_sparsity(result.unit_masks),
        "kernel_sparsity": pruning.kernel_sparsity(specs, result.variables["params"]),
        "params": {
            "dense": models.count_params(variables["params"]),
            "dense_layers": pruning.total_costs(dense_costs)["params"],
            "masked_layers": pruning.total_costs(masked)["params"],
        },
        "flops": {
            "dense": pruning.total_costs(dense_costs)["flops"],
            "masked": pruning.total_costs(masked)["flops"],
        },
        "layers": {"dense": dense_costs, "masked": masked},
        "history": result.history,
    }
    if result.unit_masks is not None:
        with timer.phase("shrink"):
            narrow, narrow_variables = pruning.shrink(model, result.variables, result.unit_masks)
            narrow_costs = models.layer_costs(narrow, narrow_variables, input_shape)
            results["shrunk"] = {
                "widths": {s.name: int(result.unit_masks[s.name].sum()) for s in specs},
                "accuracy": accuracy(narrow, narrow_variables, splits.test, eval_batch),
                "params": models.count_params(narrow_variables["params"]),
                "flops": pruning.total_costs(narrow_costs)["flops"],
            }
            checkpoint.save_variables(workdir / "shrunk_variables", narrow_variables)
    checkpoint.save_variables(workdir / "pruned_variables", result.variables)
    results["wall_time_s"] = timer.seconds
    checkpoint.write_json_atomic(workdir / "results.json", results)
    return results


_PRUNE = config_flags.DEFINE_config_dict("prune", prune_defaults(), "Pruning settings.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)
    results = run(_CONFIG.value, Path(_WORKDIR.value))
    acc = results["accuracy"]
    print(
        f"accuracy dense {acc['dense']:.4f}, pruned {acc['pruned_before_finetune']:.4f}, "
        f"fine-tuned {acc['after_finetune']:.4f}; FLOPs {results['flops']['masked']} / "
        f"{results['flops']['dense']}; results in {Path(_WORKDIR.value) / 'results.json'}",
        flush=True,
    )


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
