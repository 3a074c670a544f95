"""Markdown tables and figures of a study summary, and the report that writes both."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from etils import epath

from xaijax import report, statistics
from xaijax.study.rows import STAGES
from xaijax.study.summary import (
    BOOTSTRAP_RESAMPLES,
    DEEPLIFT_METHOD,
    MEASURES,
    setting_label,
    summarize,
)

LABELS = {
    "baseline": {"accuracy": "accuracy"},
    "prune": {"accuracy": "accuracy (fine-tuned)", "accuracy_before_finetune": "accuracy (pruned)"},
    "share": {"accuracy": "accuracy (fine-tuned)", "accuracy_before_finetune": "accuracy (shared)"},
    "quantize": {"accuracy": "QAT accuracy", "accuracy_before_finetune": "PTQ accuracy"},
    "joint": {"accuracy": "QAT accuracy", "accuracy_before_finetune": "accuracy (masked, PTQ)"},
}
COLUMN_LABELS = {
    "params": "params",
    "nonzero_params": "non-zero params",
    "flops": "FLOPs",
    "size_bytes": "size (bytes)",
}


def _pm(described: Mapping[str, Any] | None, *, count: bool = False) -> str:
    """``mean ± std`` (``n/a`` for the std of one seed); counts with thousands separators."""
    if described is None:
        return ""

    def show(value: float) -> str:
        return f"{value:,.0f}" if count else report.format_value(value)

    std = "n/a" if described["std"] is None else show(described["std"])
    return f"{show(described['mean'])} ± {std}"


def signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.4f}"


def verdict_words(comparison: Mapping[str, Any]) -> str:
    """``deeplift wins against magnitude`` / ``ties with`` / ``loses to`` / ``n/a (...)``."""
    ours, other = comparison["method"], comparison["against"]
    words = {"wins": "wins against", "ties": "ties with", "loses": "loses to"}
    if comparison["verdict"] not in words:
        return f"n/a ({comparison['n']} common seeds; an interval needs 2)"
    return f"{ours} {words[comparison['verdict']]} {other}"


def interval_cell(comparison: Mapping[str, Any]) -> str:
    if comparison["low"] is None:
        return ""
    return f"[{comparison['low']:+.4f}, {comparison['high']:+.4f}]"


def _comparison_row(cell: Mapping[str, Any], c: Mapping[str, Any], level: str) -> dict:
    against = f"{c['against']} (strongest baseline)" if c["strongest"] else c["against"]
    return {
        "metric": LABELS[cell["stage"]].get(c["metric"], c["metric"]),
        "against": against,
        "n": c["n"],
        "mean difference": signed(c["mean"]),
        f"{level} interval": interval_cell(c),
        "verdict": verdict_words(c),
    }


def _level(summary: Mapping[str, Any]) -> str:
    spec = summary["interval"]
    return f"{100 * spec['confidence']:g}% {spec['method']}"


def method_table(
    cell: Mapping[str, Any],
    *,
    labels: Mapping[str, str] | None = None,
    measures: Sequence[str] = MEASURES,
) -> str:
    """One row per method: mean ± std of every measure of ``measures`` it has, and n seeds;
    columns named by ``labels`` (default: the stage's :data:`LABELS`)."""
    labels = {**LABELS[cell["stage"]], **COLUMN_LABELS, **(labels or {})}
    rows = []
    for entry in cell["methods"]:
        row = {"method": entry["method"], "n seeds": entry["n"]}
        for measure in measures:
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


def plot(summary: Mapping[str, Any], path: epath.PathLike, stage: str) -> epath.Path | None:
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


def allocation_differences(
    rows: Sequence[Mapping[str, Any]],
    method: str = DEEPLIFT_METHOD["quantize"],
    against: str = "hessian",
) -> str:
    """Markdown: per seed and budget, whether ``method`` and ``against`` chose the same bits per
    layer, and both allocations with their QAT accuracy where they differ ("" without both)."""
    chosen = {
        (r["seed"], r["setting"]["budget"], r["method"]): r
        for r in rows
        if r["stage"] == "quantize" and r["method"] in (method, against)
    }
    table = []
    for seed, budget, name in sorted(chosen):
        other = chosen.get((seed, budget, against))
        if name != method or other is None:
            continue
        mine = chosen[seed, budget, name]
        same = mine["layer_bits"] == other["layer_bits"]
        table.append(
            {
                "seed": seed,
                "budget": budget,
                "same bits": "yes" if same else "no",
                f"{method} bits": "" if same else setting_label(mine["layer_bits"]),
                f"{against} bits": "" if same else setting_label(other["layer_bits"]),
                f"{method} QAT": f"{mine['accuracy']:.4f}",
                f"{against} QAT": f"{other['accuracy']:.4f}",
            }
        )
    if not table:
        return ""
    differ = sum(row["same bits"] == "no" for row in table)
    return (
        f"## quantize: where {method} and {against} allocate differently\n\n"
        f"They differ in {differ} of {len(table)} (seed, budget) pairs.\n\n"
        + report.markdown_table(table)
    )


def write_report(
    rows: Sequence[Mapping[str, Any]],
    output: epath.PathLike,
    *,
    interval_method: str = "t",
    confidence: float = 0.95,
) -> dict[str, Any]:
    """``output`` (Markdown: :func:`tables` and the figures), the summary as JSON beside it
    (``<output stem>.json``) and one figure per stage (``<output stem>_<stage>.png``); returns
    the summary."""
    output = epath.Path(output)
    summary = summarize(rows, interval_method=interval_method, confidence=confidence)
    figures = []
    for stage in STAGES[1:]:
        path = plot(summary, output.parent / f"{output.stem}_{stage}.png", stage)
        if path is not None:
            figures.append(path.name)
    text = tables(summary)
    differences = allocation_differences(rows)
    if differences:
        text += "\n" + differences
    if figures:
        text += "\n## Figures\n\n" + "".join(f"![{name}]({name})\n\n" for name in figures)
    report.write_text_atomic(output, text)
    report.write_text_atomic(
        output.with_suffix(".json"), json.dumps({**summary, "figures": figures}, indent=2) + "\n"
    )
    return summary
