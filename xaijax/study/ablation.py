"""Ablations: DeepLIFT variants run on the seeds of a finished study.

A :class:`Variant` is a name, the stage it changes (``prune`` or ``share``) and config overrides
``{section: {field: value}}``. For every variant and seed, :func:`run` takes the study's seed
config (:func:`~xaijax.study.runner.seed_config`), applies the overrides, keeps only the variant's
stage and the stages it starts from, and runs the pipeline in ``workdir/<variant>/seed_<s>``. The
stages it starts from are copied from the study's seed (the baseline; for a ``share`` variant also
the pruned model the study carried), so a variant and the study's methods share one baseline per
seed and pair on it. The pipeline's fingerprints decide whether a copy is reused: a copied stage
whose inputs differ from the variant's is recomputed, never silently mixed in.

Each variant's rows follow the study's row schema with ``method`` = the variant's name and
``overrides`` added; ``workdir/rows.jsonl`` is rewritten after every run. :func:`summarize` pairs
them with the study's rows of the same seeds: every variant against the default DeepLIFT method of
its stage and against the strongest baseline, on paired per-seed differences.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ml_collections
from etils import epath

from xaijax import paths, report, statistics
from xaijax.study.rows import (
    ROWS_FILE,
    check_seeds,
    read_rows,
    rows_from_results,
    seed_dir,
    share_method,
    write_rows,
)
from xaijax.study.runner import seed_config
from xaijax.study.summary import (
    COMPARED,
    DEEPLIFT_METHOD,
    by_method,
    cells_of,
    compare,
    is_deeplift,
    setting_label,
    summarize,
)

#: Variant names (directory names): letters, digits and ``_ . = + -``.
VARIANT_NAME = re.compile(r"[A-Za-z0-9_.=+-]+")
#: Stages a variant may change, and the stages each one starts from.
#: The file a finished pipeline stage directory holds (``xaijax.pipeline.run_stage`` writes it).
STAGE_MARKER = "stage.json"
STARTS_FROM = {"prune": ("baseline",), "share": ("baseline", "prune")}


@dataclasses.dataclass(frozen=True)
class Variant:
    """A DeepLIFT variant: ``overrides`` (``{section: {field: value}}``) applied to ``stage``."""

    name: str
    stage: str
    overrides: Mapping[str, Mapping[str, Any]]
    regime: str | None = None  # xaijax.study.regimes: the regime the variant belongs to.

    def __post_init__(self) -> None:
        if self.stage not in STARTS_FROM:
            raise ValueError(
                f"variant {self.name!r}: stage must be one of {tuple(STARTS_FROM)}, "
                f"got {self.stage!r}"
            )
        if not VARIANT_NAME.fullmatch(self.name):
            raise ValueError(
                f"variant name {self.name!r} must match {VARIANT_NAME.pattern} (it names a "
                "directory: tensorstore misreads checkpoints under paths with brackets)"
            )
        for section, fields in self.overrides.items():
            if not isinstance(fields, Mapping):
                raise ValueError(
                    f"variant {self.name!r}: overrides[{section!r}] must map fields to values"
                )

    @property
    def importance(self) -> str:
        """The criterion the variant scores with: the overridden one (``prune.criterion``, or the
        single ``share.importances``), else DeepLIFT's."""
        fields = self.overrides.get(self.stage, {})
        if self.stage == "prune":
            return fields.get("criterion", DEEPLIFT_METHOD["prune"])
        importances = tuple(fields.get("importances", (DEEPLIFT_METHOD["share"],)))
        if len(importances) != 1:
            raise ValueError(
                f"variant {self.name!r}: give one share.importances, got {importances}"
            )
        return importances[0]

    @property
    def label(self) -> str:
        """:attr:`method`, with the explanation rule when the variant overrides it
        (``<stage>.importance.rule``), e.g. ``ecq+lrp[epsilon]``: how regime tables name it."""
        rule = self.overrides.get(self.stage, {}).get("importance", {}).get("rule")
        return self.method if rule is None else f"{self.method}[{rule}]"

    @property
    def method(self) -> str:
        """The study method of the rows the variant produces (``share_method`` for sharing:
        ``ecq+<importance>`` when ``share.assignments`` is ``("ecq",)``)."""
        if self.stage == "prune":
            return self.importance
        assignments = tuple(self.overrides.get("share", {}).get("assignments", ("kmeans",)))
        if len(assignments) != 1:
            raise ValueError(
                f"variant {self.name!r}: give one share.assignments, got {assignments}"
            )
        return share_method(
            {
                "assignment": assignments[0],
                "importance": self.importance,
                "relevance": self.importance,
            }
        )


def variants_from_config(section: Mapping[str, Any]) -> tuple[Variant, ...]:
    """``{name: {"stage": ..., "overrides": {...}}}`` (e.g. ``config.ablation.variants``)."""
    if hasattr(section, "to_dict"):
        section = section.to_dict()
    variants = []
    for name, spec in section.items():
        unknown = set(spec) - {"stage", "overrides", "regime"}
        if unknown or "stage" not in spec:
            raise ValueError(
                f"variant {name!r} needs 'stage' and optional 'overrides' and 'regime', "
                f"got {sorted(spec)}"
            )
        overrides = dict(spec.get("overrides", {}))
        variants.append(Variant(name, spec["stage"], overrides, spec.get("regime")))
    if not variants:
        raise ValueError("an ablation needs at least one variant")
    return tuple(variants)


def variant_config(
    config: ml_collections.ConfigDict, variant: Variant, seed: int
) -> ml_collections.ConfigDict:
    """The study's config of ``seed`` with ``variant``'s overrides, running only its stage."""
    config = seed_config(config, seed)
    with config.unlocked():
        if "ablation" in config:  # The variants themselves are no pipeline input.
            del config["ablation"]
        _merge(config, variant.overrides)
        carried = variant.importance if variant.stage == "prune" else DEEPLIFT_METHOD["prune"]
        config.compress.criteria = (carried,)
        config.compress.carry = carried
        config.compress.export_artifact = False
        config.compress.explain_consistency = False
        config.compress.stages = tuple(
            s for s in (*STARTS_FROM[variant.stage], variant.stage) if s != "baseline"
        )
        if variant.stage == "share":
            config.share.importances = (variant.importance,)
    return config


def _merge(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
    """Set ``overrides`` into ``config`` (unlocked) recursively: a nested mapping updates the
    sub-section field by field instead of replacing it."""
    for field, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(config.get(field), ml_collections.ConfigDict):
            _merge(config[field], value)
        elif isinstance(value, Mapping):
            config[field] = ml_collections.ConfigDict(copy.deepcopy(dict(value)))
        else:
            config[field] = copy.deepcopy(value)


def _copy_atomic(source: epath.Path, destination: epath.Path) -> None:
    """Copy the finished stage directory ``source`` to ``destination``.

    Locally a temporary copy renamed into place (atomic). On an object store, where a directory
    cannot be renamed atomically, any unfinished copy is deleted and the files are copied with
    ``stage.json`` last: a destination without it is unfinished and is copied again.
    """
    if not paths.is_local(destination):
        paths.remove(destination)
        paths.copy_tree(source, destination, last=(STAGE_MARKER,))
        return
    staging = destination.with_name(f".{destination.name}.copying")
    paths.remove(staging)
    staging.parent.mkdir(parents=True, exist_ok=True)
    paths.copy_tree(source, staging)
    os.replace(staging, destination)


def _copied(destination: epath.Path) -> bool:
    """Whether :func:`_copy_atomic` finished copying to ``destination``: locally the directory
    exists (it appears whole); on an object store its ``stage.json`` (copied last) exists."""
    return (destination if paths.is_local(destination) else destination / STAGE_MARKER).exists()


def start_dirs(variant: Variant) -> tuple[epath.Path, ...]:
    """The stage directories (relative to a seed's pipeline workdir) ``variant`` starts from."""
    return tuple(
        epath.Path(stage) if stage == "baseline" else epath.Path(stage) / DEEPLIFT_METHOD[stage]
        for stage in STARTS_FROM[variant.stage]
    )


def check_study(study_dir: epath.Path, variant: Variant) -> None:
    """Raise ``FileNotFoundError`` unless the study seed in ``study_dir`` finished the stages
    ``variant`` starts from."""
    for relative in start_dirs(variant):
        if not (study_dir / relative / STAGE_MARKER).exists():
            raise FileNotFoundError(
                f"the study has no finished {relative} in {study_dir}; run the study first"
            )


def seed_variant_dir(study_dir: epath.Path, variant_dir: epath.Path, variant: Variant) -> None:
    """Copy into ``variant_dir`` the study seed's finished stages ``variant`` starts from."""
    check_study(study_dir, variant)
    for relative in start_dirs(variant):
        if not _copied(variant_dir / relative):
            _copy_atomic(study_dir / relative, variant_dir / relative)


def variant_rows(results: Mapping[str, Any], variant: Variant, seed: int) -> list[dict]:
    """The study rows of ``variant``'s stage and method in one seed's pipeline ``results``,
    renamed to the variant."""
    rows = []
    for row in rows_from_results(results, seed):
        if row["stage"] == variant.stage and row["method"] == variant.method:
            renamed = {**row, "method": variant.name, "overrides": variant.overrides}
            if variant.regime is not None:
                renamed.update(regime=variant.regime, regime_method=variant.label)
            rows.append(renamed)
    if not rows:
        raise ValueError(f"variant {variant.name!r}: seed {seed} produced no {variant.stage} rows")
    return rows


def kept_rows(path: epath.Path, planned: set[tuple[str, int]]) -> list[dict[str, Any]]:
    """The rows already in ``path`` (if any) of every (variant, seed) not in ``planned``: a run of
    some variants or seeds keeps the rows of the others."""
    if not path.exists():
        return []
    return [row for row in read_rows(path) if (row["method"], row["seed"]) not in planned]


def run(
    config: ml_collections.ConfigDict,
    study_workdir: epath.PathLike,
    workdir: epath.PathLike,
    variants: Sequence[Variant],
    seeds: Iterable[int],
) -> list[dict[str, Any]]:
    """Every variant on every seed (variant by variant, resuming finished work); returns the
    rows and rewrites ``workdir/rows.jsonl`` after each run, keeping the rows it holds of other
    variants and seeds (:func:`kept_rows`)."""
    from xaijax import pipeline  # Late import: tables need no JAX.

    seeds = check_seeds(seeds)
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must be distinct, got {names}")
    for variant in variants:  # Every bad override fails here, before any work.
        pipeline.check_config(variant_config(config, variant, seeds[0]))
        for seed in seeds:
            check_study(seed_dir(study_workdir, seed), variant)
    workdir = epath.Path(workdir)
    rows = kept_rows(workdir / ROWS_FILE, {(v.name, s) for v in variants for s in seeds})
    for variant in variants:
        for seed in seeds:
            logging.info("ablation: %s, seed %d", variant.name, seed)
            variant_dir = seed_dir(workdir / variant.name, seed)
            seed_variant_dir(seed_dir(study_workdir, seed), variant_dir, variant)
            results = pipeline.run(variant_config(config, variant, seed), variant_dir)
            rows += variant_rows(results, variant, seed)
            write_rows(workdir / ROWS_FILE, rows)
    return rows


def comparisons(
    rows: Sequence[Mapping[str, Any]], *, interval_method: str = "t", confidence: float = 0.95
) -> list[dict[str, Any]]:
    """For every cell holding variants (rows with ``overrides``): each DeepLIFT-family method
    (the default, the variants and any other DeepLIFT method of the study) against the default
    DeepLIFT method and against the strongest baseline (the non-DeepLIFT method with the highest
    mean), on every compared metric."""
    found = []
    for cell in cells_of(rows):
        first, methods = cell[0], by_method(cell)
        ours = DEEPLIFT_METHOD.get(first["stage"])
        if ours not in methods or not any("overrides" in row for row in cell):
            continue  # No variant in this cell.
        for metric in COMPARED:
            described = {
                m: statistics.mean_std([r[metric] for r in s.values()])
                for m, s in methods.items()
                if all(r[metric] is not None for r in s.values())
            }
            means = {m: mean for m, (mean, _) in described.items()}
            baselines = sorted((m for m in means if not is_deeplift(m)), key=lambda m: -means[m])
            for method in (m for m in means if is_deeplift(m)):
                entry = {
                    "stage": first["stage"],
                    "setting": first["setting"],
                    "metric": metric,
                    "method": method,
                    "n": len(methods[method]),
                    "mean": means[method],
                    "std": described[method][1],
                }
                for key, against in (("vs_default", ours), ("vs_strongest", baselines[0])):
                    if against != method:
                        entry[key] = compare(
                            method,
                            against,
                            metric,
                            methods,
                            interval_method=interval_method,
                            confidence=confidence,
                        )
                found.append(entry)
    return found


def _difference(comparison: Mapping[str, Any] | None) -> str:
    if comparison is None:
        return "-"
    if comparison["low"] is None:
        return "n/a"
    return (
        f"{comparison['mean']:+.4f} [{comparison['low']:+.4f}, {comparison['high']:+.4f}] "
        f"{comparison['verdict']}"
    )


def tables(rows: Sequence[Mapping[str, Any]], **kwargs: Any) -> str:
    """Markdown: per cell and metric, every DeepLIFT variant's mean and its paired differences
    against the default DeepLIFT method and the strongest baseline."""
    summary = summarize(rows, **kwargs)
    level = f"{100 * summary['interval']['confidence']:g}% {summary['interval']['method']}"
    lines = [
        "# Ablation: DeepLIFT variants",
        "",
        f"Seeds: {', '.join(map(str, summary['seeds']))}. Differences are paired per seed "
        f"(variant − other) with a {level} interval and a verdict (wins / ties / loses). "
        "Generated from the rows by `scripts/ablation.py --tables_only`; never edit by hand.",
        "",
    ]
    entries = comparisons(rows, **kwargs)
    keys = sorted(
        {(e["stage"], setting_label(e["setting"]), e["metric"]) for e in entries},
        key=lambda k: (k[0], k[1], COMPARED.index(k[2])),
    )
    for stage, setting, metric in keys:
        strongest = next(
            e["vs_strongest"]["against"]
            for e in entries
            if (e["stage"], setting_label(e["setting"]), e["metric"]) == (stage, setting, metric)
        )
        lines += [f"## {stage}: {setting} ({metric})", ""]
        table = [
            {
                "method": e["method"],
                "n seeds": e["n"],
                f"{metric} (mean ± std)": f"{e['mean']:.4f} ± {e['std']:.4f}",
                "vs default DeepLIFT": _difference(e.get("vs_default")),
                f"vs {strongest} (strongest baseline)": _difference(e.get("vs_strongest")),
            }
            for e in entries
            if (e["stage"], setting_label(e["setting"]), e["metric"]) == (stage, setting, metric)
        ]
        lines.append(report.markdown_table(table))
    return "\n".join(lines)
