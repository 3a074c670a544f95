"""The pipeline's report: one row per stage, every criterion side by side, provenance and
figures, written to ``report.md``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections
from etils import epath

from xaijax import artifact, report
from xaijax.experiments import consistency


def _ratio(baseline_bits: int, bits: float) -> float:
    return float(baseline_bits) / float(bits)


def stage_rows(results: Mapping[str, Any], carry: str) -> list[dict[str, Any]]:
    """One row per stage: accuracy, params, FLOPs, size and compression ratio vs float32."""
    base = results["baseline"]
    rows = [
        {
            "stage": "baseline (float32)",
            "accuracy": base["accuracy"],
            "params": base["params"],
            "flops": base["flops"],
            "size_bytes": base["size_bits"] // 8,
            "ratio": 1.0,
        }
    ]
    if "prune" in results:
        pruned = results["prune"][carry]
        rows.append(
            {
                "stage": f"pruned ({carry}) + fine-tuned",
                "accuracy": pruned["accuracy"]["after_finetune"],
                "params": pruned["nonzero_params"],
                "flops": pruned["flops"]["masked"],
                "size_bytes": pruned["size_bits"]["pruned"] // 8,
                "ratio": _ratio(base["size_bits"], pruned["size_bits"]["pruned"]),
            }
        )
    after_prune = rows[-1]
    if "share" in results:
        for row in results["share"]["rows"]:
            if row["importance"] == carry:
                rows.append(
                    {
                        "stage": f"+ weight sharing ({carry}, {row['bits']} bits) + fine-tuned",
                        "accuracy": row["accuracy_finetuned"],
                        "params": after_prune["params"],
                        "flops": after_prune["flops"],
                        "size_bytes": row["size_bits"] // 8,
                        "ratio": _ratio(base["size_bits"], row["size_bits"]),
                    }
                )
    if "quantize" in results:
        for run in results["quantize"]["runs"]:
            if run["strategy"].startswith(carry):
                rows.append(
                    {
                        "stage": f"+ {run['strategy']} {run['budget']:g} bits (QAT)",
                        "accuracy": run["qat_accuracy"],
                        "params": after_prune["params"],
                        "flops": after_prune["flops"],
                        "size_bytes": int(run["size"]["total"]),
                        "ratio": _ratio(base["size_bits"], 8 * run["size"]["total"]),
                    }
                )
    return rows


def criteria_tables(results: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Every criterion / importance / strategy side by side, per stage."""
    tables: dict[str, list[dict[str, Any]]] = {}
    base_bits = results["baseline"]["size_bits"]
    if "prune" in results:
        tables["prune"] = [
            {
                "criterion": name,
                "accuracy_pruned": r["accuracy"]["pruned_before_finetune"],
                "accuracy_finetuned": r["accuracy"]["after_finetune"],
                "params": r["nonzero_params"],
                "flops": r["flops"]["masked"],
                "ratio": _ratio(base_bits, r["size_bits"]["pruned"]),
            }
            for name, r in results["prune"].items()
        ]
    if "share" in results:
        tables["share"] = [
            {
                "importance": r["importance"],
                "bits": r["bits"],
                "accuracy_shared": r["accuracy_shared"],
                "accuracy_finetuned": r["accuracy_finetuned"],
                "size_bytes": r["size_bits"] // 8,
                "ratio": _ratio(base_bits, r["size_bits"]),
            }
            for r in results["share"]["rows"]
        ]
    if "quantize" in results:
        tables["quantize"] = [
            {
                "strategy": r["strategy"],
                "budget": r["budget"],
                "avg_bits": r["avg_bits"],
                "accuracy_ptq": r["ptq_accuracy"],
                "accuracy_qat": r["qat_accuracy"],
                "size_bytes": int(r["size"]["total"]),
                "ratio": _ratio(base_bits, 8 * r["size"]["total"]),
            }
            for r in results["quantize"]["runs"]
        ]
    return tables


def accuracy_vs_compression(tables: Mapping[str, list[dict[str, Any]]]) -> dict[str, tuple]:
    """``label -> (ratios, accuracies)`` after fine-tuning, one series per method and criterion."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    keys = {
        "prune": ("criterion", "accuracy_finetuned"),
        "share": ("importance", "accuracy_finetuned"),
        "quantize": ("strategy", "accuracy_qat"),
    }
    for stage, (name_key, accuracy_key) in keys.items():
        for row in tables.get(stage, []):
            xs, ys = series.setdefault(f"{stage}: {row[name_key]}", ([], []))
            xs.append(row["ratio"])
            ys.append(row[accuracy_key])
    return series


def provenance_rows(stages: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per stage: how this run got it and, when recomputed, the changed fields."""
    return [
        {
            "stage": name,
            "status": entry["status"],
            "fingerprint": entry["fingerprint"],
            "changed": ", ".join(entry["changed"]) or "-",
        }
        for name, entry in stages.items()
    ]


def write_report(
    workdir: epath.Path, results: Mapping[str, Any], section: ml_collections.ConfigDict
) -> dict[str, Any]:
    """``report.md`` and its figures in ``workdir``; returns the summary tables."""
    stages = stage_rows(results, section.carry)
    tables = criteria_tables(results)
    figures = {
        "accuracy_vs_compression": report.line_plot(
            workdir / "accuracy_vs_compression.png",
            accuracy_vs_compression(tables),
            xlabel="compression ratio vs float32 (size)",
            ylabel="test accuracy after fine-tuning",
            title=f"{results['model']} on {results['dataset']}",
            log_x=True,
        ).name
    }
    explain = results["explain"]
    lines = [
        f"# Compression report: {results['model']} on {results['dataset']}",
        "",
        "Generated by `xaijax.pipeline` (rerun the same command to resume or refresh).",
        "",
        "## Stages",
        "",
        report.markdown_table(stages),
        "## Criteria side by side",
        "",
    ]
    for stage, rows in tables.items():
        lines += [f"### {stage}", "", report.markdown_table(rows)]
    if "artifact" in results:
        lines += artifact.final.report_lines(results["artifact"])
    if "consistency" in results:
        lines += consistency.report_lines(results["consistency"])
    lines += [
        "## Provenance",
        "",
        "Each stage is tied to the fingerprint of its inputs (config fields and starting "
        "variables); `recomputed` means a finished result of other inputs was replaced.",
        "",
        report.markdown_table(provenance_rows(results.get("provenance", {}))),
        "## Figures",
        "",
        f"![accuracy vs compression]({figures['accuracy_vs_compression']})",
        "",
        f"![per-layer importance](explain/{explain['importance_figure']})",
        "",
        f"![DeepLIFT heatmaps](explain/{explain['heatmap_figure']})",
        "",
        f"Largest summation-to-delta error of the heatmaps: {explain['max_delta_error']:.2e}.",
        "",
    ]
    if "quantize" in results:
        for figure in sorted((workdir / "quantize").glob("bits_per_layer_*.png")):
            lines += [f"![bits per layer](quantize/{figure.name})", ""]
    report.write_text_atomic(workdir / "report.md", "\n".join(lines))
    return {"stages": stages, "criteria": tables, "figures": figures}
