"""Sweep importance criteria x sparsities, structured and unstructured: CSV and plots.

    python scripts/prune_sweep.py --config configs/lenet5_fmnist.py --workdir runs/lenet5_sweep \\
        [--criteria deeplift,taylor,magnitude,random] [--sparsities 0.3,0.5,0.7,0.9] \\
        [--granularities unit,weight] [--prune.finetune_epochs=1 --prune.trained_workdir=...]

For every granularity and criterion the trained model (loaded or trained as in
``scripts/prune.py``) is scored once; every sparsity (the same fraction for conv and dense
layers, one-shot, classifier excluded) is then masked, evaluated on the test split, fine-tuned
with the mask for ``prune.finetune_epochs`` epochs and evaluated again. Rows go to
``workdir/sweep.csv`` as they finish (a rerun skips finished rows and resumes unfinished
fine-tuning); ``workdir/sweep_<granularity>.png`` plots accuracy against sparsity and against
FLOPs, before (dashed) and after (solid) fine-tuning, one colour per criterion.
"""

from __future__ import annotations

import csv
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from absl import app, flags

matplotlib.use("Agg")
import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).resolve().parent))
import prune as prune_script

from xaijax import models, pruning, training

_CRITERIA = flags.DEFINE_list("criteria", "deeplift,taylor,magnitude,random", "Criteria to sweep.")
_SPARSITIES = flags.DEFINE_list("sparsities", "0.3,0.5,0.7,0.9", "Fractions to remove.")
_GRANULARITIES = flags.DEFINE_list("granularities", "unit,weight", "unit, weight and/or hybrid.")

FIELDS = (
    "granularity",
    "criterion",
    "sparsity",
    "accuracy_dense",
    "accuracy_before_finetune",
    "accuracy_after_finetune",
    "params",
    "params_dense",
    "flops",
    "flops_dense",
    "kernel_sparsity",
    "score_seconds",
    "finetune_seconds",
)


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_rows_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def plot(rows: list[dict[str, Any]], granularity: str, path: Path) -> None:
    chosen = [r for r in rows if r["granularity"] == granularity]
    if not chosen:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    criteria = sorted({r["criterion"] for r in chosen})
    colours = dict(zip(criteria, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for criterion in criteria:
        points = sorted(
            (r for r in chosen if r["criterion"] == criterion), key=lambda r: float(r["sparsity"])
        )
        sparsity = [float(r["sparsity"]) for r in points]
        flops = [float(r["flops"]) for r in points]
        before = [float(r["accuracy_before_finetune"]) for r in points]
        after = [float(r["accuracy_after_finetune"]) for r in points]
        colour = colours[criterion]
        for ax, x in ((axes[0], sparsity), (axes[1], flops)):
            ax.plot(x, after, "-o", color=colour, label=f"{criterion} fine-tuned")
            ax.plot(x, before, "--x", color=colour, alpha=0.7, label=f"{criterion} before")
    dense = float(chosen[0]["accuracy_dense"])
    for ax in axes:
        ax.axhline(dense, color="black", linewidth=0.8, linestyle=":", label="dense")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    axes[0].set_xlabel("sparsity (fraction of units)" if granularity == "unit" else "sparsity")
    axes[1].set_xlabel("FLOPs per example")
    axes[1].set_xscale("log")
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(f"{granularity} pruning")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)
    config = prune_script._CONFIG.value
    workdir = Path(prune_script._WORKDIR.value)
    workdir.mkdir(parents=True, exist_ok=True)
    prune = prune_script.prune_config(config)
    sparsities = [float(s) for s in _SPARSITIES.value]
    for s in sparsities:
        if not 0 <= s < 1:
            raise ValueError(f"--sparsities must be in [0, 1), got {s}")
    for granularity in _GRANULARITIES.value:
        if granularity not in pruning.GRANULARITY_KINDS:
            raise ValueError(f"--granularities: unknown {granularity!r}")
    for criterion in _CRITERIA.value:
        prune_script.importance.get_criterion(criterion)

    trained_workdir = Path(prune.trained_workdir or workdir / "trained")
    variables = prune_script.load_or_train(config, trained_workdir)
    splits = training.datasets_from_config(config)
    model = training.model_from_config(config)
    specs = model.layer_specs()
    input_shape = splits.train.images.shape[1:]
    eval_batch = config.train.eval_batch_size
    dense_costs = pruning.total_costs(models.layer_costs(model, variables, input_shape))
    dense_accuracy = prune_script.accuracy(model, variables, splits.test, eval_batch)
    csv_path = workdir / "sweep.csv"
    rows = read_rows(csv_path)
    done = {(r["granularity"], r["criterion"], float(r["sparsity"])) for r in rows}

    for granularity in _GRANULARITIES.value:
        unit_kinds, weight_kinds = pruning.GRANULARITY_KINDS[granularity]
        for criterion in _CRITERIA.value:
            todo = [s for s in sparsities if (granularity, criterion, s) not in done]
            if not todo:
                continue
            prune.criterion = criterion
            score = prune_script.score_fn(prune, model, splits.train)
            start = time.perf_counter()
            unit_scores = score(variables, "unit") if unit_kinds else None
            weight_scores = score(variables, "weight") if weight_kinds else None
            score_seconds = time.perf_counter() - start
            for sparsity in todo:
                units, weights = pruning.masks_by_kind(
                    specs,
                    granularity=granularity,
                    conv_sparsity=sparsity,
                    dense_sparsity=sparsity,
                    unit_scores=unit_scores,
                    weight_scores=weight_scores,
                    scope=prune.scope,
                    min_units=prune.min_units,
                    normalize=prune.normalize,
                )
                mask = pruning.params_mask(specs, variables["params"], units, weight_masks=weights)
                masked = pruning.mask_variables(specs, variables, units, weight_masks=weights)
                before = prune_script.accuracy(model, masked, splits.test, eval_batch)
                point_dir = workdir / "finetune" / f"{granularity}_{criterion}_{sparsity:g}"
                finetune = prune_script.finetune_fn(config, prune, model, splits, point_dir)
                start = time.perf_counter()
                tuned = finetune(masked, mask)
                finetune_seconds = time.perf_counter() - start
                after = prune_script.accuracy(model, tuned, splits.test, eval_batch)
                costs = pruning.total_costs(pruning.masked_costs(model, tuned, mask, input_shape))
                zeros = sum(
                    int(np.sum(np.asarray(tuned["params"][s.name]["kernel"]) == 0)) for s in specs
                )
                kernels = sum(int(np.size(tuned["params"][s.name]["kernel"])) for s in specs)
                rows.append(
                    {
                        "granularity": granularity,
                        "criterion": criterion,
                        "sparsity": sparsity,
                        "accuracy_dense": dense_accuracy,
                        "accuracy_before_finetune": before,
                        "accuracy_after_finetune": after,
                        "params": costs["params"],
                        "params_dense": dense_costs["params"],
                        "flops": costs["flops"],
                        "flops_dense": dense_costs["flops"],
                        "kernel_sparsity": zeros / kernels,
                        "score_seconds": score_seconds,
                        "finetune_seconds": finetune_seconds,
                    }
                )
                write_rows_atomic(csv_path, rows)
                print(
                    f"{granularity:6s} {criterion:13s} sparsity {sparsity:.2f}: accuracy "
                    f"{before:.4f} -> {after:.4f} (dense {dense_accuracy:.4f}), FLOPs "
                    f"{costs['flops']}/{dense_costs['flops']}",
                    flush=True,
                )
        plot(rows, granularity, workdir / f"sweep_{granularity}.png")
    print(f"rows in {csv_path}", flush=True)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
