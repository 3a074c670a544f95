"""Sweep: one-shot pruning over criteria x sparsities x granularities, one row a point.

:func:`sweep` scores the trained model once per criterion and kind of scores, masks each sparsity
``s`` (a fraction ``s`` of the conv and of the dense layers), evaluates, fine-tunes with the mask
and evaluates again; each point's row (:data:`SWEEP_COLUMNS`) goes to ``workdir/sweep.csv`` as it
finishes, stamped with the point's fingerprint so a rerun skips finished points.
:func:`plot_sweep` draws accuracy against the fraction removed and against FLOPs per example. The
``config.prune`` section, the fingerprint, scoring and fine-tuning are those of the pruning run
(``xaijax.experiments.prune``).
"""

from __future__ import annotations

import copy
import csv
import functools
import io
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import ml_collections
import numpy as np
from etils import epath

from xaijax import importance, models, provenance, pruning, report, training
from xaijax.experiments import common, layers
from xaijax.experiments.prune import (
    SWEPT_FIELDS,
    defaults,
    exclude_from,
    finetune_fn,
    prune_fingerprint,
    score_fn,
    validate,
)

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


def read_sweep_rows(path: epath.PathLike) -> list[dict[str, Any]]:
    """The rows of a ``sweep.csv`` with their :data:`SWEEP_COLUMNS` types ([] when absent)."""
    path = epath.Path(path)
    if not path.exists():
        return []
    # Bytes decoded without newline translation, as open(newline="") reads them for csv.
    with io.StringIO(path.read_bytes().decode(), newline="") as handle:
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
    workdir: epath.PathLike,
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
    ``prune.run``; its criterion, sparsities, granularity and iterations are replaced by the sweep.

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
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    csv_path = workdir / "sweep.csv"
    points = [(g, c, s) for g in granularities for c in criteria for s in sparsities]
    base = prune_fingerprint(
        config,
        prune,
        model if model is not None else training.model_from_config(config),
        common.start_digest(config, variables, prune.variables_dir),
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


def _point_dir(workdir: epath.Path, point: SweepPoint) -> epath.Path:
    granularity, criterion, sparsity = point
    return workdir / "finetune" / f"{granularity}_{criterion}_{sparsity:g}"


def _sweep_rows(
    config: ml_collections.ConfigDict,
    prune: ml_collections.ConfigDict,
    workdir: epath.Path,
    todo: Mapping[SweepPoint, provenance.Fingerprint],
    *,
    model: nn.Module | None,
    variables: Mapping[str, Any] | None,
) -> Iterator[dict[str, Any]]:
    """Yield the row of each point of ``todo`` (point -> its fingerprint) as it finishes."""
    model, variables = common.start_from(config, prune, workdir, model, variables)
    splits = training.datasets_from_config(config)
    input_shape = splits.train.images.shape[1:]
    specs = layers.specs(model, input_shape)

    def accuracy(current: Mapping[str, Any]) -> float:
        return common.evaluate_test(model, current, splits, config.train.eval_batch_size)[
            "accuracy"
        ]

    dense_costs = pruning.total_costs(layers.costs(model, variables, input_shape, specs))
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
                config,
                criterion_section(criterion),
                model,
                splits,
                point_dir,
                unit,
                dense=variables,
            ),
            accuracy=accuracy,
            granularity=granularity,
            sparsity=sparsity,
            prune=prune,
        )
        tuned = result.variables
        costs = pruning.total_costs(
            pruning.masked_costs(model, tuned, result.params_mask, input_shape, specs=specs)
        )
        kernels = [
            np.asarray(models.layer_variables(tuned["params"], spec.name)["kernel"])
            for spec in specs
        ]
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


def plot_sweep(rows: Sequence[Mapping[str, Any]], workdir: epath.PathLike) -> list[epath.Path]:
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
            path = epath.Path(workdir) / f"sweep_{granularity}_{column}.png"
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
