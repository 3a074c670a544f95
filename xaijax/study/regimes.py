"""Regimes: where explanation-guided compression is claimed to win, measured on a study's seeds.

Yeom et al. (2021) report that LRP-guided pruning beats magnitude and Taylor when no fine-tuning
follows and when few examples are available to score with. A regime is a name and config
overrides (for example one-shot pruning with ``prune.finetune_epochs = 0``, or scoring from
``prune.importance.examples_per_class = 5``); :func:`variants` turns every (regime, criterion)
pair into an ablation :class:`~xaijax.study.ablation.Variant` named ``<regime>+<criterion>``,
run like any ablation (``scripts/ablation.py``) on the finished study's baselines.

:func:`regime_rows` labels the rows for comparison: a variant row's ``method`` becomes its
criterion (the study method it ran) and its ``setting`` gains ``regime``; the study's own rows
of the same stages are the ``fine-tuned`` regime. Each regime is then one cell of
:func:`~xaijax.study.summary.summarize`: mean ± std per criterion, and :func:`comparisons` gives,
paired per seed, every explanation method (DeepLIFT or LRP, alone or in ECQ) against the best
classic criterion of the cell (by mean), and DeepLIFT against LRP; :func:`against_study_recipe`
gives, for regimes that change only the fine-tuning recipe, each method against itself under the
study's recipe.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from xaijax import report, statistics
from xaijax.study.summary import (
    MEASURES,
    by_method,
    cells_of,
    compare,
    interval_name,
    setting_label,
    summarize,
)
from xaijax.study.tables import interval_cell, method_table, signed, verdict_words

#: The regime label of the study's own rows (the usual prune / share + fine-tune recipe).
STUDY_REGIME = "fine-tuned"
#: The explanation methods compared with each other, and the method-name tokens that mark them.
EXPLANATIONS = ("deeplift", "lrp")


def variants(
    regimes: Mapping[str, Mapping[str, Any]], criteria: Sequence[str], *, stage: str = "prune"
) -> dict[str, dict[str, Any]]:
    """``{"<regime>+<criterion>": {"stage", "overrides", "regime"}}`` for every regime (its
    ``overrides`` plus ``{stage: {"criterion": c}}``) and criterion, in that order: the
    ``config.ablation.variants`` section of a regimes config."""
    if not regimes or not criteria:
        raise ValueError("a regimes study needs at least one regime and one criterion")
    found = {}
    for regime, overrides in regimes.items():
        for criterion in criteria:
            merged = {section: dict(fields) for section, fields in overrides.items()}
            merged.setdefault(stage, {})["criterion"] = criterion
            found[f"{regime}+{criterion}"] = {
                "stage": stage,
                "overrides": merged,
                "regime": regime,
            }
    return found


def regime_rows(
    study_rows: Sequence[Mapping[str, Any]], variant_rows: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The rows of every regime, labelled for :func:`summarize`: the study's rows of the stages
    the variants ran are the :data:`STUDY_REGIME`; a variant row with a ``regime`` takes its
    study method (``regime_method``) as ``method`` and the regime into its ``setting``. Variant
    rows without a regime (plain ablation variants) keep their name as method."""
    stages = {row["stage"] for row in variant_rows}
    labelled = []
    for row in study_rows:
        if row["stage"] in stages:
            labelled.append({**row, "setting": {**row["setting"], "regime": STUDY_REGIME}})
    for row in variant_rows:
        regime = row.get("regime") or STUDY_REGIME
        method = row.get("regime_method") or row["method"]
        labelled.append({**row, "method": method, "setting": {**row["setting"], "regime": regime}})
    return labelled


def is_explanation(method: str) -> bool:
    """Whether ``method`` is guided by an explanation (a ``+``-separated token is DeepLIFT or
    LRP, e.g. ``deeplift_shap``, ``lrp``, ``ecq+lrp``); else it is a classic criterion."""
    return any(token.startswith(EXPLANATIONS) for token in method.split("+"))


def _family(method: str) -> str | None:
    for token in method.split("+"):
        for name in EXPLANATIONS:
            if token.startswith(name):
                return name
    return None


def _counterparts(method: str, methods: Sequence[str]) -> list[str]:
    """The LRP methods that differ from DeepLIFT ``method`` only in the explanation (under any
    rule: ``ecq+lrp`` and ``ecq+lrp[epsilon]`` for ``ecq+deeplift``)."""
    if _family(method) != "deeplift":
        return []
    other = method.replace("deeplift", "lrp")
    return [m for m in methods if m.split("[")[0] == other]


def comparisons(
    rows: Sequence[Mapping[str, Any]],
    *,
    metric: str = "accuracy",
    interval_method: str = "t",
    confidence: float = 0.95,
) -> list[dict[str, Any]]:
    """Per cell: each explanation method against the best classic criterion (highest mean of
    ``metric``) and each DeepLIFT method against its LRP counterpart, paired per seed."""
    found = []
    for cell in cells_of(rows):
        methods = by_method(cell)
        means = {
            m: statistics.mean_std([r[metric] for r in s.values()])[0]
            for m, s in methods.items()
            if all(r[metric] is not None for r in s.values())
        }
        classic = sorted((m for m in means if not is_explanation(m)), key=lambda m: -means[m])
        for method in (m for m in means if is_explanation(m)):
            pairs = [(classic[0], True)] if classic else []
            pairs += [(lrp, False) for lrp in _counterparts(method, list(means))]
            for against, is_classic in pairs:
                entry = compare(
                    method,
                    against,
                    metric,
                    methods,
                    interval_method=interval_method,
                    confidence=confidence,
                )
                found.append(
                    {
                        **entry,
                        "stage": cell[0]["stage"],
                        "setting": cell[0]["setting"],
                        "best_classic": is_classic,
                    }
                )
    return found


def _without_regime(cell: Sequence[Mapping[str, Any]]) -> tuple:
    first = cell[0]
    setting = {k: v for k, v in first["setting"].items() if k != "regime"}
    return first["model"], first["dataset"], first["stage"], json.dumps(setting, sort_keys=True)


def against_study_recipe(
    rows: Sequence[Mapping[str, Any]],
    *,
    metric: str = "accuracy",
    interval_method: str = "t",
    confidence: float = 0.95,
) -> list[dict[str, Any]]:
    """Every method of a regime that changes only the recipe (its setting, less ``regime``,
    equals that of a :data:`STUDY_REGIME` cell) against the same method in the study's recipe,
    paired per seed: the effect of the recipe."""
    cells = cells_of(rows)
    study = {
        _without_regime(c): by_method(c)
        for c in cells
        if c[0]["setting"].get("regime") == STUDY_REGIME
    }
    found = []
    for cell in cells:
        regime = cell[0]["setting"].get("regime")
        reference = study.get(_without_regime(cell))
        if regime == STUDY_REGIME or reference is None:
            continue
        for method, seeds in by_method(cell).items():
            if method not in reference:
                continue
            paired = {
                f"{method} ({regime})": seeds,
                f"{method} ({STUDY_REGIME})": reference[method],
            }
            entry = compare(
                *paired, metric, paired, interval_method=interval_method, confidence=confidence
            )
            found.append({**entry, "stage": cell[0]["stage"], "setting": cell[0]["setting"]})
    return found


def tables(
    study_rows: Sequence[Mapping[str, Any]],
    variant_rows: Sequence[Mapping[str, Any]],
    *,
    interval_method: str = "t",
    confidence: float = 0.95,
) -> str:
    """Markdown: per stage and regime, every criterion's mean ± std and the paired comparisons
    of :func:`comparisons` on the final accuracy."""
    rows = regime_rows(study_rows, variant_rows)
    summary = summarize(rows, interval_method=interval_method, confidence=confidence)
    level = f"{100 * confidence:g}% {interval_name(interval_method)}"
    entries = comparisons(rows, interval_method=interval_method, confidence=confidence)
    entries += against_study_recipe(rows, interval_method=interval_method, confidence=confidence)
    lines = [
        "# Regimes: explanation methods against the classic criteria",
        "",
        f"Seeds: {', '.join(map(str, summary['seeds']))}. Every difference is paired per seed "
        f"(method − other) on the final accuracy, with a {level} interval and a verdict. "
        f"`{STUDY_REGIME}` is the study's own recipe. Generated from the rows by "
        "`scripts/ablation.py --tables_only`; never edit by hand.",
        "",
    ]
    for cell in summary["cells"]:
        label = setting_label(cell["setting"])
        if cell["recipe"].get("finetune_epochs") == 0:  # One accuracy: no fine-tuning.
            table = method_table(
                cell,
                labels={"accuracy": "accuracy (pruned, not fine-tuned)"},
                measures=[m for m in MEASURES if m != "accuracy_before_finetune"],
            )
        else:
            table = method_table(cell)
        lines += [f"## {cell['stage']}: {label}", "", table, ""]
        here = [
            e for e in entries if e["stage"] == cell["stage"] and e["setting"] == cell["setting"]
        ]
        if here:
            table = [
                {
                    "method": e["method"],
                    "against": f"{e['against']} (best classic)"
                    if e.get("best_classic")
                    else e["against"],
                    "n": e["n"],
                    "mean difference": signed(e["mean"]),
                    f"{level} interval": interval_cell(e),
                    "verdict": verdict_words(e),
                }
                for e in here
            ]
            lines += [report.markdown_table(table), ""]
    return "\n".join(lines)


__all__ = [
    "EXPLANATIONS",
    "STUDY_REGIME",
    "comparisons",
    "is_explanation",
    "regime_rows",
    "tables",
    "variants",
]
