"""Pruning experiment: score, mask, fine-tune with the mask, evaluate, shrink.

Settings are the ``config.prune`` section (:func:`defaults`). Scoring follows its importance
sub-section ``config.prune.importance`` (``xaijax.experiments.scoring``: by default the first
``num_examples`` training examples); masks come from ``xaijax.pruning`` (``iterations`` rounds of
prune + fine-tune); structured masks also give the physically narrower model
(``xaijax.experiments.layers.shrink``: ``pruning.shrink``, or ``pruning.shrink_any`` for a model
without the ``widths`` hook). ``workdir/results.json`` (atomic) holds accuracy before pruning,
after pruning and after fine-tuning, the fine-tuning options that are on (``finetune``:
``xaijax.experiments.recipe``; the distillation teacher is the dense model), unit and kernel
sparsity per layer, parameters, FLOPs and storage (dense, masked, shrunk) and the wall time of
each phase; ``pruned_variables`` (masked, original shapes) and, for structured masks,
``shrunk_variables`` are saved beside it.

The criteria x sparsities sweep of one-shot pruning, built on this run's pieces, is
``xaijax.experiments.sweep``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
from etils import epath
from ml_collections import config_dict

from xaijax import checkpoint, data, importance, models, provenance, pruning
from xaijax.experiments import common, layers, scoring, sections, stage


def defaults() -> ml_collections.ConfigDict:
    """The ``prune`` config section and its defaults."""
    return ml_collections.ConfigDict(
        {
            # Where the model comes from: saved variables, else the baseline trained (if absent)
            # in trained_workdir (None: <workdir>/trained).
            **common.starting_point_defaults(),
            # Importance: a name of xaijax.importance.CRITERIA, and how it scores
            # (xaijax.experiments.scoring; the seed draws references and balanced examples).
            "criterion": "deeplift",
            "importance": scoring.defaults(num_examples=10_000, batch_size=128),
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
            # Equal size across criteria: None, or the fraction of the dense model's parameters
            # kept; the last round's dense sparsity is then chosen to meet it exactly
            # (xaijax.pruning.match_sparsity) instead of dense_sparsity.
            "param_budget": config_dict.placeholder(float),
            # Iterative schedule: rounds of prune + fine-tune.
            "iterations": 1,
            "schedule": "linear",
            # Fine-tuning (the config's optimizer with this learning rate, constant schedule).
            "finetune_epochs": 3,
            "finetune_learning_rate": 5e-4,
            "finetune_batch_size": config_dict.placeholder(int),  # None: config.train.batch_size
        }
    )


def validate(prune: ml_collections.ConfigDict) -> None:
    """Raise ``ValueError`` naming the first bad ``prune`` field (before any work)."""
    importance.get_criterion(prune.criterion)
    scoring.validate(prune.importance, "prune.importance")
    choices = {
        "granularity": tuple(pruning.GRANULARITY_KINDS),
        "scope": pruning.SCOPES,
        "normalize": pruning.NORMALIZATIONS,
        "schedule": ("linear", "cubic"),
    }
    for field, allowed in choices.items():
        sections.check_choice(prune, "prune", field, allowed)
    for field in ("conv_sparsity", "dense_sparsity"):
        if not 0 <= prune[field] < 1:
            raise ValueError(f"config.prune.{field} must be in [0, 1), got {prune[field]!r}")
    minimums = {"seed": 0, "iterations": 1, "min_units": 1, "finetune_epochs": 0}
    sections.check_integers(prune, "prune", minimums)
    if not prune.finetune_learning_rate > 0:
        raise ValueError("config.prune.finetune_learning_rate must be > 0")
    if prune.param_budget is not None and not 0 < prune.param_budget < 1:
        raise ValueError(
            f"config.prune.param_budget must be None or in (0, 1), got {prune.param_budget!r}"
        )


#: Fields added after results were cached, at the value that computes what they computed before:
#: fingerprints leave them out at that value (``common.plain``).
NEUTRAL_FIELDS = {"importance": scoring.NEUTRAL_FIELDS}
#: ``prune`` fields that only locate the starting point (its digest stands for them).
STARTING_POINT_FIELDS = common.STARTING_POINT_FIELDS
#: ``prune`` fields that ``xaijax.experiments.sweep`` replaces by the sweep point (or, one-shot,
#: ignores).
SWEPT_FIELDS = (
    "criterion",
    "conv_sparsity",
    "dense_sparsity",
    "granularity",
    "iterations",
    "schedule",
    "param_budget",
)


def prune_fingerprint(
    config: ml_collections.ConfigDict,
    prune: ml_collections.ConfigDict,
    model: nn.Module,
    start_digest: str,
    *,
    drop: tuple[str, ...] = (),
) -> provenance.Fingerprint:
    """What determines a pruning run: the model, the digest of its starting variables, the
    ``prune`` fields (less ``drop``) and the fine-tuning settings."""
    return provenance.fingerprint(
        unit="prune",
        model=provenance.model_identity(model),
        start=start_digest,
        data=config.data,
        prune=common.plain(prune, (*STARTING_POINT_FIELDS, *drop), NEUTRAL_FIELDS),
        finetune=common.finetune_settings(
            config,
            epochs=prune.finetune_epochs,
            learning_rate=prune.finetune_learning_rate,
            batch_size=prune.finetune_batch_size,
        ),
    )


def finetune_fn(
    config: ml_collections.ConfigDict,
    prune: ml_collections.ConfigDict,
    model: nn.Module,
    splits: data.Splits,
    workdir: epath.Path,
    unit: provenance.Fingerprint,
    *,
    dense: Mapping[str, Any] | None = None,
) -> Callable[[Mapping[str, Any], Any], dict[str, Any]]:
    """``(variables, params_mask) -> fine-tuned variables``; round ``r`` trains (resumably) in
    ``workdir/finetune_<r>`` with the mask re-applied after every update, tied to ``unit``.
    ``dense`` (the variables before pruning) is the teacher of ``config.finetune``'s
    distillation, which requires it."""
    rounds = {"count": 0}

    def finetune(variables: Mapping[str, Any], mask: Any) -> dict[str, Any]:
        rounds["count"] += 1
        return common.finetune(
            config,
            model,
            splits,
            variables,
            workdir=workdir / f"finetune_{rounds['count']}",
            unit=unit,
            epochs=prune.finetune_epochs,
            learning_rate=prune.finetune_learning_rate,
            batch_size=prune.finetune_batch_size,
            mask=mask,
            seed_offset=rounds["count"],
            teacher=None if dense is None else (model, dense),
        )

    return finetune


def score_fn(
    prune: ml_collections.ConfigDict, model: Any, train: data.Dataset
) -> Callable[[Mapping[str, Any], str], Any]:
    """``(variables, granularity) -> scores`` of ``prune.criterion`` under ``prune.importance``
    (``scoring.score_arguments``)."""
    arguments = scoring.score_arguments(prune.importance, train, seed=prune.seed)

    def scores(variables: Mapping[str, Any], granularity: str) -> Any:
        return jax.device_get(
            importance.score(
                prune.criterion, model, variables, granularity=granularity, **arguments
            )
        )

    return scores


def exclude_from(prune: ml_collections.ConfigDict, specs: Sequence[models.LayerSpec]) -> tuple:
    """Layers never pruned: the classifier unless ``prune.prune_classifier``."""
    return () if prune.prune_classifier else pruning.default_exclude(specs)


@common.stage_run("prune", defaults, validate)
def run(config: ml_collections.ConfigDict, start: common.Start) -> dict[str, Any]:
    """The whole pruning experiment; returns the results dict (also written to results.json)."""
    timer = common.Timer()
    timer.seconds["load_or_train"] = start.seconds
    prune, finetune_recipe, workdir, model, variables, splits, _ = start
    input_shape = splits.train.images.shape[1:]
    specs = layers.specs(model, input_shape)
    eval_batch = config.train.eval_batch_size

    def accuracy(model: nn.Module, variables: Mapping[str, Any]) -> float:
        return common.evaluate_test(model, variables, splits, eval_batch)["accuracy"]

    exclude = exclude_from(prune, specs)

    with timer.phase("evaluate_dense"):
        dense_accuracy = accuracy(model, variables)
    score = score_fn(prune, model, splits.train)
    unit = prune_fingerprint(config, prune, model, provenance.variables_digest(variables))
    finetune = finetune_fn(config, prune, model, splits, workdir, unit, dense=variables)
    before_finetune: list[float] = []

    def timed_score(current: Mapping[str, Any], granularity: str) -> Any:
        with timer.phase("score"):
            return score(current, granularity)

    def evaluate_then_finetune(current: Mapping[str, Any], mask: Any) -> dict[str, Any]:
        with timer.phase("evaluate_pruned"):
            before_finetune.append(accuracy(model, current))
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
        param_budget=None
        if prune.param_budget is None
        else round(prune.param_budget * models.count_params(variables["params"])),
    )
    with timer.phase("evaluate_finetuned"):
        final_accuracy = common.evaluate_test(model, result.variables, splits, eval_batch)[
            "accuracy"
        ]

    dense_costs = layers.costs(model, variables, input_shape, specs)
    masked = pruning.masked_costs(
        model, result.variables, result.params_mask, input_shape, specs=specs
    )
    results: dict[str, Any] = {
        "model": config.model.name,
        "dataset": config.data.name,
        "prune": prune.to_dict(),
        "finetune": finetune_recipe,
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
        "nonzero_params": pruning.nonzero_count(result.variables["params"]),
        "size_bits": {
            "dense": pruning.storage_bits(variables["params"]),
            "pruned": pruning.storage_bits(result.variables["params"]),
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
            narrow, narrow_variables = layers.shrink(
                model, result.variables, result.unit_masks, input_shape, specs
            )
            narrow_costs = layers.costs(narrow, narrow_variables, input_shape, specs)
            results["shrunk"] = {
                "widths": {s.name: int(result.unit_masks[s.name].sum()) for s in specs},
                "accuracy": common.evaluate_test(narrow, narrow_variables, splits, eval_batch)[
                    "accuracy"
                ],
                "params": models.count_params(narrow_variables["params"]),
                "flops": pruning.total_costs(narrow_costs)["flops"],
            }
            checkpoint.save_variables(workdir / "shrunk_variables", narrow_variables)
    checkpoint.save_variables(workdir / "pruned_variables", result.variables)
    results["wall_time_s"] = timer.seconds
    results = provenance.stamp(results, unit)
    checkpoint.write_json_atomic(workdir / "results.json", results)
    return results


def load_result(model: nn.Module, workdir: epath.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """The pruned model of a finished run in ``workdir``: the shrunk (narrower) model and its
    variables when the masks were structured, else ``model`` with the masked variables."""
    workdir = epath.Path(workdir)
    results = json.loads((workdir / "results.json").read_text())
    if "shrunk" not in results:
        return model, common.load_variables(workdir / "pruned_variables")
    shrunk = layers.shrunk_model(model, results["shrunk"]["widths"])
    return shrunk, common.load_variables(workdir / "shrunk_variables")


def stage_fingerprint(
    config: ml_collections.ConfigDict, model: nn.Module, start_digest: str
) -> provenance.Fingerprint:
    """:func:`prune_fingerprint` of ``config``'s ``prune`` section."""
    section = common.section(config, "prune", defaults(), validate)
    return prune_fingerprint(config, section, model, start_digest)


STAGE = stage.register(
    stage.Stage(
        "prune",
        defaults,
        validate,
        run,
        fingerprint=stage_fingerprint,
        varies="criterion",
        load_result=load_result,
    )
)
