"""Explanation consistency over a finished study's seeds, with a yardstick and paired intervals.

For every seed ``s`` (``<study>/seed_<s>``, a finished pipeline): the dense model's DeepLIFT maps
(``baseline/variables``) against those of each criterion's pruned model (``prune/<criterion>``),
and the **yardstick**: the dense model of seed ``s`` against the dense model of its partner seed
``s'`` (the next seed of the list; the last pairs with the first when there are 3 or more, so
with 2 seeds there is one pair and with 1 none). Each model sees the test images preprocessed
as its own seed's config prescribes; the test set and its labels are the same for all seeds.

Rows (one per seed x method, JSON lines): ``seed``, ``method`` (a criterion, or
:data:`YARDSTICK`), ``other_seed`` (the yardstick's partner), ``params``, ``nonzero_params``,
``examples``, ``top_fraction``, ``spearman`` / ``top_overlap`` (means over the test images) with
their stds, ``spearman_undefined`` and ``per_class`` means. :func:`tables` compares methods on
the per-seed means with paired t intervals (``xaijax.statistics``): DeepLIFT-pruned against
every other pruned model, and every pruned model against the yardstick (higher agreement is
better: ``wins`` means closer to the dense model's explanations).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
from etils import epath

from xaijax import consistency, report, statistics, training
from xaijax.experiments import common
from xaijax.experiments.consistency import (
    DENSE,
    MEASURES,
    agreement_row,
    compare_to_dense,
    measure_label,
    param_counts,
    pruned_models,
)

YARDSTICK = "dense (other seed)"
DEEPLIFT = "deeplift"
HEATMAP_FIGURE = "consistency_heatmaps.png"


def yardstick_pairs(seeds: Sequence[int]) -> dict[int, int]:
    """``seed -> partner``: each seed with the next; the last with the first from 3 seeds on."""
    pairs = {seeds[i]: seeds[i + 1] for i in range(len(seeds) - 1)}
    if len(seeds) > 2:
        pairs[seeds[-1]] = seeds[0]
    return pairs


def _seed_run(study_dir: epath.Path, seed: int) -> tuple[epath.Path, dict[str, Any]]:
    run_dir = epath.Path(study_dir) / f"seed_{seed}"
    results_file = run_dir / "results.json"
    if not results_file.exists():
        raise ValueError(f"seed {seed} has no finished pipeline run ({results_file} is missing)")
    return run_dir, json.loads(results_file.read_text())


def study_rows(
    study_dir: epath.PathLike,
    seeds: Iterable[int],
    config_of: Callable[[int], ml_collections.ConfigDict],
    *,
    num_examples: int | None = None,
    batch_size: int = 256,
    fraction: float = consistency.DEFAULT_FRACTION,
    rule: str = "rescale",
    figure_dir: epath.PathLike | None = None,
    num_images: int = 6,
) -> list[dict[str, Any]]:
    """The rows of every seed (see the module docstring); ``config_of(seed)`` is the config the
    seed ran with. With ``figure_dir``, the first seed's heatmaps (dense, each pruned model,
    the partner's dense model) are drawn side by side there."""
    seeds = tuple(seeds)
    if not seeds:
        raise ValueError("consistency over a study needs at least one seed")
    options = {"num_examples": num_examples, "batch_size": batch_size, "rule": rule}
    rows: list[dict[str, Any]] = []
    dense: dict[int, tuple[np.ndarray, dict[str, int]]] = {}  # seed -> (maps, param counts)
    first: dict[str, Any] = {}  # The first seed's images, labels and maps, for the figure.
    for seed in seeds:
        run_dir, results = _seed_run(study_dir, seed)
        config = config_of(seed)
        model = training.model_from_config(config)
        test = training.datasets_from_config(config).test
        variables = common.load_variables(run_dir / "baseline" / "variables")
        found, maps = compare_to_dense(
            (model, variables),
            pruned_models(model, run_dir, list(results.get("prune", {}))),
            test,
            fraction=fraction,
            **options,
        )
        labels = np.asarray(test.labels)[: len(maps[DENSE])]
        if not first:
            first = {"images": test.images[:num_images], "labels": labels, "maps": maps}
        elif not np.array_equal(first["labels"], labels):
            raise ValueError(f"seed {seed} has other test labels than seed {seeds[0]}")
        dense[seed] = (maps[DENSE], param_counts(variables))
        rows += [{"seed": seed, **row, "other_seed": None} for row in found]
    partners = yardstick_pairs(seeds)
    for seed, partner in partners.items():
        summary = consistency.compare_maps(
            dense[seed][0], dense[partner][0], first["labels"], fraction
        )
        row = agreement_row(YARDSTICK, summary, **dense[partner][1])
        rows.append({"seed": seed, **row, "other_seed": partner})
    if figure_dir is not None:
        shown = {name: values[:num_images] for name, values in first["maps"].items()}
        if seeds[0] in partners:
            shown[YARDSTICK] = dense[partners[seeds[0]]][0][:num_images]
        consistency.side_by_side(
            epath.Path(figure_dir) / HEATMAP_FIGURE,
            first["images"],
            first["labels"],
            shown,
            reference=DENSE,
        )
    return rows


def by_method(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[int, Mapping[str, Any]]]:
    """``method -> seed -> row`` (methods in first-seen order); a repeated pair raises."""
    methods: dict[str, dict[int, Mapping[str, Any]]] = {}
    for row in rows:
        seeds = methods.setdefault(row["method"], {})
        if row["seed"] in seeds:
            raise ValueError(f"two rows for method {row['method']!r} and seed {row['seed']}")
        seeds[row["seed"]] = row
    return methods


def compare(
    methods: Mapping[str, Mapping[int, Mapping[str, Any]]],
    method: str,
    against: str,
    measure: str,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Paired t interval of ``mean_s(measure(method, s) - measure(against, s))`` over the seeds
    where both are defined, and its verdict (``n/a`` with fewer than 2 such seeds)."""
    seeds = sorted(
        s
        for s in set(methods[method]) & set(methods[against])
        if methods[method][s][measure] is not None and methods[against][s][measure] is not None
    )
    a = [methods[method][s][measure] for s in seeds]
    b = [methods[against][s][measure] for s in seeds]
    entry = {"measure": measure, "method": method, "against": against, "n": len(seeds)}
    if len(seeds) < 2:
        mean = float(np.mean(np.subtract(a, b))) if seeds else None
        return {**entry, "mean": mean, "low": None, "high": None, "verdict": "n/a"}
    found = statistics.paired_t_interval(a, b, confidence)
    return {
        **entry,
        "mean": found.mean,
        "low": found.low,
        "high": found.high,
        "verdict": statistics.verdict(found),
    }


def comparisons(rows: Sequence[Mapping[str, Any]], confidence: float = 0.95) -> list[dict]:
    """DeepLIFT-pruned vs every other pruned method, then every pruned method vs the yardstick,
    for each measure."""
    methods = by_method(rows)
    pruned = [m for m in methods if m != YARDSTICK]
    pairs = [(DEEPLIFT, m) for m in pruned if DEEPLIFT in methods and m != DEEPLIFT]
    pairs += [(m, YARDSTICK) for m in pruned if YARDSTICK in methods]
    return [
        compare(methods, method, against, measure, confidence)
        for measure in MEASURES
        for method, against in pairs
    ]


def _pm(values: Sequence[float]) -> str:
    if not values:
        return "undefined"
    mean, std = statistics.mean_std(values)
    return f"{mean:.3f} ± {'n/a' if np.isnan(std) else f'{std:.3f}'}"


def _defined(seeds: Mapping[int, Mapping[str, Any]], key: str) -> list[float]:
    return [row[key] for row in seeds.values() if row[key] is not None]


def tables(rows: Sequence[Mapping[str, Any]], confidence: float = 0.95) -> str:
    """Markdown: per-method means over seeds, paired comparisons, per-seed values, per class."""
    if not rows:
        raise ValueError("no consistency rows to tabulate")
    methods = by_method(rows)
    fraction = rows[0]["top_fraction"]
    labels = {m: measure_label(m, fraction) for m in MEASURES}
    summary = [
        {
            "method": method,
            "seeds": len(seeds),
            "non-zero params": float(np.mean(_defined(seeds, "nonzero_params"))),
            **{f"{labels[m]} (mean ± std over seeds)": _pm(_defined(seeds, m)) for m in MEASURES},
        }
        for method, seeds in methods.items()
    ]
    words = {"wins": "wins against", "ties": "ties with", "loses": "loses to"}
    paired = [
        {
            "measure": labels[c["measure"]],
            "method": c["method"],
            "against": c["against"],
            "n": c["n"],
            "mean difference": "" if c["mean"] is None else f"{c['mean']:+.4f}",
            f"{100 * confidence:g}% paired t interval": ""
            if c["low"] is None
            else f"[{c['low']:+.4f}, {c['high']:+.4f}]",
            "verdict": f"{c['method']} {words[c['verdict']]} {c['against']}"
            if c["verdict"] in words
            else f"n/a ({c['n']} seeds; an interval needs 2)",
        }
        for c in comparisons(rows, confidence)
    ]
    seeds = sorted({row["seed"] for row in rows})
    lines = [
        "# Explanation consistency over seeds",
        "",
        f"DeepLIFT maps of {rows[0]['examples']} test images (true label, zero reference): "
        f"per-image Spearman ρ and {labels['top_overlap']} (by magnitude) of each pruned model "
        f"against its own dense model; `{YARDSTICK}` compares two dense models of different "
        "seeds (the agreement that counts as the same). Higher is closer; `wins` means the "
        "whole interval of the paired per-seed difference is above 0.",
        "",
        "## Per method",
        "",
        report.markdown_table(summary),
        "## Paired comparisons",
        "",
        report.markdown_table(paired) if paired else "No pair of methods to compare.\n",
    ]
    for measure in MEASURES:
        per_seed = []
        for seed in seeds:
            entry: dict[str, Any] = {"seed": seed}
            for method, by_seed in methods.items():
                if seed in by_seed and by_seed[seed][measure] is not None:
                    entry[method] = by_seed[seed][measure]
            per_seed.append(entry)
        lines += [f"## {labels[measure]} per seed", "", report.markdown_table(per_seed)]
    classes = sorted({c for row in rows for c in row["per_class"]}, key=int)
    per_class = []
    for label in classes:
        entry = {"class": label}
        for method, by_seed in methods.items():
            values = [
                r["per_class"][label]["spearman"]
                for r in by_seed.values()
                if label in r["per_class"] and r["per_class"][label]["spearman"] is not None
            ]
            if values:
                entry[method] = float(np.mean(values))
        per_class.append(entry)
    lines += [
        "## Spearman ρ per true class (mean over seeds)",
        "",
        report.markdown_table(per_class),
    ]
    return "\n".join(lines)


def size_points(
    rows: Sequence[Mapping[str, Any]], measure: str
) -> dict[str, tuple[list[float], list[float]]]:
    """``method -> (non-zero params, measure)`` with one point per seed, for
    :func:`xaijax.consistency.agreement_vs_size`."""
    points: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        if row[measure] is not None:
            xs, ys = points.setdefault(row["method"], ([], []))
            xs.append(float(row["nonzero_params"]))
            ys.append(float(row[measure]))
    return points


def write_report(
    output_dir: epath.PathLike, rows: Sequence[Mapping[str, Any]], confidence: float = 0.95
) -> epath.Path:
    """``output_dir/consistency.md``: :func:`tables`, then the figures (agreement against
    non-zero parameters per measure, drawn here; the heatmaps when :func:`study_rows` drew
    them there)."""
    output_dir = epath.Path(output_dir)
    fraction = rows[0]["top_fraction"] if rows else consistency.DEFAULT_FRACTION
    lines = [tables(rows, confidence), "## Figures", ""]
    for measure in MEASURES:
        label = measure_label(measure, fraction)
        figure = consistency.agreement_vs_size(
            output_dir / f"agreement_{measure}.png",
            size_points(rows, measure),
            measure=f"{label} with the dense model (mean over test images)",
            title=f"{label} against size, one point per seed",
        )
        lines += [f"![{label} against size]({figure.name})", ""]
    if (output_dir / HEATMAP_FIGURE).exists():
        lines += [f"![dense and compressed heatmaps]({HEATMAP_FIGURE})", ""]
    return report.write_text_atomic(output_dir / "consistency.md", "\n".join(lines))
