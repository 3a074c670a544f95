"""Pruning experiment: score, mask, fine-tune with the mask, evaluate, shrink.

Settings are the ``config.prune`` section (:func:`defaults`). Scoring uses the first
``num_examples`` training examples; masks come from ``xaijax.pruning`` (``iterations`` rounds of
prune + fine-tune); structured masks also give the physically narrower model
(``xaijax.pruning.shrink``). ``workdir/results.json`` (atomic) holds accuracy before pruning,
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

from xaijax import checkpoint, data, importance, models, provenance, pruning, training
from xaijax.experiments import common, recipe, stage


def defaults() -> ml_collections.ConfigDict:
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
            # Scarce data: score on this many examples of every class (drawn by ``seed``)
            # instead of the first ``num_examples``; None: off.
            "examples_per_class": config_dict.placeholder(int),
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
    per_class = prune.examples_per_class
    if per_class is not None and (not isinstance(per_class, int) or per_class < 1):
        raise ValueError(
            f"config.prune.examples_per_class must be None or an integer >= 1, got {per_class!r}"
        )
    if not prune.finetune_learning_rate > 0:
        raise ValueError("config.prune.finetune_learning_rate must be > 0")
    if prune.param_budget is not None and not 0 < prune.param_budget < 1:
        raise ValueError(
            f"config.prune.param_budget must be None or in (0, 1), got {prune.param_budget!r}"
        )


#: Fields added after results were cached, at the value that computes what they computed before:
#: fingerprints leave them out at that value (``common.plain``).
NEUTRAL_FIELDS = {"examples_per_class": None}
#: ``prune`` fields that only locate the starting point (its digest stands for them).
STARTING_POINT_FIELDS = ("trained_workdir",)
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
    """``(variables, granularity) -> scores`` with the ``prune`` options."""

    num_examples = min(prune.num_examples, train.num_examples)
    if prune.examples_per_class is not None:  # Scarce data: every balanced example.
        train = data.balanced_subset(train, prune.examples_per_class, seed=prune.seed)
        num_examples = train.num_examples

    def scores(variables: Mapping[str, Any], granularity: str) -> Any:
        return jax.device_get(
            importance.score(
                prune.criterion,
                model,
                variables,
                train,
                granularity=granularity,
                batch_size=prune.score_batch_size,
                num_examples=num_examples,
                target=prune.target,
                reference=prune.reference,
                num_references=prune.num_references,
                seed=prune.seed,
            )
        )

    return scores


def exclude_from(prune: ml_collections.ConfigDict, specs: Sequence[models.LayerSpec]) -> tuple:
    """Layers never pruned: the classifier unless ``prune.prune_classifier``."""
    return () if prune.prune_classifier else pruning.default_exclude(specs)


def run(
    config: ml_collections.ConfigDict,
    workdir: epath.PathLike,
    *,
    model: nn.Module | None = None,
    variables: Mapping[str, Any] | None = None,
    splits: data.Splits | None = None,
) -> dict[str, Any]:
    """The whole pruning experiment; returns the results dict (also written to results.json).

    ``splits`` (default: loaded from the config) are the datasets. Starts from ``model`` /
    ``variables`` when given, else from the baseline trained (if absent)
    in ``config.prune.trained_workdir`` (default ``<workdir>/trained``).
    """
    prune = common.section(config, "prune", defaults(), validate)
    finetune_recipe = recipe.recipe(config)  # Validates config.finetune before any work.
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    timer = common.Timer()
    with timer.phase("load_or_train"):
        model, variables = common.starting_point(
            config,
            model,
            variables,
            saved=None,
            trained_workdir=prune.trained_workdir or workdir / "trained",
        )
    splits = splits if splits is not None else training.datasets_from_config(config)
    specs = model.layer_specs()
    input_shape = splits.train.images.shape[1:]
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

    dense_costs = models.layer_costs(model, variables, input_shape)
    masked = pruning.masked_costs(model, result.variables, result.params_mask, input_shape)
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
            narrow, narrow_variables = pruning.shrink(model, result.variables, result.unit_masks)
            narrow_costs = models.layer_costs(narrow, narrow_variables, input_shape)
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
    classifier = {spec.name for spec in model.layer_specs() if spec.is_classifier}
    widths = {k: v for k, v in results["shrunk"]["widths"].items() if k not in classifier}
    return model.clone(widths=widths), common.load_variables(workdir / "shrunk_variables")


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
