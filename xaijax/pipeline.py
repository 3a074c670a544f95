"""The main job: one resumable compression pipeline and its report.

``run(config, workdir)`` goes, in order, through

1. ``baseline``: train the float model (or load it) and measure it;
2. ``explain``: DeepLIFT heatmaps of test images and per-layer unit importance under every
   criterion of ``config.compress.criteria``;
3. ``prune``: for every criterion, importance-driven pruning (``config.prune``) with fine-tuning;
   the model pruned by ``config.compress.carry`` (DeepLIFT by default), physically shrunk, feeds
   the next stages;
4. ``share``: weight sharing of the pruned model (``config.share``), DeepLIFT-weighted k-means
   against plain and magnitude-weighted k-means;
5. ``quantize``: mixed-precision integer quantization of the pruned model (``config.quantize``),
   bit allocation strategies side by side;
6. ``report``: ``report.md``, ``results.json`` and figures in ``workdir``;
7. ``artifact`` (``config.compress.export_artifact``, default on): the final compressed model as a
   deployable artifact in ``workdir/artifact`` (``xaijax.artifact``: which model it holds is
   documented in ``xaijax.artifact.final``); the report gives its accuracy, measured with the
   artifact itself, and its size on disk next to the computed size. It is rewritten on every
   run (a few seconds) and is no stage: it has no fingerprint and changes none.
8. ``consistency`` (``config.compress.explain_consistency``, default on, with ``prune``): how far
   each pruned model's DeepLIFT explanations moved from the dense model's on the first
   ``config.compress.consistency_examples`` test images (``xaijax.experiments.consistency``);
   like the artifact it reruns every time (seconds), with no fingerprint.

Each stage lives in ``workdir/<stage>`` and is finished when its ``stage.json`` exists (written
atomically, last). ``stage.json`` records the stage's fingerprint (``xaijax.provenance``): the
config fields the stage reads and the digest of the variables it starts from, which chains it to
the stage before. A rerun skips a finished stage whose fingerprint is unchanged, resumes
unfinished ones from their own checkpoints and per-run result files, and recomputes a stage whose
inputs changed (so everything after a changed stage is recomputed too, unless its starting
variables come out bit-identical), or refuses with ``config.resume='strict'``. The report lists
each stage as reused, computed or recomputed, with the changed fields.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
from etils import epath

from xaijax import (
    artifact,
    checkpoint,
    config_utils,
    experiments,
    importance,
    models,
    provenance,
    pruning,
    report,
    training,
)
from xaijax.experiments import common, consistency, recipe
from xaijax.experiments import explain as explain_experiment


def defaults() -> ml_collections.ConfigDict:
    """The ``config.compress`` section and its defaults."""
    return ml_collections.ConfigDict(
        {
            "stages": ("prune", "share", "quantize"),  # Registered stages, in the paper's order.
            "criteria": ("deeplift", "magnitude", "taylor", "random"),
            "carry": "deeplift",
            "explain_examples": 8,
            "importance_examples": 1000,
            # Write <workdir>/artifact (xaijax.artifact) last; no stage's fingerprint reads it.
            "export_artifact": True,
            # Dense vs pruned DeepLIFT maps in the report; no stage's fingerprint reads these.
            "explain_consistency": True,
            "consistency_examples": 500,
        }
    )


def validate(section: ml_collections.ConfigDict) -> None:
    """Raise ``ValueError`` naming the first bad ``config.compress`` field."""
    unknown = [stage for stage in section.stages if stage not in experiments.STAGES]
    if unknown:
        raise ValueError(
            f"config.compress.stages has unknown stages {unknown}; "
            f"registered: {tuple(experiments.STAGES)}"
        )
    if not section.criteria:
        raise ValueError("config.compress.criteria must name at least one criterion")
    for name in section.criteria:
        importance.get_criterion(name)
    if section.carry not in section.criteria:
        raise ValueError(
            f"config.compress.carry ({section.carry!r}) must be one of config.compress.criteria "
            f"{tuple(section.criteria)}"
        )
    for field in ("explain_examples", "importance_examples", "consistency_examples"):
        value = section[field]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"config.compress.{field} must be an integer >= 1, got {value!r}")
    for field in ("export_artifact", "explain_consistency"):
        if not isinstance(section[field], bool):
            raise ValueError(
                f"config.compress.{field} must be True or False, got {section[field]!r}"
            )


def run_stage(
    workdir: epath.Path,
    name: str,
    fp: provenance.Fingerprint,
    compute: Callable[[epath.Path], dict[str, Any]],
    *,
    policy: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``compute(workdir/name)`` unless the stage already finished with fingerprint ``fp``.

    Returns the stage's results and its provenance (``status``: reused, computed or
    recomputed; ``fingerprint``; ``changed`` fields).
    """
    stage_dir = workdir / name
    done = stage_dir / "stage.json"
    record = json.loads(done.read_text()) if done.exists() else None
    recorded = None if record is None else dict(record.get("inputs") or {})
    found = provenance.reconcile(recorded, fp, what=f"stage {name} in {workdir}", policy=policy)
    entry = {"fingerprint": fp.digest, "changed": list(found.changed)}
    if found.status == "resumed":
        logging.info("stage %s: already finished", name)
        return record["results"], {**entry, "status": "reused"}
    logging.info("stage %s: running", name)
    stage_dir.mkdir(parents=True, exist_ok=True)
    done.unlink(missing_ok=True)
    results = compute(stage_dir)
    checkpoint.write_json_atomic(
        done, {"digest": fp.digest, "inputs": dict(fp.inputs), "results": results}
    )
    status = "recomputed" if found.status == "recomputed" else "computed"
    return json.loads(done.read_text())["results"], {**entry, "status": status}


def _with(config: ml_collections.ConfigDict, name: str, **fields: Any) -> ml_collections.ConfigDict:
    """A copy of ``config`` whose section ``name`` has ``fields`` set."""
    config = copy.deepcopy(config)
    if name not in config:
        config[name] = ml_collections.ConfigDict()
    for key, value in fields.items():
        config[name][key] = value
    return config


def check_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Raise ``ValueError`` naming the first bad field of ``config`` (every section the pipeline
    reads); returns the ``compress`` section."""
    section = common.section(config, "compress", defaults(), validate)
    config_utils.validate_config(config)
    recipe.finetune_section(config)
    for name in section.stages:
        experiments.get_stage(name).section(config)
    return section


def run(config: ml_collections.ConfigDict, workdir: epath.PathLike) -> dict[str, Any]:
    """The whole pipeline (see the module docstring); returns the report's results."""
    section = check_config(config)  # Every bad field fails here, before any work.
    enabled = [experiments.get_stage(name) for name in section.stages]
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    splits = training.datasets_from_config(config)
    model = training.model_from_config(config)
    input_shape = splits.train.images.shape[1:]
    eval_batch = config.train.eval_batch_size

    def baseline(stage_dir: epath.Path) -> dict[str, Any]:
        variables = common.load_or_train(config, stage_dir)
        test = common.evaluate_test(model, variables, splits, eval_batch)
        costs = models.layer_costs(model, variables, input_shape)
        return {
            "accuracy": test["accuracy"],
            "loss": test["loss"],
            "params": models.count_params(variables["params"]),
            "flops": sum(c["flops"] for c in costs.values()),
            "size_bits": pruning.storage_bits(variables["params"]),
        }

    policy = common.resume_policy(config)
    stages: dict[str, dict[str, Any]] = {}

    def stage(path: str, fp: provenance.Fingerprint, compute: Callable[[epath.Path], dict]) -> dict:
        results, stages[path] = run_stage(workdir, path, fp, compute, policy=policy)
        return results

    results: dict[str, Any] = {"model": config.model.name, "dataset": config.data.name}
    results["baseline"] = stage("baseline", common.baseline_fingerprint(config), baseline)
    variables = common.load_variables(workdir / "baseline" / "variables")

    def explain(stage_dir: epath.Path) -> dict[str, Any]:
        return explain_experiment.run(
            model,
            variables,
            splits,
            stage_dir,
            criteria=tuple(section.criteria),
            num_images=section.explain_examples,
            num_examples=section.importance_examples,
        )

    results["explain"] = stage(
        "explain",
        provenance.fingerprint(
            unit="explain",
            model=provenance.model_identity(model),
            start=provenance.variables_digest(variables),
            data=config.data,
            optimizer=config.optimizer,
            train=common.plain(config.train, common.NON_RESULT_TRAIN_FIELDS),
            criteria=section.criteria,
            explain_examples=section.explain_examples,
            importance_examples=section.importance_examples,
        ),
        explain,
    )

    carry_model, carry_variables = model, variables
    for spec in enabled:
        start = provenance.variables_digest(carry_variables)
        labels = tuple(section.criteria) if spec.varies else (None,)
        outcome = {}
        for label in labels:
            stage_config = (
                config if label is None else _with(config, spec.name, **{spec.varies: label})
            )
            outcome[label] = stage(
                spec.name if label is None else f"{spec.name}/{label}",
                spec.fingerprint(stage_config, carry_model, start),
                functools.partial(
                    spec.run,
                    stage_config,
                    model=carry_model,
                    variables=carry_variables,
                    splits=splits,
                ),
            )
        results[spec.name] = outcome if spec.varies else outcome[None]
        if spec.load_result is not None:
            carry_dir = workdir / spec.name / (section.carry if spec.varies else "")
            carry_model, carry_variables = spec.load_result(carry_model, carry_dir)
    results["provenance"] = stages
    if section.export_artifact:
        logging.info("artifact: exporting the final model to %s", workdir / "artifact")
        results["artifact"] = artifact.export_final(
            workdir,
            results,
            carry=section.carry,
            model=carry_model,
            variables=carry_variables,
            test=splits.test,
            batch_size=eval_batch,
        )
    if section.explain_consistency and "prune" in results:
        logging.info("consistency: dense vs pruned DeepLIFT maps")
        results["consistency"] = consistency.pipeline_step(
            workdir,
            (model, variables),
            tuple(results["prune"]),
            splits.test,
            num_examples=section.consistency_examples,
            num_images=section.explain_examples,
            batch_size=eval_batch,
        )
    summary = write_report(workdir, results, section)
    checkpoint.write_json_atomic(workdir / "results.json", {**results, "summary": summary})
    return {**results, "summary": summary}


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
