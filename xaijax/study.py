"""Studies: does explaining a network with DeepLIFT make it compress better, over seeds?

``run(config, workdir, seeds)`` runs the whole pipeline (``xaijax.pipeline``) once per seed in
``workdir/seed_<s>``, with the seed driving everything random (:func:`seed_config`: weight
initialisation, data order, validation split, reference samples, random scores, fine-tuning).
Each replicate has its own baseline. Rerunning resumes: the pipeline reuses a finished stage
when its fingerprint is unchanged, so a finished seed costs only its reload.

After every seed, ``workdir/rows.jsonl`` is rewritten atomically from the per-seed
``results.json`` files (never edited by hand). One JSON object per line and per seed x stage x
method x setting:

* ``seed``, ``model``, ``dataset``, ``stage`` (``baseline`` | ``prune`` | ``share`` |
  ``quantize``), ``method`` (``float32``; the pruning criterion; the weight-sharing importance;
  the bit-allocation strategy), ``setting`` (what the methods are compared at: the pruning
  sparsities and schedule; ``{"bits"}``; ``{"budget"}`` average bits), ``recipe`` (the
  fine-tuning every method of the stage gets), ``fingerprint`` (the stage's, from
  ``results["provenance"]``);
* ``accuracy``: test accuracy after fine-tuning (quantize: after QAT), and
  ``accuracy_before_finetune`` (pruned / shared / PTQ; None for the baseline);
* ``params`` (stored parameters: the physically shrunk model after structured pruning),
  ``nonzero_params``, ``flops`` (masked), ``size_bytes`` (storage, as in the pipeline's report);
  params and FLOPs are None for ``share`` and ``quantize``, which keep the carried pruned model;
* ``quantize`` only: ``layer_bits`` (bits per layer) and ``avg_bits``.

:func:`summarize` turns rows into per-cell statistics (JSON for figures), :func:`tables` into
Markdown, :func:`plot` into accuracy ± std figures; :func:`write_report` does all three. Cells are
mean ± sample std over seeds; DeepLIFT (:data:`DEEPLIFT_METHOD`) is compared with every other
method of its cell on paired per-seed differences (``xaijax.statistics``).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from xaijax import report, statistics

ROWS_FILE = "rows.jsonl"
CONFIG_FILE = "study_config.json"
STAGES = ("baseline", "prune", "share", "quantize")
#: Config fields set to the study seed (besides any other field named ``seed``).
SEED_FIELDS = ("train.seed", "prune.seed", "share.seed", "quantize.seed")
#: The DeepLIFT-guided method of each stage.
DEEPLIFT_METHOD = {"prune": "deeplift", "share": "deeplift", "quantize": "deeplift_sensitivity"}
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
LABELS = {
    "baseline": {"accuracy": "accuracy"},
    "prune": {"accuracy": "accuracy (fine-tuned)", "accuracy_before_finetune": "accuracy (pruned)"},
    "share": {"accuracy": "accuracy (fine-tuned)", "accuracy_before_finetune": "accuracy (shared)"},
    "quantize": {"accuracy": "QAT accuracy", "accuracy_before_finetune": "PTQ accuracy"},
}
COLUMN_LABELS = {
    "params": "params",
    "nonzero_params": "non-zero params",
    "flops": "FLOPs",
    "size_bytes": "size (bytes)",
}
INTERVALS = ("t", "bootstrap")
BOOTSTRAP_RESAMPLES = 10_000


# ----------------------------------------------------------------------------- seeds and runs


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


def seed_fields(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """Dotted paths of :data:`SEED_FIELDS` and of every other config field named ``seed``."""
    found: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if key == "seed":
                found.append(path)
            elif isinstance(value, ml_collections.ConfigDict):
                walk(value, f"{path}.")

    walk(config, "")
    return tuple(dict.fromkeys((*SEED_FIELDS, *found)))


def seed_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
    """A copy of ``config`` with every seed field (:func:`seed_fields`) set to ``seed``; missing
    sections are created (the pipeline merges their defaults)."""
    (seed,) = check_seeds((seed,))
    config = copy.deepcopy(config)
    with config.unlocked():
        for path in seed_fields(config):
            *sections, name = path.split(".")
            node = config
            for section in sections:
                if section not in node:
                    node[section] = ml_collections.ConfigDict()
                node = node[section]
            node[name] = seed
    return config


def seed_dir(workdir: str | Path, seed: int) -> Path:
    """Where seed ``seed`` of a study in ``workdir`` runs its pipeline."""
    return Path(workdir) / f"seed_{seed}"


def run(
    config: ml_collections.ConfigDict, workdir: str | Path, seeds: Iterable[int]
) -> list[dict[str, Any]]:
    """The pipeline for every seed (resuming finished work); returns the rows of ``seeds``.

    ``workdir/rows.jsonl`` is rewritten after each seed with the rows of the seeds done so far,
    and ``workdir/study_config.json`` records the seeds and the study's config.
    """
    from xaijax import checkpoint, pipeline  # Late import: tables need no JAX.

    seeds = check_seeds(seeds)
    workdir = Path(workdir)
    checkpoint.write_json_atomic(
        workdir / CONFIG_FILE, {"seeds": list(seeds), "config": config.to_dict()}
    )
    rows: list[dict[str, Any]] = []
    for i, seed in enumerate(seeds):
        logging.info("study: seed %d (%d of %d)", seed, i + 1, len(seeds))
        pipeline.run(seed_config(config, seed), seed_dir(workdir, seed))
        rows = rows_from_workdir(workdir, seeds[: i + 1])
        write_rows(workdir / ROWS_FILE, rows)
    return rows


# ----------------------------------------------------------------------------- rows


def _pick(section: Mapping[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    return {field: section.get(field) for field in fields}


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


def recorded_seeds(results: Mapping[str, Any]) -> set[int]:
    """The seeds the experiment sections of a pipeline ``results`` record."""
    sections = [r["prune"] for r in results.get("prune", {}).values()]
    sections += [results[s][s] for s in ("share", "quantize") if s in results]
    return {int(section["seed"]) for section in sections}


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
                recipe=_pick(r["prune"], RECIPE_FIELDS),
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
                    r["importance"],
                    setting={"bits": r["bits"]},
                    recipe=_pick(share["share"], RECIPE_FIELDS),
                    fingerprint=fingerprints["share"],
                    accuracy=r["accuracy_finetuned"],
                    accuracy_before_finetune=r["accuracy_shared"],
                    size_bytes=r["size_bits"] // 8,
                )
            )
    if "quantize" in results:
        quantize = results["quantize"]
        for r in quantize["runs"]:
            rows.append(
                _row(
                    results,
                    seed,
                    "quantize",
                    r["strategy"],
                    setting={"budget": r["budget"]},
                    recipe=_pick(quantize["quantize"], RECIPE_FIELDS),
                    fingerprint=fingerprints["quantize"],
                    accuracy=r["qat_accuracy"],
                    accuracy_before_finetune=r["ptq_accuracy"],
                    size_bytes=int(r["size"]["total"]),
                    layer_bits=dict(r["bits"]),
                    avg_bits=r["avg_bits"],
                )
            )
    return rows


def rows_from_workdir(workdir: str | Path, seeds: Iterable[int]) -> list[dict[str, Any]]:
    """The rows of ``seeds``, from each ``workdir/seed_<s>/results.json``."""
    rows: list[dict[str, Any]] = []
    for seed in check_seeds(seeds):
        path = seed_dir(workdir, seed) / "results.json"
        if not path.exists():
            raise FileNotFoundError(f"seed {seed} has no results ({path} is missing)")
        rows += rows_from_results(json.loads(path.read_text()), seed)
    return rows


def write_rows(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """``rows`` as JSON lines, replacing ``path`` atomically (temporary file + ``os.replace``)."""
    text = "".join(json.dumps(row, sort_keys=True, allow_nan=False) + "\n" for row in rows)
    return report.write_text_atomic(path, text)


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``rows.jsonl`` file."""
    lines = Path(path).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


# ----------------------------------------------------------------------------- statistics


def setting_label(setting: Mapping[str, Any]) -> str:
    """``k=v, ...`` in key order, or ``-`` for no setting."""
    return ", ".join(f"{k}={v}" for k, v in sorted(setting.items())) or "-"


def _cells(rows: Sequence[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
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


def _by_method(cell: Sequence[Mapping[str, Any]]) -> dict[str, dict[int, Mapping[str, Any]]]:
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
    for cell in _cells(rows):
        first = cell[0]
        methods = _by_method(cell)
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


# ----------------------------------------------------------------------------- Markdown


def _pm(described: Mapping[str, Any] | None, *, count: bool = False) -> str:
    """``mean ± std`` (``n/a`` for the std of one seed); counts with thousands separators."""
    if described is None:
        return ""

    def show(value: float) -> str:
        return f"{value:,.0f}" if count else report.format_value(value)

    std = "n/a" if described["std"] is None else show(described["std"])
    return f"{show(described['mean'])} ± {std}"


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.4f}"


def verdict_words(comparison: Mapping[str, Any]) -> str:
    """``deeplift wins against magnitude`` / ``ties with`` / ``loses to`` / ``n/a (...)``."""
    ours, other = comparison["method"], comparison["against"]
    words = {"wins": "wins against", "ties": "ties with", "loses": "loses to"}
    if comparison["verdict"] not in words:
        return f"n/a ({comparison['n']} common seeds; an interval needs 2)"
    return f"{ours} {words[comparison['verdict']]} {other}"


def _interval_cell(comparison: Mapping[str, Any]) -> str:
    if comparison["low"] is None:
        return ""
    return f"[{comparison['low']:+.4f}, {comparison['high']:+.4f}]"


def _comparison_row(cell: Mapping[str, Any], c: Mapping[str, Any], level: str) -> dict:
    against = f"{c['against']} (strongest baseline)" if c["strongest"] else c["against"]
    return {
        "metric": LABELS[cell["stage"]].get(c["metric"], c["metric"]),
        "against": against,
        "n": c["n"],
        "mean difference": _signed(c["mean"]),
        f"{level} interval": _interval_cell(c),
        "verdict": verdict_words(c),
    }


def _level(summary: Mapping[str, Any]) -> str:
    spec = summary["interval"]
    return f"{100 * spec['confidence']:g}% {spec['method']}"


def method_table(cell: Mapping[str, Any]) -> str:
    """One row per method: mean ± std of every measure it has, and n seeds."""
    labels = {**LABELS[cell["stage"]], **COLUMN_LABELS}
    rows = []
    for entry in cell["methods"]:
        row = {"method": entry["method"], "n seeds": entry["n"]}
        for measure in MEASURES:
            if measure in entry:
                row[labels[measure]] = _pm(entry[measure], count=measure in COLUMN_LABELS)
        rows.append(row)
    return report.markdown_table(rows)


def tables(summary_or_rows: Mapping[str, Any] | Sequence[Mapping[str, Any]], **kwargs: Any) -> str:
    """The study as Markdown: the headline verdicts, then per stage and setting the methods
    (mean ± std over seeds) and DeepLIFT's paired comparisons. Accepts rows (then ``kwargs`` go
    to :func:`summarize`) or a summary."""
    summary = (
        summary_or_rows
        if isinstance(summary_or_rows, Mapping)
        else summarize(summary_or_rows, **kwargs)
    )
    level = _level(summary)
    spec = summary["interval"]
    seeds = summary["seeds"]
    models = sorted({f"{c['model']} on {c['dataset']}" for c in summary["cells"]})
    q = (1 + spec["confidence"]) / 2
    if spec["method"] == statistics.T_METHOD:
        how = f"mean(d) ± t_{{{q:g}, n-1}} · std(d, ddof=1) / √n"
    else:
        how = f"{BOOTSTRAP_RESAMPLES} resamples of the seeds, percentiles of mean(d)"
    lines = [
        f"# Study: {', '.join(models)}",
        "",
        f"Seeds: {', '.join(map(str, seeds))} (n = {len(seeds)}); every seed trains its own "
        "baseline and drives everything random. Generated from `rows.jsonl` by `xaijax.study` "
        "(rerun `scripts/study_tables.py`; never edit by hand).",
        "",
        "Cells: mean ± sample std (ddof=1) over seeds. Comparisons: the paired difference "
        "d = DeepLIFT − other of test accuracy on the same seed, with a "
        f"{level} interval ({how}); **wins**: the interval is above 0, **loses**: below 0, "
        "**ties**: it covers 0. The strongest baseline is the non-DeepLIFT method with the "
        "highest mean in that setting, picked after the fact (which favours the baseline).",
        "",
        f"## Verdicts: DeepLIFT against the strongest baseline ({level} interval)",
        "",
    ]
    headline = [
        {
            "stage": cell["stage"],
            "setting": setting_label(cell["setting"]),
            **_comparison_row(cell, c, level),
            "against": c["against"],
        }
        for cell in summary["cells"]
        for c in cell["comparisons"]
        if c["strongest"]
    ]
    lines.append(report.markdown_table(headline) if headline else "No comparisons.\n")
    stage = None
    for cell in summary["cells"]:
        if cell["stage"] != stage:
            stage = cell["stage"]
            lines += [f"## {stage}", ""]
        lines += [f"### {stage}: {setting_label(cell['setting'])}", ""]
        if cell["recipe"]:
            recipe = {k: "default" if v is None else v for k, v in cell["recipe"].items()}
            note = (
                " (default: the experiment's `defaults()`)"
                if None in cell["recipe"].values()
                else ""
            )
            lines += [f"Fine-tuning, the same for every method: {setting_label(recipe)}{note}.", ""]
        lines.append(method_table(cell))
        if cell["comparisons"]:
            lines += [
                f"{cell['deeplift_method']} against every other method: paired difference "
                f"(same seed) with a {level} interval.",
                "",
                report.markdown_table(
                    [_comparison_row(cell, c, level) for c in cell["comparisons"]]
                ),
            ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figures


def plot(summary: Mapping[str, Any], path: str | Path, stage: str) -> Path | None:
    """Accuracy ± std (after fine-tuning) per method, one column of points per setting of
    ``stage``; the mean baseline accuracy as a dashed line. None when the stage has no cells."""
    import matplotlib.pyplot as plt  # Agg: xaijax.report selected it on import.

    cells = [c for c in summary["cells"] if c["stage"] == stage]
    if not cells:
        return None
    settings = [setting_label(c["setting"]) for c in cells]
    methods = list(dict.fromkeys(m["method"] for c in cells for m in c["methods"]))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(settings) + 2), 4))
    width = 0.6 / max(len(methods), 1)
    for j, method in enumerate(methods):
        xs, ys, errs = [], [], []
        for i, cell in enumerate(cells):
            for entry in cell["methods"]:
                if entry["method"] == method:
                    xs.append(i - 0.3 + width * (j + 0.5))
                    ys.append(entry["accuracy"]["mean"])
                    errs.append(entry["accuracy"]["std"] or 0.0)
        ax.errorbar(xs, ys, yerr=errs, fmt="o", capsize=4, label=method)
    baseline = [
        entry["accuracy"]["mean"]
        for c in summary["cells"]
        if c["stage"] == "baseline"
        for entry in c["methods"]
    ]
    if baseline and stage != "baseline":
        ax.axhline(float(np.mean(baseline)), color="gray", linestyle="--", label="float32 baseline")
    ax.set_xticks(range(len(settings)))
    ax.set_xticklabels([label.replace(", ", "\n") for label in settings], fontsize=8)
    ax.set_xlim(-0.5, len(settings) - 0.5)
    ax.set_ylabel(f"test {LABELS[stage]['accuracy']}")
    models = ", ".join(sorted({f"{c['model']} on {c['dataset']}" for c in cells}))
    ax.set_title(f"{stage} ({models}): mean ± std over {len(summary['seeds'])} seeds")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return report._save_figure(fig, path)  # the report module's atomic figure writer


def write_report(
    rows: Sequence[Mapping[str, Any]],
    output: str | Path,
    *,
    interval_method: str = "t",
    confidence: float = 0.95,
) -> dict[str, Any]:
    """``output`` (Markdown: :func:`tables` and the figures), the summary as JSON beside it
    (``<output stem>.json``) and one figure per stage (``<output stem>_<stage>.png``); returns
    the summary."""
    output = Path(output)
    summary = summarize(rows, interval_method=interval_method, confidence=confidence)
    figures = []
    for stage in STAGES[1:]:
        path = plot(summary, output.parent / f"{output.stem}_{stage}.png", stage)
        if path is not None:
            figures.append(path.name)
    text = tables(summary)
    if figures:
        text += "\n## Figures\n\n" + "".join(f"![{name}]({name})\n\n" for name in figures)
    report.write_text_atomic(output, text)
    report.write_text_atomic(
        output.with_suffix(".json"), json.dumps({**summary, "figures": figures}, indent=2) + "\n"
    )
    return summary
