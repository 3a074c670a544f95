"""One row of the weight sharing stage, and the stage's table and plots.

A row is one (assignment, importance, bits): each Conv / Dense kernel clustered into 2^bits shared
values (``kmeans``: importance-weighted k-means; ``ecq``: entropy-constrained assignment with a
fixed zero centroid, whose members are then held at exactly zero like pruned weights), evaluated,
fine-tuned with tied cluster gradients (``weight_sharing.shared_gradients``), snapped back onto
its codebooks, evaluated again and measured (plain and Huffman-coded size).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from xaijax import data, provenance, report, training, weight_sharing
from xaijax.experiments import common

UNIFORM = "uniform"
KMEANS, ECQ = "kmeans", "ecq"
ASSIGNMENTS = (KMEANS, ECQ)


def squared_error(params: Any, shared_params: Any) -> float:
    """sum over shared kernels of (w - w_shared)^2: the unweighted quantization error."""
    kernels = weight_sharing.kernel_leaves(params)
    shared_kernels = weight_sharing.kernel_leaves(shared_params)
    return float(sum(jnp.sum(jnp.square(kernels[name] - shared_kernels[name])) for name in kernels))


def row_label(assignment: str, importance_name: str) -> str:
    """A row's label (its ``importance`` field and directory prefix): the importance for k-means
    rows, ``ecq_<importance>`` for ECQ rows."""
    if assignment not in ASSIGNMENTS:
        raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {assignment!r}")
    return importance_name if assignment == KMEANS else f"{ECQ}_{importance_name}"


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
    run_dir: epath.Path,
    unit: provenance.Fingerprint,
    assignment: str = KMEANS,
) -> dict[str, Any]:
    """Cluster (``assignment``: k-means or ECQ), evaluate, fine-tune, snap, evaluate, measure
    size: one row of the results, stamped with ``unit``'s digest."""
    eval_batch = config.train.eval_batch_size
    started = time.perf_counter()
    params = variables["params"]
    options = {"init": share.init, "max_iters": share.max_iters, "key": jax.random.key(share.seed)}
    if assignment == ECQ:
        shared = weight_sharing.ecq_cluster_params(
            params, bits, scores, mask, lam=share.ecq_lambda, **options
        )
    else:
        shared = weight_sharing.cluster_params(params, bits, scores, mask, **options)
    shared_variables = {**variables, "params": weight_sharing.decode(params, shared)}
    if assignment == ECQ:
        # The zero centroid stays 0: its members are held at zero like pruned weights.
        mask = common.zero_mask(shared_variables["params"])
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
    snapped_kernels = weight_sharing.kernel_leaves(snapped)
    ecq_fields = {"relevance": importance_name, "ecq_lambda": share.ecq_lambda}
    row = {
        "importance": row_label(assignment, importance_name),
        "assignment": assignment,
        **(ecq_fields if assignment == ECQ else {}),
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
        "zero_weights": int(sum(np.sum(np.asarray(snapped_kernels[name]) == 0) for name in shared)),
        "wall_time_s": time.perf_counter() - started,
    }
    return provenance.stamp(row, unit)


TABLE_COLUMNS = (
    "importance",
    "assignment",
    "bits",
    "accuracy_shared",
    "accuracy_finetuned",
    "drop_points",
    "compression_ratio",
    "huffman_compression_ratio",
    "squared_error",
    "zero_weights",
)


def write_outputs(workdir: epath.Path, results: Mapping[str, Any]) -> str:
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
    after, before = "test accuracy after fine-tuning", "test accuracy before fine-tuning"
    plots = (  # file, y column, x column, x label, y label, log x
        ("accuracy_vs_bits.png", "accuracy_finetuned", "bits", "bits per weight", after, False),
        (
            "accuracy_before_finetune_vs_bits.png",
            "accuracy_shared",
            "bits",
            "bits per weight",
            before,
            False,
        ),
        (
            "accuracy_vs_ratio.png",
            "accuracy_finetuned",
            "compression_ratio",
            "compression ratio vs float32",
            after,
            True,
        ),
    )
    for filename, key, x, xlabel, ylabel, log_x in plots:
        report.line_plot(
            workdir / filename,
            series(key, x),
            xlabel=xlabel,
            ylabel=ylabel,
            title=title,
            log_x=log_x,
        )
    return table
