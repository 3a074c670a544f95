"""Study rows: one JSON object per seed x stage x method x setting, read from each seed's
pipeline ``results.json`` and kept as JSON lines (``rows.jsonl``); the schema is in
``xaijax.study``'s docstring."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from etils import epath

from xaijax import report

ROWS_FILE = "rows.jsonl"
STAGES = ("baseline", "prune", "share", "quantize", "joint")
#: Prune fields that define the comparison cell (shared by every criterion).
PRUNE_SETTING = (
    "granularity",
    "conv_sparsity",
    "dense_sparsity",
    "param_budget",
    "iterations",
    "schedule",
)
#: Fields of each experiment section that make up its fine-tuning recipe.
RECIPE_FIELDS = ("finetune_epochs", "finetune_learning_rate", "finetune_batch_size")
#: The ``config.finetune`` options a stage's results record under ``"finetune"`` when they are on
#: (``xaijax.experiments.recipe.recipe``); they join the row's recipe, which stays as it was when
#: every option is off.
RECIPE_OPTIONS = ("distill_weight", "distill_temperature", "lr_rewind")


def check_seeds(seeds: Iterable[int]) -> tuple[int, ...]:
    """``seeds`` as a tuple; raises ``ValueError`` unless they are distinct integers >= 0."""
    seeds = tuple(seeds)
    if not seeds:
        raise ValueError("a study needs at least one seed")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seeds must be integers >= 0, got {seed!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    return tuple(int(s) for s in seeds)


def seed_dir(workdir: epath.PathLike, seed: int) -> epath.Path:
    """Where seed ``seed`` of a study in ``workdir`` runs its pipeline."""
    return epath.Path(workdir) / f"seed_{seed}"


def _pick(section: Mapping[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    return {field: section.get(field) for field in fields}


def _recipe(section: Mapping[str, Any], stage_results: Mapping[str, Any]) -> dict[str, Any]:
    """The section's :data:`RECIPE_FIELDS` plus the recorded options that are on."""
    options = stage_results.get("finetune") or {}
    unknown = sorted(set(options) - set(RECIPE_OPTIONS))
    if unknown:
        raise ValueError(f"unknown fine-tuning options {unknown} in the results")
    return {**_pick(section, RECIPE_FIELDS), **options}


def _row(results: Mapping[str, Any], seed: int, stage: str, method: str, **fields: Any) -> dict:
    row = {
        "seed": seed,
        "model": results["model"],
        "dataset": results["dataset"],
        "stage": stage,
        "method": method,
        "setting": {},
        "recipe": {},
        "fingerprint": None,
        "accuracy": None,
        "accuracy_before_finetune": None,
        "params": None,
        "nonzero_params": None,
        "flops": None,
        "size_bytes": None,
    }
    unknown = set(fields) - set(row) - {"layer_bits", "avg_bits"}
    if unknown:
        raise ValueError(f"unknown row fields {sorted(unknown)}")
    row.update(fields)
    return row


def share_method(row: Mapping[str, Any]) -> str:
    """The study method of a weight sharing row: its importance for k-means rows (and rows
    written before ECQ existed), ``ecq+<relevance>`` for ECQ rows (e.g. ``ecq+deeplift``)."""
    assignment = row.get("assignment", "kmeans")
    if assignment == "kmeans":
        return row["importance"]
    if assignment == "ecq":
        return f"ecq+{row['relevance']}"
    raise ValueError(f"unknown weight sharing assignment {assignment!r} in a share row")


def recorded_seeds(results: Mapping[str, Any]) -> set[int]:
    """The seeds the experiment sections of a pipeline ``results`` record."""
    sections = [r["prune"] for r in results.get("prune", {}).values()]
    sections += [results[s][s] for s in ("share", "quantize", "joint") if s in results]
    return {int(section["seed"]) for section in sections}


def _quantize_fields(run: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "accuracy": run["qat_accuracy"],
        "accuracy_before_finetune": run["ptq_accuracy"],
        "size_bytes": int(run["size"]["total"]),
        "layer_bits": dict(run["bits"]),
        "avg_bits": run["avg_bits"],
    }


def _joint_fields(run: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "accuracy": run["accuracy_after"],
        "accuracy_before_finetune": run["accuracy_before"],
        "nonzero_params": run["nonzero_params"],
        "size_bytes": int(run["bytes"]),
    }


#: Stages whose results list ``runs`` of a strategy at a ``budget``: the row fields of a run.
_STRATEGY_FIELDS = {"quantize": _quantize_fields, "joint": _joint_fields}


def rows_from_results(results: Mapping[str, Any], seed: int) -> list[dict[str, Any]]:
    """The study rows (module docstring) of one seed's pipeline ``results``."""
    recorded = recorded_seeds(results)
    if recorded - {seed}:
        raise ValueError(f"results of seed {seed} record the seeds {sorted(recorded)}")
    fingerprints = {name: entry["fingerprint"] for name, entry in results["provenance"].items()}
    base = results["baseline"]
    rows = [
        _row(
            results,
            seed,
            "baseline",
            "float32",
            fingerprint=fingerprints["baseline"],
            accuracy=base["accuracy"],
            params=base["params"],
            nonzero_params=base["params"],
            flops=base["flops"],
            size_bytes=base["size_bits"] // 8,
        )
    ]
    for criterion, r in results.get("prune", {}).items():
        rows.append(
            _row(
                results,
                seed,
                "prune",
                criterion,
                setting=_pick(r["prune"], PRUNE_SETTING),
                recipe=_recipe(r["prune"], r),
                fingerprint=fingerprints[f"prune/{criterion}"],
                accuracy=r["accuracy"]["after_finetune"],
                accuracy_before_finetune=r["accuracy"]["pruned_before_finetune"],
                params=r.get("shrunk", {}).get("params", r["params"]["dense"]),
                nonzero_params=r["nonzero_params"],
                flops=r["flops"]["masked"],
                size_bytes=r["size_bits"]["pruned"] // 8,
            )
        )
    if "share" in results:
        share = results["share"]
        for r in share["rows"]:
            rows.append(
                _row(
                    results,
                    seed,
                    "share",
                    share_method(r),
                    setting={"bits": r["bits"]},
                    recipe=_recipe(share["share"], share),
                    fingerprint=fingerprints["share"],
                    accuracy=r["accuracy_finetuned"],
                    accuracy_before_finetune=r["accuracy_shared"],
                    size_bytes=r["size_bits"] // 8,
                )
            )
    for stage, fields_of in _STRATEGY_FIELDS.items():
        if stage in results:
            section = results[stage]
            for r in section["runs"]:
                rows.append(
                    _row(
                        results,
                        seed,
                        stage,
                        r["strategy"],
                        setting={"budget": r["budget"]},
                        recipe=_recipe(section[stage], section),
                        fingerprint=fingerprints[stage],
                        **fields_of(r),
                    )
                )
    return rows


def rows_from_workdir(workdir: epath.PathLike, seeds: Iterable[int]) -> list[dict[str, Any]]:
    """The rows of ``seeds``, from each ``workdir/seed_<s>/results.json``."""
    rows: list[dict[str, Any]] = []
    for seed in check_seeds(seeds):
        path = seed_dir(workdir, seed) / "results.json"
        if not path.exists():
            raise FileNotFoundError(f"seed {seed} has no results ({path} is missing)")
        rows += rows_from_results(json.loads(path.read_text()), seed)
    return rows


def write_rows(path: epath.PathLike, rows: Sequence[Mapping[str, Any]]) -> epath.Path:
    """``rows`` as JSON lines, replacing ``path`` atomically (``report.write_text_atomic``)."""
    text = "".join(json.dumps(row, sort_keys=True, allow_nan=False) + "\n" for row in rows)
    return report.write_text_atomic(path, text)


def read_rows(path: epath.PathLike) -> list[dict[str, Any]]:
    """The rows of a ``rows.jsonl`` file."""
    lines = epath.Path(path).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]
