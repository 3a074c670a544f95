"""Per-cell statistics of study rows: mean ± std per method and paired comparisons of the
DeepLIFT method with every other method (``xaijax.statistics``)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from xaijax import statistics
from xaijax.study.rows import STAGES

#: The DeepLIFT-guided method of each stage.
DEEPLIFT_METHOD = {
    "prune": "deeplift",
    "share": "deeplift",
    "quantize": "deeplift_sensitivity",
    "joint": "joint_deeplift",
}
#: Row fields summarized as mean ± std, and those compared between methods (higher is better).
MEASURES = (
    "accuracy",
    "accuracy_before_finetune",
    "params",
    "nonzero_params",
    "flops",
    "size_bytes",
)
COMPARED = ("accuracy", "accuracy_before_finetune")
INTERVALS = ("t", "bootstrap")
BOOTSTRAP_RESAMPLES = 10_000


def setting_label(setting: Mapping[str, Any]) -> str:
    """``k=v, ...`` in key order, or ``-`` for no setting."""
    return ", ".join(f"{k}={v}" for k, v in sorted(setting.items())) or "-"


def cells_of(rows: Sequence[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """Rows grouped by (model, dataset, stage, setting), stages in :data:`STAGES` order, settings
    in first-seen order."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        if row["stage"] not in STAGES:
            raise ValueError(f"row of seed {row['seed']} has unknown stage {row['stage']!r}")
        key = (
            row["model"],
            row["dataset"],
            row["stage"],
            json.dumps(row["setting"], sort_keys=True),
        )
        groups.setdefault(key, []).append(row)
    order = sorted(groups, key=lambda k: STAGES.index(k[2]))  # stable: keeps first-seen order
    return [groups[key] for key in order]


def by_method(cell: Sequence[Mapping[str, Any]]) -> dict[str, dict[int, Mapping[str, Any]]]:
    """``method -> seed -> row``; a repeated (method, seed) or differing recipes raise."""
    methods: dict[str, dict[int, Mapping[str, Any]]] = {}
    recipes = {json.dumps(row["recipe"], sort_keys=True) for row in cell}
    if len(recipes) > 1:
        raise ValueError(
            f"{cell[0]['stage']} at {setting_label(cell[0]['setting'])}: rows disagree on the "
            f"fine-tuning recipe ({sorted(recipes)}); one table needs one recipe"
        )
    for row in cell:
        seeds = methods.setdefault(row["method"], {})
        if row["seed"] in seeds:
            raise ValueError(
                f"{row['stage']} at {setting_label(row['setting'])}: two rows for method "
                f"{row['method']!r} and seed {row['seed']}"
            )
        seeds[row["seed"]] = row
    return methods


def interval(
    a: Sequence[float], b: Sequence[float], *, method: str = "t", confidence: float = 0.95
) -> statistics.Interval:
    """The paired interval of ``mean(a - b)``: ``t`` or percentile ``bootstrap`` (seed 0)."""
    if method == "t":
        return statistics.paired_t_interval(a, b, confidence)
    if method == "bootstrap":
        return statistics.paired_bootstrap_interval(a, b, confidence, BOOTSTRAP_RESAMPLES, 0)
    raise ValueError(f"interval method must be one of {INTERVALS}, got {method!r}")


def compare(
    method: str,
    against: str,
    metric: str,
    methods: Mapping[str, Mapping[int, Mapping[str, Any]]],
    *,
    interval_method: str = "t",
    confidence: float = 0.95,
) -> dict[str, Any]:
    """``method`` against ``against`` on ``metric`` over their common seeds: the paired
    difference ``d_s = metric(method, s) - metric(against, s)``, its interval and the verdict
    (``n/a`` with fewer than 2 common seeds)."""
    seeds = sorted(set(methods[method]) & set(methods[against]))
    a = [methods[method][s][metric] for s in seeds]
    b = [methods[against][s][metric] for s in seeds]
    entry: dict[str, Any] = {"metric": metric, "method": method, "against": against}
    entry.update(seeds=seeds, n=len(seeds))
    if len(seeds) < 2:
        mean = float(np.mean(np.subtract(a, b))) if seeds else None
        return {**entry, "mean": mean, "std": None, "low": None, "high": None, "verdict": "n/a"}
    found = interval(a, b, method=interval_method, confidence=confidence)
    return {
        **entry,
        "mean": found.mean,
        "std": found.std,
        "low": found.low,
        "high": found.high,
        "verdict": statistics.verdict(found),
    }


def _describe(values: Sequence[Any]) -> dict[str, Any] | None:
    if any(v is None for v in values):
        return None
    mean, std = statistics.mean_std(values)
    return {"mean": mean, "std": None if np.isnan(std) else std}


def is_deeplift(method: str) -> bool:
    """Whether ``method`` is DeepLIFT-guided (not one of the classic baselines)."""
    return method.startswith("deeplift")


def summarize(
    rows: Sequence[Mapping[str, Any]], *, interval_method: str = "t", confidence: float = 0.95
) -> dict[str, Any]:
    """Per cell (model, dataset, stage, setting): mean ± std of :data:`MEASURES` per method, and
    for the DeepLIFT method of the stage, paired comparisons on :data:`COMPARED` with every other
    method; ``strongest`` marks the non-DeepLIFT method with the highest mean of that metric.
    Plain JSON (std None for one seed)."""
    if interval_method not in INTERVALS:
        raise ValueError(f"interval method must be one of {INTERVALS}, got {interval_method!r}")
    cells = []
    for cell in cells_of(rows):
        first = cell[0]
        methods = by_method(cell)
        stats = []
        for name, by_seed in methods.items():
            seed_rows = [by_seed[s] for s in sorted(by_seed)]
            entry: dict[str, Any] = {"method": name, "n": len(seed_rows), "seeds": sorted(by_seed)}
            for measure in MEASURES:
                described = _describe([row[measure] for row in seed_rows])
                if described is not None:
                    entry[measure] = described
            stats.append(entry)
        ours = DEEPLIFT_METHOD.get(first["stage"])
        comparisons = []
        if ours in methods:
            for metric in COMPARED:
                means = {s["method"]: s[metric]["mean"] for s in stats if metric in s}
                if ours not in means:
                    continue
                others = sorted((m for m in means if m != ours), key=lambda m: (-means[m], m))
                baselines = [m for m in others if not is_deeplift(m)]
                for other in others:
                    found = compare(
                        ours,
                        other,
                        metric,
                        methods,
                        interval_method=interval_method,
                        confidence=confidence,
                    )
                    comparisons.append(
                        {**found, "strongest": bool(baselines) and other == baselines[0]}
                    )
        cells.append(
            {
                "model": first["model"],
                "dataset": first["dataset"],
                "stage": first["stage"],
                "setting": first["setting"],
                "recipe": first["recipe"],
                "deeplift_method": ours if ours in methods else None,
                "methods": stats,
                "comparisons": comparisons,
            }
        )
    return {
        "interval": {"method": interval_name(interval_method), "confidence": confidence},
        "seeds": sorted({int(row["seed"]) for row in rows}),
        "cells": cells,
    }


def interval_name(method: str) -> str:
    """How the table headers name ``t`` / ``bootstrap`` intervals."""
    return {"t": statistics.T_METHOD, "bootstrap": statistics.BOOTSTRAP_METHOD}[method]
