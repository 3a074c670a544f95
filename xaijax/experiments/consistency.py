"""Do compressed models still explain themselves the same way? The dense model's DeepLIFT maps
against each pruned model's, on the test set (``xaijax.consistency``).

For the pipeline, :func:`pipeline_step` compares the dense model with the model each criterion
of ``config.compress.criteria`` pruned (``workdir/prune/<criterion>``, loaded with the prune
stage's ``load_result``: the physically shrunk model after structured pruning). It trains
nothing and is no stage: it has no fingerprint and changes none, and reruns on every pipeline
run (a few seconds: one jitted DeepLIFT pass per model over ``consistency_examples`` images).
A single run has one dense model, so the yardstick of "same" (the agreement of two dense models
trained from different seeds) is absent there; ``xaijax.experiments.consistency_study``
computes it from a study's seeds.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from etils import epath

from xaijax import consistency, data, models, report
from xaijax.experiments import prune

HEATMAP_FIGURE = "consistency_heatmaps.png"
DENSE = "dense"
MEASURES = ("spearman", "top_overlap")
Model = tuple[nn.Module, Mapping[str, Any]]


def measure_label(measure: str, fraction: float = consistency.DEFAULT_FRACTION) -> str:
    """``Spearman ρ`` or ``top-10% overlap`` (the fraction in percent)."""
    if measure == "spearman":
        return "Spearman ρ"
    if measure == "top_overlap":
        return f"top-{100 * fraction:g}% overlap"
    raise ValueError(f"unknown consistency measure {measure!r}; known: {MEASURES}")


def param_counts(variables: Mapping[str, Any]) -> dict[str, int]:
    """Stored parameters and the non-zero ones among them (a masked weight counts as zero)."""
    leaves = jax.tree.leaves(variables["params"])
    return {
        "params": models.count_params(variables["params"]),
        "nonzero_params": int(sum(np.count_nonzero(np.asarray(leaf)) for leaf in leaves)),
    }


def agreement_row(method: str, summary: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
    """One flat row of a :func:`xaijax.consistency.compare_maps` summary: the means and stds of
    both measures, the undefined Spearman count and the per-class means."""
    row: dict[str, Any] = {"method": method, **fields, "examples": summary["n"]}
    row["top_fraction"] = summary["top_fraction"]
    for measure in MEASURES:
        row[measure] = summary[measure]["mean"]
        row[f"{measure}_std"] = summary[measure]["std"]
    row["spearman_undefined"] = summary["spearman_undefined"]
    row["per_class"] = {
        label: {"n": entry["n"], **{m: entry[m] for m in MEASURES}}
        for label, entry in summary["per_class"].items()
    }
    return row


def compare_to_dense(
    dense: Model,
    candidates: Mapping[str, Model],
    test: data.Dataset,
    *,
    num_examples: int | None = None,
    batch_size: int = 256,
    fraction: float = consistency.DEFAULT_FRACTION,
    rule: str = "rescale",
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """One :func:`agreement_row` per candidate (with its :func:`param_counts`) against the
    dense model, and every model's maps (``dense`` first)."""
    options = {"batch_size": batch_size, "num_examples": num_examples, "rule": rule}
    maps = {DENSE: consistency.pixel_maps(*dense, test, **options)}
    rows = []
    for name, (model, variables) in candidates.items():
        if name == DENSE:
            raise ValueError(f"a candidate may not be named {DENSE!r} (the reference)")
        maps[name] = consistency.pixel_maps(model, variables, test, **options)
        summary = consistency.compare_maps(maps[DENSE], maps[name], test.labels, fraction)
        rows.append(agreement_row(name, summary, **param_counts(variables)))
    return rows, maps


def pruned_models(model: nn.Module, workdir: epath.PathLike, criteria: Sequence[str]) -> dict:
    """``criterion -> (model, variables)`` of the finished runs in ``workdir/prune/<criterion>``."""
    found = {}
    for criterion in criteria:
        run_dir = epath.Path(workdir) / "prune" / criterion
        if not (run_dir / "results.json").exists():
            raise ValueError(f"no finished pruning run for criterion {criterion!r} in {run_dir}")
        pruned, variables = prune.load_result(model, run_dir)
        widths = getattr(pruned, "widths", None)
        if isinstance(widths, dict):  # Frozen, equal shrunk models share one compiled map.
            pruned = pruned.clone(widths=models.freeze_mapping(widths))
        found[criterion] = (pruned, variables)
    return found


def pipeline_step(
    workdir: epath.PathLike,
    dense: Model,
    criteria: Sequence[str],
    test: data.Dataset,
    *,
    num_examples: int,
    num_images: int,
    batch_size: int,
) -> dict[str, Any]:
    """Dense vs each criterion's pruned model on the first ``num_examples`` test images, and
    the heatmaps of the first ``num_images`` side by side (``workdir/consistency_heatmaps.png``)."""
    started = time.perf_counter()
    workdir = epath.Path(workdir)
    candidates = pruned_models(dense[0], workdir, criteria)
    rows, maps = compare_to_dense(
        dense, candidates, test, num_examples=num_examples, batch_size=batch_size
    )
    shown = min(num_images, len(maps[DENSE]))
    consistency.side_by_side(
        workdir / HEATMAP_FIGURE,
        test.images[:shown],
        test.labels[:shown],
        {name: values[:shown] for name, values in maps.items()},
        reference=DENSE,
    )
    return {
        "examples": len(maps[DENSE]),
        "top_fraction": consistency.DEFAULT_FRACTION,
        "target": "true label",
        "reference": "zeros",
        "dense": param_counts(dense[1]),
        "yardstick": None,
        "rows": rows,
        "figure": HEATMAP_FIGURE,
        "wall_time_s": time.perf_counter() - started,
    }


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "undefined"
    return f"{mean:.3f} ± {'n/a' if std is None else f'{std:.3f}'}"


def table_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows for the report's table: method, sizes and both measures as ``mean ± std``."""
    fraction = rows[0]["top_fraction"] if rows else consistency.DEFAULT_FRACTION
    return [
        {
            "method": row["method"],
            "params": row["params"],
            "non-zero params": row["nonzero_params"],
            **{
                f"{measure_label(m, fraction)} (mean ± std)": _pm(row[m], row[f"{m}_std"])
                for m in MEASURES
            },
            "undefined ρ": row["spearman_undefined"],
        }
        for row in rows
    ]


def report_lines(results: Mapping[str, Any]) -> list[str]:
    """The report's ``Explanation consistency`` section of :func:`pipeline_step`'s results."""
    label = measure_label("top_overlap", results["top_fraction"])
    return [
        "## Explanation consistency",
        "",
        f"DeepLIFT maps of the dense model vs each pruned model on the first {results['examples']}"
        f" test images (contributions to the true label's logit against an all-zero reference, "
        f"summed over channels): per-example Spearman ρ of the signed maps and {label} of the "
        "pixels by magnitude, mean ± std over the images. ρ is undefined where a map is "
        "constant. The yardstick (two dense models from different seeds) needs a study: "
        "`scripts/consistency.py`.",
        "",
        report.markdown_table(table_rows(results["rows"])),
        f"![dense vs pruned heatmaps]({results['figure']})",
        "",
    ]
