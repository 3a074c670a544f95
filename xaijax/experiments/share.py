"""Weight sharing experiment: importance-weighted k-means per layer, shared-weight fine-tuning.

For every bit width in ``config.share.bits`` and importance in ``config.share.importances``
(``uniform`` = plain k-means, or any criterion of ``xaijax.importance``, e.g. ``magnitude`` = |w|
and ``deeplift`` = mean over examples of |DeepLIFT contribution of the weight|, raised to
``importance_exponent``), each Conv / Dense kernel is clustered into 2^bits shared values
(``xaijax.weight_sharing.cluster_params``), evaluated, fine-tuned with each centroid moved by the
summed gradient of its members (``shared_gradients`` chained before the config's optimizer),
snapped back onto its codebook and evaluated again. Exact zeros in kernels (pruned weights) stay
zero and out of the clustering. The fine-tuning follows ``config.finetune``
(``xaijax.experiments.recipe``); its distillation teacher is the float model the stage starts
from, before clustering, and ``results.json`` records the options that are on (``finetune``).

Outputs in ``workdir``: ``results.json`` (atomic), ``results.csv``, ``results.md`` and the plots
``accuracy_vs_bits.png``, ``accuracy_before_finetune_vs_bits.png``, ``accuracy_vs_ratio.png``.
Each (importance, bits) run lives in ``workdir/<importance>_<bits>bit`` (``row.json`` and the
fine-tuning checkpoints under ``finetune/``), tied to the fingerprint of everything that determines
the row (:func:`row_fingerprints`): a rerun reuses finished rows and resumes unfinished fine-tuning
of the same inputs, and recomputes rows whose inputs changed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from ml_collections import config_dict

from xaijax import checkpoint, data, importance, provenance, report, training, weight_sharing
from xaijax.experiments import common, recipe, stage

UNIFORM = "uniform"
#: ``share`` fields that only locate the starting point (its variables digest stands for them).
STARTING_POINT_FIELDS = ("variables_dir", "trained_workdir")
#: ``share`` fields read only when an importance criterion scores the weights.
SCORING_FIELDS = (
    "target",
    "reference",
    "num_references",
    "num_examples",
    "score_batch_size",
    "importance_exponent",
)


def defaults() -> ml_collections.ConfigDict:
    """The ``share`` config section and its defaults."""
    return ml_collections.ConfigDict(
        {
            # Where the model comes from: saved variables, else a trained workdir.
            "variables_dir": config_dict.placeholder(str),
            "trained_workdir": config_dict.placeholder(str),
            # The sweep.
            "bits": (1, 2, 3, 4, 5),
            "importances": (UNIFORM, "magnitude", "deeplift"),
            # k-means.
            "init": "linear",
            "max_iters": 30,
            # Importance scoring (data-driven criteria).
            "target": "label",
            "reference": config_dict.placeholder(str),  # None: the criterion's default
            "num_references": 8,
            "num_examples": 5_000,
            "score_batch_size": 128,
            # k-means weights s_i^p: p = 1 weights by the importance itself, 0.5 by its square
            # root (flatter), 0 ignores it (plain k-means).
            "importance_exponent": 1.0,
            "seed": 0,
            # Fine-tuning (the config's optimizer with this learning rate, constant schedule).
            "finetune_epochs": 1,
            "finetune_learning_rate": 1e-4,
            "finetune_batch_size": config_dict.placeholder(int),  # None: config.train.batch_size
        }
    )


def validate(share: ml_collections.ConfigDict) -> None:
    """Raise ``ValueError`` naming the first bad ``share`` field (before any work)."""
    if not share.bits:
        raise ValueError("config.share.bits must name at least one bit width")
    for bits in share.bits:
        if isinstance(bits, bool) or not isinstance(bits, int):
            raise ValueError(f"config.share.bits must hold ints, got {bits!r}")
        if not weight_sharing.MIN_BITS <= bits <= weight_sharing.MAX_BITS:
            raise ValueError(
                f"config.share.bits must be in [{weight_sharing.MIN_BITS}, "
                f"{weight_sharing.MAX_BITS}], got {bits}"
            )
    if not share.importances:
        raise ValueError("config.share.importances must name at least one importance")
    for name in share.importances:
        if name != UNIFORM:
            importance.get_criterion(name)
    if share.init not in weight_sharing.INITS:
        raise ValueError(
            f"config.share.init must be one of {weight_sharing.INITS}, got {share.init!r}"
        )
    if share.target not in importance.TARGETS:
        raise ValueError(f"config.share.target must be one of {importance.TARGETS}")
    if share.reference is not None and share.reference not in importance.REFERENCES:
        raise ValueError(f"config.share.reference must be None or one of {importance.REFERENCES}")
    minimums = {
        "max_iters": 0,
        "num_references": 1,
        "num_examples": 1,
        "score_batch_size": 1,
        "finetune_epochs": 0,
    }
    for field, minimum in minimums.items():
        value = share[field]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"config.share.{field} must be an integer >= {minimum}, got {value!r}")
    if not share.finetune_learning_rate > 0:
        raise ValueError("config.share.finetune_learning_rate must be > 0")
    exponent = share.importance_exponent
    if isinstance(exponent, bool) or not isinstance(exponent, int | float) or not exponent >= 0:
        raise ValueError(f"config.share.importance_exponent must be >= 0, got {exponent!r}")


def importance_scores(
    name: str,
    share: ml_collections.ConfigDict,
    model: Any,
    variables: Mapping[str, Any],
    train: data.Dataset | None,
) -> Any:
    """Per-weight k-means weights ``{layer: {"kernel": s ** share.importance_exponent}}`` from
    the criterion ``name``'s scores ``s``, or None for plain k-means."""
    if name == UNIFORM:
        return None
    scores = jax.device_get(
        importance.score(
            name,
            model,
            variables,
            train,
            granularity="weight",
            batch_size=share.score_batch_size,
            num_examples=None if train is None else min(share.num_examples, train.num_examples),
            target=share.target,
            reference=share.reference,
            num_references=share.num_references,
            seed=share.seed,
        )
    )
    return jax.tree.map(lambda s: np.power(s, share.importance_exponent), scores)


def squared_error(params: Any, shared_params: Any) -> float:
    """sum over shared kernels of (w - w_shared)^2: the unweighted quantization error."""
    kernels = weight_sharing.kernel_leaves(params)
    shared_kernels = weight_sharing.kernel_leaves(shared_params)
    return float(sum(jnp.sum(jnp.square(kernels[name] - shared_kernels[name])) for name in kernels))


def row_fingerprints(
    config: ml_collections.ConfigDict,
    share: ml_collections.ConfigDict,
    model: Any,
    variables: Mapping[str, Any],
) -> dict[tuple[str, int], provenance.Fingerprint]:
    """``(importance, bits) -> fingerprint`` of each row: the model and the digest of the
    variables it starts from, the ``share`` fields the row reads and its fine-tuning settings."""
    base = provenance.fingerprint(
        unit="share",
        model=provenance.model_identity(model),
        start=provenance.variables_digest(variables),
        data=config.data,
        share=common.plain(share, (*STARTING_POINT_FIELDS, "bits", "importances")),
        finetune=common.finetune_settings(
            config,
            epochs=share.finetune_epochs,
            learning_rate=share.finetune_learning_rate,
            batch_size=share.finetune_batch_size,
        ),
    )
    unscored = {f"share.{field}" for field in SCORING_FIELDS}
    fingerprints = {}
    for name in share.importances:
        row_base = base
        if name == UNIFORM:
            row_base = provenance.Fingerprint(
                {k: v for k, v in base.inputs.items() if k not in unscored}
            )
        for bits in share.bits:
            fingerprints[name, bits] = row_base.extend(importance=name, bits=bits)
    return fingerprints


def run_one(
    config: ml_collections.ConfigDict,
    share: ml_collections.ConfigDict,
    model: Any,
    splits: data.Splits,
    variables: Mapping[str, Any],
    scores: Any,
    mask: Any,
    bits: int,
    importance_name: str,
    run_dir: Path,
    unit: provenance.Fingerprint,
) -> dict[str, Any]:
    """Cluster, evaluate, fine-tune, snap, evaluate, measure size: one row of the results,
    stamped with ``unit``'s digest."""
    eval_batch = config.train.eval_batch_size
    started = time.perf_counter()
    params = variables["params"]
    shared = weight_sharing.cluster_params(
        params,
        bits,
        scores,
        mask,
        init=share.init,
        max_iters=share.max_iters,
        key=jax.random.key(share.seed),
    )
    shared_variables = {**variables, "params": weight_sharing.decode(params, shared)}
    accuracy_shared = training.evaluate(model, splits.test, eval_batch, variables=shared_variables)
    tuned = common.finetune(
        config,
        model,
        splits,
        shared_variables,
        workdir=run_dir / "finetune",
        unit=unit,
        epochs=share.finetune_epochs,
        learning_rate=share.finetune_learning_rate,
        batch_size=share.finetune_batch_size,
        mask=mask,
        gradient_transform=weight_sharing.shared_gradients(shared),
        teacher=(model, variables),
    )
    snapped = weight_sharing.snap_to_codebooks(tuned["params"], shared)
    off_codebook = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(tuned["params"]), jax.tree.leaves(snapped), strict=True)
    )
    tuned_shared = weight_sharing.extract_codebooks(snapped, shared)
    accuracy_tuned = training.evaluate(
        model, splits.test, eval_batch, variables={**tuned, "params": snapped}
    )
    size = weight_sharing.size_report(snapped, tuned_shared)
    row = {
        "importance": importance_name,
        "bits": bits,
        "accuracy_shared": accuracy_shared["accuracy"],
        "accuracy_finetuned": accuracy_tuned["accuracy"],
        "loss_finetuned": accuracy_tuned["loss"],
        "squared_error": squared_error(params, shared_variables["params"]),
        "max_off_codebook_after_finetune": off_codebook,
        "size_bits": size.total_bits,
        "huffman_size_bits": size.huffman_total_bits,
        "float32_bits": size.float32_bits,
        "compression_ratio": size.compression_ratio,
        "huffman_compression_ratio": size.huffman_compression_ratio,
        "layers": {name: layer._asdict() for name, layer in size.layers.items()},
        "wall_time_s": time.perf_counter() - started,
    }
    return provenance.stamp(row, unit)


TABLE_COLUMNS = (
    "importance",
    "bits",
    "accuracy_shared",
    "accuracy_finetuned",
    "drop_points",
    "compression_ratio",
    "huffman_compression_ratio",
    "squared_error",
)


def write_outputs(workdir: Path, results: Mapping[str, Any]) -> str:
    """CSV, Markdown table and plots of the rows; returns the Markdown table."""
    rows = [
        {**row, "drop_points": 100 * (results["accuracy_dense"] - row["accuracy_finetuned"])}
        for row in results["rows"]
    ]
    flat = [{k: v for k, v in row.items() if k != "layers"} for row in rows]
    report.write_csv_atomic(workdir / "results.csv", flat)
    table = report.markdown_table(flat, TABLE_COLUMNS)
    report.write_text_atomic(
        workdir / "results.md",
        f"Dense test accuracy: {results['accuracy_dense']:.4f}\n\n{table}",
    )
    names = list(dict.fromkeys(row["importance"] for row in rows))
    bits = sorted({row["bits"] for row in rows})

    def series(key: str, x: str) -> dict[str, tuple[list[float], list[float]]]:
        lines = {
            name: (
                [row[x] for row in rows if row["importance"] == name],
                [row[key] for row in rows if row["importance"] == name],
            )
            for name in names
        }
        if x == "bits":
            lines["dense"] = (bits, [results["accuracy_dense"]] * len(bits))
        return lines

    title = f"{results['model']} on {results['dataset']}"
    report.line_plot(
        workdir / "accuracy_vs_bits.png",
        series("accuracy_finetuned", "bits"),
        xlabel="bits per weight",
        ylabel="test accuracy after fine-tuning",
        title=title,
    )
    report.line_plot(
        workdir / "accuracy_before_finetune_vs_bits.png",
        series("accuracy_shared", "bits"),
        xlabel="bits per weight",
        ylabel="test accuracy before fine-tuning",
        title=title,
    )
    report.line_plot(
        workdir / "accuracy_vs_ratio.png",
        series("accuracy_finetuned", "compression_ratio"),
        xlabel="compression ratio vs float32",
        ylabel="test accuracy after fine-tuning",
        title=title,
        log_x=True,
    )
    return table


def run(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    model: nn.Module | None = None,
    variables: Mapping[str, Any] | None = None,
    splits: data.Splits | None = None,
) -> dict[str, Any]:
    """The whole sweep; returns the results dict (also written to ``results.json``).

    ``splits`` (default: loaded from the config) are the datasets. Starts from ``model`` /
    ``variables`` when given (e.g. a pruned model), else from
    ``config.share.variables_dir``, else from the baseline trained in ``trained_workdir``.
    """
    share = common.section(config, "share", defaults(), validate)
    finetune_recipe = recipe.recipe(config)  # Validates config.finetune before any work.
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model, variables = common.starting_point(
        config,
        model,
        variables,
        saved=share.variables_dir,
        trained_workdir=share.trained_workdir or workdir / "trained",
    )
    splits = splits if splits is not None else training.datasets_from_config(config)
    mask = common.zero_mask(variables["params"])
    dense = training.evaluate(model, splits.test, config.train.eval_batch_size, variables=variables)
    fingerprints = row_fingerprints(config, share, model, variables)
    policy = common.resume_policy(config)
    claims = {
        (name, bits): provenance.claim(
            workdir / f"{name}_{bits}bit",
            fp,
            what=f"the weight sharing row {name}, {bits} bits in {workdir}",
            policy=policy,
        )
        for (name, bits), fp in fingerprints.items()
    }
    rows = []
    for importance_name in share.importances:
        pending = [
            bits
            for bits in share.bits
            if not (workdir / f"{importance_name}_{bits}bit" / "row.json").exists()
        ]
        started = time.perf_counter()
        scores = (
            importance_scores(importance_name, share, model, variables, splits.train)
            if pending
            else None
        )
        score_seconds = time.perf_counter() - started
        for bits in share.bits:
            run_dir = workdir / f"{importance_name}_{bits}bit"
            row_path = run_dir / "row.json"
            if bits in pending:
                logging.info("%s, %d bits", importance_name, bits)
                row = run_one(
                    config,
                    share,
                    model,
                    splits,
                    variables,
                    scores,
                    mask,
                    bits,
                    importance_name,
                    run_dir,
                    fingerprints[importance_name, bits],
                )
                row["score_time_s"] = score_seconds
                checkpoint.write_json_atomic(row_path, row)
            rows.append(json.loads(row_path.read_text()))
    results = {
        "model": config.model.name,
        "dataset": config.data.name,
        "share": share.to_dict(),
        "finetune": finetune_recipe,
        "accuracy_dense": dense["accuracy"],
        "loss_dense": dense["loss"],
        "pruned_weights": None
        if mask is None
        else int(sum(np.sum(m == 0) for m in jax.tree.leaves(mask))),
        "rows": rows,
        "recomputed": {
            f"{name}_{bits}bit": list(found.changed)
            for (name, bits), found in claims.items()
            if found.status == "recomputed"
        },
    }
    checkpoint.write_json_atomic(workdir / "results.json", results)
    results["table"] = write_outputs(workdir, results)
    return results


STAGE = stage.register(
    stage.Stage(
        "share",
        defaults,
        validate,
        run,
        fingerprint=recipe.with_recipe(stage.section_fingerprint("share", STARTING_POINT_FIELDS)),
    )
)
