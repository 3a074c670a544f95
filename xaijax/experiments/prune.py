"""Pruning experiment: score, mask, fine-tune with the mask, evaluate, shrink.

Settings are the ``config.prune`` section (:func:`defaults`). Scoring uses the first
``num_examples`` training examples; masks come from ``xaijax.pruning`` (``iterations`` rounds of
prune + fine-tune); structured masks also give the physically narrower model
(``xaijax.pruning.shrink``). ``workdir/results.json`` (atomic) holds accuracy before pruning,
after pruning and after fine-tuning, unit and kernel sparsity per layer, parameters, FLOPs and
storage (dense, masked, shrunk) and the wall time of each phase; ``pruned_variables`` (masked,
original shapes) and, for structured masks, ``shrunk_variables`` are saved beside it.

:func:`sweep` runs one-shot pruning over criteria x sparsities x granularities into
``workdir/sweep.csv`` with accuracy-vs-sparsity and accuracy-vs-FLOPs plots.
"""

from __future__ import annotations

import copy
import csv
import functools
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from ml_collections import config_dict

from xaijax import checkpoint, data, importance, models, provenance, pruning, report, training
from xaijax.experiments import common, stage


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
    if not prune.finetune_learning_rate > 0:
        raise ValueError("config.prune.finetune_learning_rate must be > 0")
    if prune.param_budget is not None and not 0 < prune.param_budget < 1:
        raise ValueError(
            f"config.prune.param_budget must be None or in (0, 1), got {prune.param_budget!r}"
        )


#: ``prune`` fields that only locate the starting point (its digest stands for them).
STARTING_POINT_FIELDS = ("trained_workdir",)
#: ``prune`` fields that :func:`sweep` replaces by the sweep point (or, one-shot, ignores).
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
        prune=common.plain(prune, (*STARTING_POINT_FIELDS, *drop)),
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
    workdir: Path,
    unit: provenance.Fingerprint,
) -> Callable[[Mapping[str, Any], Any], dict[str, Any]]:
    """``(variables, params_mask) -> fine-tuned variables``; round ``r`` trains (resumably) in
    ``workdir/finetune_<r>`` with the mask re-applied after every update, tied to ``unit``."""
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
        )

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


def exclude_from(prune: ml_collections.ConfigDict, specs: Sequence[models.LayerSpec]) -> tuple:
    """Layers never pruned: the classifier unless ``prune.prune_classifier``."""
    return () if prune.prune_classifier else pruning.default_exclude(specs)


def run(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
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
    workdir = Path(workdir)
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
    finetune = finetune_fn(config, prune, model, splits, workdir, unit)
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


def load_result(model: nn.Module, workdir: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The pruned model of a finished run in ``workdir``: the shrunk (narrower) model and its
    variables when the masks were structured, else ``model`` with the masked variables."""
    workdir = Path(workdir)
    results = json.loads((workdir / "results.json").read_text())
    if "shrunk" not in results:
        return model, common.load_variables(workdir / "pruned_variables")
    classifier = {spec.name for spec in model.layer_specs() if spec.is_classifier}
    widths = {k: v for k, v in results["shrunk"]["widths"].items() if k not in classifier}
    return model.clone(widths=widths), common.load_variables(workdir / "shrunk_variables")


# ---------------------------------------------------------------------------------------------
# Sweep: criteria x sparsities x granularities, one-shot.

#: The columns of ``sweep.csv`` and their types (how a rerun reads finished rows back).
SWEEP_COLUMNS: dict[str, type] = {
    "granularity": str,
    "criterion": str,
    "sparsity": float,
    "accuracy_dense": float,
    "accuracy_before_finetune": float,
    "accuracy_after_finetune": float,
    "params": int,
    "params_dense": int,
    "nonzero_params": int,
    "size_bits": int,
    "size_bits_dense": int,
    "flops": int,
    "flops_dense": int,
    "kernel_sparsity": float,
    "score_seconds": float,
    "finetune_seconds": float,
    "fingerprint": str,
}

SweepPoint = tuple[str, str, float]  # (granularity, criterion, sparsity)


def _sweep_key(row: Mapping[str, Any]) -> SweepPoint:
    return row["granularity"], row["criterion"], float(row["sparsity"])


def read_sweep_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``sweep.csv`` with their :data:`SWEEP_COLUMNS` types ([] when absent)."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        # Rows written before fingerprints existed read with an empty one: never reused.
        missing = sorted(set(SWEEP_COLUMNS) - set(reader.fieldnames or ()) - {"fingerprint"})
        if missing:
            raise ValueError(f"{path} lacks the columns {missing}; move it away to start afresh")
        return [
            {
                k: cast(row.get(k) or "") if cast is str else cast(row[k])
                for k, cast in SWEEP_COLUMNS.items()
            }
            for row in reader
        ]


def _checked_sweep_args(
    criteria: Sequence[str], sparsities: Sequence[float], granularities: Sequence[str]
) -> tuple[list[str], list[float], list[str]]:
    """De-duplicated sweep axes; ``ValueError`` / ``TypeError`` naming the first bad entry."""
    axes = {"criteria": criteria, "sparsities": sparsities, "granularities": granularities}
    for name, values in axes.items():
        if isinstance(values, str) or not isinstance(values, Sequence):
            raise TypeError(f"{name} must be a sequence, got {values!r}")
        if not values:
            raise ValueError(f"{name} must not be empty")
    for criterion in criteria:
        importance.get_criterion(criterion)
    for sparsity in sparsities:
        if isinstance(sparsity, bool) or not isinstance(sparsity, int | float):
            raise TypeError(f"sparsities must be numbers, got {sparsity!r}")
        if not 0 <= sparsity < 1:
            raise ValueError(f"sparsities must be in [0, 1), got {sparsity!r}")
    for granularity in granularities:
        if granularity not in pruning.GRANULARITY_KINDS:
            raise ValueError(
                f"granularities must be in {tuple(pruning.GRANULARITY_KINDS)}, got {granularity!r}"
            )
    return (
        list(dict.fromkeys(criteria)),
        list(dict.fromkeys(float(s) for s in sparsities)),
        list(dict.fromkeys(granularities)),
    )


def sweep(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    criteria: Sequence[str],
    sparsities: Sequence[float],
    granularities: Sequence[str],
    model: nn.Module | None = None,
    variables: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One-shot pruning of the trained model at every (granularity, criterion, sparsity).

    Per criterion and kind of scores (unit / weight) the starting variables are scored once
    (:func:`score_fn`); each sparsity ``s`` then masks a fraction ``s`` of the conv and of the
    dense layers (``granularity`` as in ``xaijax.pruning.masks_by_kind``, the classifier kept
    unless ``prune.prune_classifier``), is evaluated on the test split, fine-tuned with the mask
    (:func:`finetune_fn`, ``prune.finetune_epochs``, resumable in
    ``workdir/finetune/<granularity>_<criterion>_<sparsity>``) and evaluated again. Other
    ``config.prune`` fields (scope, normalize, min_units, fine-tuning, scoring options) apply as in
    :func:`run`; its criterion, sparsities, granularity and iterations are replaced by the sweep.

    Each finished row (:data:`SWEEP_COLUMNS`) is written to ``workdir/sweep.csv`` at once,
    stamped with the fingerprint of its point (:func:`prune_fingerprint` without the swept
    fields, plus the point); a rerun skips the points whose row has the same fingerprint (nothing
    is computed when all have) and recomputes the others.
    ``workdir/sweep_<granularity>_{sparsity,flops}.png`` plot test accuracy against the fraction
    removed and against FLOPs per example, one series per criterion after fine-tuning and one
    right after pruning. Returns the rows of the requested points in sweep order.
    """
    prune = common.section(config, "prune", defaults(), validate)
    criteria, sparsities, granularities = _checked_sweep_args(criteria, sparsities, granularities)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    csv_path = workdir / "sweep.csv"
    points = [(g, c, s) for g in granularities for c in criteria for s in sparsities]
    base = prune_fingerprint(
        config,
        prune,
        model if model is not None else training.model_from_config(config),
        common.start_digest(config, variables),
        drop=SWEPT_FIELDS,
    )
    fingerprints = {point: base.extend(point=list(point)) for point in points}
    rows = read_sweep_rows(csv_path)
    finished = {
        _sweep_key(row): row
        for row in rows
        if _sweep_key(row) in fingerprints
        and row["fingerprint"] == fingerprints[_sweep_key(row)].digest
    }
    todo = [point for point in points if point not in finished]
    policy = common.resume_policy(config)
    for point in todo:  # A strict rerun refuses here, before any work.
        provenance.claim(
            _point_dir(workdir, point),
            fingerprints[point],
            what=f"the sweep point {point} in {workdir}",
            policy=policy,
        )
    if todo:
        points_todo = {point: fingerprints[point] for point in todo}
        for row in _sweep_rows(
            config, prune, workdir, points_todo, model=model, variables=variables
        ):
            key = _sweep_key(row)
            rows = [old for old in rows if _sweep_key(old) != key] + [row]
            finished[key] = row
            report.write_csv_atomic(csv_path, rows, columns=tuple(SWEEP_COLUMNS))
    chosen = [finished[point] for point in points]
    plot_sweep(chosen, workdir)
    return chosen


def _point_dir(workdir: Path, point: SweepPoint) -> Path:
    granularity, criterion, sparsity = point
    return workdir / "finetune" / f"{granularity}_{criterion}_{sparsity:g}"


def _sweep_rows(
    config: ml_collections.ConfigDict,
    prune: ml_collections.ConfigDict,
    workdir: Path,
    todo: Mapping[SweepPoint, provenance.Fingerprint],
    *,
    model: nn.Module | None,
    variables: Mapping[str, Any] | None,
) -> Iterator[dict[str, Any]]:
    """Yield the row of each point of ``todo`` (point -> its fingerprint) as it finishes."""
    model, variables = common.starting_point(
        config,
        model,
        variables,
        saved=None,
        trained_workdir=prune.trained_workdir or workdir / "trained",
    )
    splits = training.datasets_from_config(config)
    specs = model.layer_specs()
    input_shape = splits.train.images.shape[1:]

    def accuracy(current: Mapping[str, Any]) -> float:
        return common.evaluate_test(model, current, splits, config.train.eval_batch_size)[
            "accuracy"
        ]

    dense_costs = pruning.total_costs(models.layer_costs(model, variables, input_shape))
    dense = {
        "accuracy_dense": accuracy(variables),
        "params_dense": dense_costs["params"],
        "flops_dense": dense_costs["flops"],
        "size_bits_dense": pruning.storage_bits(variables["params"]),
    }
    scores: dict[tuple[str, str], tuple[Any, float]] = {}  # (criterion, kind) -> (scores, s)

    def criterion_section(criterion: str) -> ml_collections.ConfigDict:
        section = copy.deepcopy(prune)
        section.criterion = criterion
        return section

    def scores_of(criterion: str, kind: str) -> Any:
        if (criterion, kind) not in scores:
            timer = common.Timer()
            with timer.phase("score"):
                computed = score_fn(criterion_section(criterion), model, splits.train)(
                    variables, kind
                )
            scores[criterion, kind] = computed, timer.seconds["score"]
        return scores[criterion, kind][0]

    for (granularity, criterion, sparsity), unit in todo.items():
        point_dir = _point_dir(workdir, (granularity, criterion, sparsity))
        result, before, finetune_seconds = _one_shot(
            variables,
            specs=specs,
            score=functools.partial(scores_of, criterion),
            finetune=finetune_fn(
                config, criterion_section(criterion), model, splits, point_dir, unit
            ),
            accuracy=accuracy,
            granularity=granularity,
            sparsity=sparsity,
            prune=prune,
        )
        tuned = result.variables
        costs = pruning.total_costs(
            pruning.masked_costs(model, tuned, result.params_mask, input_shape)
        )
        kernels = [np.asarray(tuned["params"][spec.name]["kernel"]) for spec in specs]
        unit_kinds, weight_kinds = pruning.GRANULARITY_KINDS[granularity]
        kinds = [kind for kind, used in (("unit", unit_kinds), ("weight", weight_kinds)) if used]
        row = {
            "granularity": granularity,
            "criterion": criterion,
            "sparsity": sparsity,
            **dense,
            "accuracy_before_finetune": before,
            "accuracy_after_finetune": accuracy(tuned),
            "params": costs["params"],
            "nonzero_params": pruning.nonzero_count(tuned["params"]),
            "size_bits": pruning.storage_bits(tuned["params"]),
            "flops": costs["flops"],
            "kernel_sparsity": sum(int(np.sum(k == 0)) for k in kernels)
            / sum(k.size for k in kernels),
            "score_seconds": sum(scores[criterion, kind][1] for kind in kinds),
            "finetune_seconds": finetune_seconds,
            "fingerprint": unit.digest,
        }
        logging.info(
            "%s %s sparsity %.2f: accuracy %.4f -> %.4f (dense %.4f), FLOPs %d / %d",
            granularity,
            criterion,
            sparsity,
            row["accuracy_before_finetune"],
            row["accuracy_after_finetune"],
            row["accuracy_dense"],
            row["flops"],
            row["flops_dense"],
        )
        yield {k: SWEEP_COLUMNS[k](v) for k, v in row.items()}


def _one_shot(
    variables: Mapping[str, Any],
    *,
    specs: Sequence[models.LayerSpec],
    score: Callable[[str], Any],
    finetune: Callable[[Mapping[str, Any], Any], dict[str, Any]],
    accuracy: Callable[[Mapping[str, Any]], float],
    granularity: str,
    sparsity: float,
    prune: ml_collections.ConfigDict,
) -> tuple[pruning.PruneResult, float, float]:
    """Mask ``sparsity`` of the conv and of the dense layers by ``score(kind)``, evaluate,
    fine-tune with the mask. Returns the result, the accuracy before fine-tuning and the
    fine-tuning seconds."""
    timer = common.Timer()
    before: list[float] = []

    def evaluate_then_finetune(current: Mapping[str, Any], mask: Any) -> dict[str, Any]:
        before.append(accuracy(current))
        with timer.phase("finetune"):
            return finetune(current, mask)

    result = pruning.iterative_prune(
        variables,
        specs=specs,
        score_fn=lambda _, kind: score(kind),  # one round: always the starting variables
        finetune_fn=evaluate_then_finetune,
        num_steps=1,
        conv_sparsity=sparsity,
        dense_sparsity=sparsity,
        granularity=granularity,
        scope=prune.scope,
        exclude=exclude_from(prune, specs),
        min_units=prune.min_units,
        normalize=prune.normalize,
    )
    return result, before[-1], timer.seconds["finetune"]


def plot_sweep(rows: Sequence[Mapping[str, Any]], workdir: str | Path) -> list[Path]:
    """``workdir/sweep_<granularity>_sparsity.png`` and ``..._flops.png`` (log x) per granularity
    of ``rows``: test accuracy per criterion, fine-tuned and right after pruning, and the dense
    model as a single reference point."""
    paths = []
    for granularity in dict.fromkeys(row["granularity"] for row in rows):
        chosen = [row for row in rows if row["granularity"] == granularity]
        axes = (
            ("sparsity", "fraction removed", False, 0.0),
            ("flops", "FLOPs per example", True, chosen[0]["flops_dense"]),
        )
        for column, xlabel, log_x, dense_x in axes:
            series: dict[str, tuple[list[float], list[float]]] = {}
            for criterion in dict.fromkeys(row["criterion"] for row in chosen):
                points = [row for row in chosen if row["criterion"] == criterion]
                xs = [row[column] for row in points]
                series[f"{criterion} (fine-tuned)"] = (
                    xs,
                    [row["accuracy_after_finetune"] for row in points],
                )
                series[f"{criterion} (pruned)"] = (
                    xs,
                    [row["accuracy_before_finetune"] for row in points],
                )
            series["dense"] = ([dense_x], [chosen[0]["accuracy_dense"]])
            path = Path(workdir) / f"sweep_{granularity}_{column}.png"
            paths.append(
                report.line_plot(
                    path,
                    series,
                    xlabel=xlabel,
                    ylabel="test accuracy",
                    title=f"{granularity} pruning",
                    log_x=log_x,
                )
            )
    return paths


STAGE = stage.register(stage.Stage("prune", defaults, validate, run))
