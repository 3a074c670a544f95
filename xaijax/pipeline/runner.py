"""Running the pipeline: every enabled stage in order, each reused under an unchanged
fingerprint (``stage.json``) or computed, then the artifact, the consistency check and the
report (see ``xaijax.pipeline``)."""

from __future__ import annotations

import copy
import functools
import json
import logging
from collections.abc import Callable
from typing import Any

import ml_collections
from etils import epath

from xaijax import artifact, checkpoint, experiments, models, provenance, pruning, training
from xaijax.experiments import common, consistency
from xaijax.experiments import explain as explain_experiment
from xaijax.pipeline.section import check_config
from xaijax.pipeline.summary import write_report


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
