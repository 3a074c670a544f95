"""Mixed-precision quantization experiment: bit allocation strategies x budgets, PTQ and QAT.

Settings are the ``config.quantize`` section (:func:`defaults`; the fine-tuning learning rate
defaults to a tenth of ``config.optimizer.learning_rate``, cosine-decayed; ``backend`` picks the
quantized ops: ``"aqt"`` (default) or ``"qwix"``, same numerics). For every budget
(average bits per weight) and strategy it allocates bits per layer, evaluates post-training
quantization (float weights), fine-tunes the quantized model (QAT; allocations that coincide share
one fine-tuning), exports the integers plus scales with orbax and measures the files, and checks
that the integer model scores as the fake-quantized one. Exact zeros in kernels (pruned weights)
stay zero through fine-tuning. The fine-tuning follows ``config.finetune``
(``xaijax.experiments.recipe``); its distillation teacher is the float (unquantized) model the
stage starts from, and ``results.json`` records the options that are on (``finetune``).

Each allocation is a unit of work in ``workdir/allocations/<allocation>`` (``result.json``, the
fine-tuning checkpoints under ``finetune/`` and the integer export under ``export/``), tied to the
fingerprint of what determines it (:func:`allocation_fingerprint`): a rerun reuses it or resumes
its fine-tuning when the inputs are the same, and recomputes it when they changed; the DeepLIFT
scores and Hessian traces behind the allocations are kept the same way in ``workdir/scores``
(``qat.scores``). The integer
model must score exactly as the fake-quantized one (weight-only quantization); a mismatch raises
:class:`ExportMismatchError`. Writes ``results.json``
(atomically, after every run), ``results.csv``, ``results.md`` and the plots
``bits_per_layer_b<budget>.png`` and ``accuracy_vs_size_{ptq,qat}.png``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from etils import epath
from ml_collections import config_dict

from xaijax import checkpoint, data, provenance, report
from xaijax.experiments import common, layers, qat, recipe, stage
from xaijax.quantization import (
    STRATEGIES,
    SUPPORTED_BITS,
    allocate_bits,
    allocation_bits,
    budget_in_bits,
    deeplift_sensitivity,
    dequantize,
    directory_size,
    export_integer_model,
    get_strategy,
    hessian_sensitivity,
    layer_importance,
    layer_sizes,
    model_size_bytes,
    save_integer_model,
)

#: ``quantize`` fields that only locate the starting point (its variables digest stands for them).
STARTING_POINT_FIELDS = common.STARTING_POINT_FIELDS
#: Fields added after results were cached, at the value that computes what they computed before:
#: fingerprints leave them out at that value (``common.plain``).
NEUTRAL_FIELDS = {"backend": "aqt"}
SUMMARY_COLUMNS = ("strategy", "budget", "avg_bits", "ptq_accuracy", "qat_accuracy", "disk_bytes")


def defaults() -> ml_collections.ConfigDict:
    """Every ``config.quantize`` field and its default (the QAT fields: ``qat.defaults``)."""
    return ml_collections.ConfigDict(
        {
            "strategies": STRATEGIES,
            "budgets": (3.0, 4.0, 6.0),
            "bit_choices": SUPPORTED_BITS,
            "activation_bits": config_dict.placeholder(int),
            "pack_export": True,
            **qat.defaults(),
        }
    )


def validate(q: ml_collections.ConfigDict) -> None:
    """Raise ``ValueError`` naming the first bad ``config.quantize`` field (before any work)."""
    if not q.strategies:
        raise ValueError("config.quantize.strategies is empty")
    for name in q.strategies:
        get_strategy(name)  # raises naming the registered strategies
    if not q.budgets:
        raise ValueError("config.quantize.budgets is empty")
    probe = {"layer": 1}
    for budget in q.budgets:
        budget_in_bits(float(budget), probe, tuple(q.bit_choices))  # raises on a bad budget
    qat.validate(q, "quantize", q.activation_bits)


def sensitivities(
    config: ml_collections.ConfigDict,
    q: ml_collections.ConfigDict,
    model: nn.Module,
    variables: Mapping[str, Any],
    train_ds: data.Dataset,
    names: list[str],
    directory: epath.Path,
) -> dict[str, Any]:
    """DeepLIFT weight importance, layer importance, Hessian traces and both sensitivity tables
    (the scores kept in ``directory`` for a resumed run, ``qat.scores``)."""
    choices = tuple(q.bit_choices)
    found = qat.scores(config, q, model, variables, train_ds, names, directory)
    scores, traces = found["deeplift"], found["traces"]
    return {
        "layer_importance": layer_importance(scores),
        "hessian_traces": traces,
        "deeplift_sensitivity": deeplift_sensitivity(variables["params"], scores, choices),
        "hessian_sensitivity": hessian_sensitivity(variables["params"], traces, choices),
        "seconds": found["seconds"],
    }


class ExportMismatchError(RuntimeError):
    """The exported integer model does not score as the fake-quantized model it was taken from."""


def allocation_key(bits: dict[str, int], activation_bits: int | None) -> str:
    key = "w" + "-".join(str(b) for b in bits.values())
    return key if activation_bits is None else f"{key}_a{activation_bits}"


#: QAT's learning rate under ``config.quantize`` (``xaijax.experiments.qat.learning_rate``).
qat_learning_rate = qat.learning_rate


def allocation_fingerprint(
    config: ml_collections.ConfigDict,
    q: ml_collections.ConfigDict,
    model: nn.Module,
    start_digest: str,
    bits: dict[str, int],
) -> provenance.Fingerprint:
    """What determines one allocation's PTQ, QAT and export (``qat.allocation_fingerprint``):
    besides the bits, the activation bits, backend (left out at its neutral ``"aqt"``) and
    packing."""
    return qat.allocation_fingerprint(
        "quantize",
        config,
        q,
        model,
        start_digest,
        bits,
        activation_bits=q.activation_bits,
        **common.plain({"backend": q.backend}, neutral=NEUTRAL_FIELDS),
        pack_export=q.pack_export,
    )


def run_one(
    config: ml_collections.ConfigDict,
    q: ml_collections.ConfigDict,
    model: nn.Module,
    variables: Mapping[str, Any],
    splits: data.Splits,
    bits: dict[str, int],
    unit_dir: epath.Path,
    unit: provenance.Fingerprint,
) -> dict[str, Any]:
    """PTQ, QAT, export and the integer-model check for one allocation, in ``unit_dir`` (claimed
    for ``unit`` by the caller; a finished allocation is read back, not recomputed)."""
    key = allocation_key(bits, q.activation_bits)
    qmodel = layers.quantized(model, bits, activation_bits=q.activation_bits, backend=q.backend)
    eval_batch = config.train.eval_batch_size

    def compute(timer: common.Timer) -> dict[str, Any]:
        ptq, tuned, trained = qat.evaluate_and_finetune(
            config,
            q,
            qmodel,
            splits,
            variables,
            timer=timer,
            before_phase="ptq",
            workdir=unit_dir / "finetune",
            unit=unit,
            mask=common.zero_mask(variables["params"]),
            teacher=(model, variables),
        )
        with timer.phase("export"):
            exported = export_integer_model(tuned, bits, pack=q.pack_export)
            disk_bytes = save_integer_model(unit_dir / "export", exported)
            integer = common.evaluate_test(model, dequantize(exported), splits, eval_batch)
        if q.activation_bits is None and integer["accuracy"] != trained["accuracy"]:
            raise ExportMismatchError(
                f"allocation {key}: the exported integer model scores {integer['accuracy']:.6f} "
                f"but the fake-quantized model {trained['accuracy']:.6f}"
            )
        return {
            "ptq_accuracy": ptq["accuracy"],
            "ptq_loss": ptq["loss"],
            "qat_accuracy": trained["accuracy"],
            "qat_loss": trained["loss"],
            "integer_accuracy": integer["accuracy"],
            "disk_bytes": disk_bytes,
            "allocation": key,
        }

    return qat.cached_result(unit_dir, unit, compute)


def write_outputs(workdir: epath.Path, results: dict[str, Any]) -> None:
    checkpoint.write_json_atomic(workdir / "results.json", results)
    runs = results["runs"]
    if not runs:
        return
    names = list(results["layer_sizes"])
    rows = [
        {
            "strategy": r["strategy"],
            "budget": r["budget"],
            "avg_bits": r["avg_bits"],
            **{f"bits_{n}": r["bits"][n] for n in names},
            "total_kb": r["size"]["total"] / 1024,
            "disk_kb": r["disk_bytes"] / 1024,
            "ptq_acc": r["ptq_accuracy"],
            "qat_acc": r["qat_accuracy"],
            "int_acc": r["integer_accuracy"],
        }
        for r in runs
    ]
    report.write_csv_atomic(workdir / "results.csv", rows)
    float_row = results["float"]
    header = (
        f"Float model: accuracy {float_row['accuracy']:.4f}, "
        f"{float_row['bytes'] / 1024:.1f} KiB, {float_row['disk_bytes'] / 1024:.1f} KiB on disk\n\n"
    )
    report.write_text_atomic(workdir / "results.md", header + report.markdown_table(rows))
    for budget in sorted({r["budget"] for r in runs}):
        groups = {r["strategy"]: r["bits"] for r in runs if r["budget"] == budget}
        report.grouped_bar_plot(
            workdir / f"bits_per_layer_b{budget:g}.png",
            groups,
            ylabel="weight bits",
            title=f"Bits per layer at {budget:g} average bits",
        )
    for phase in ("ptq", "qat"):
        qat.plot_by_strategy(
            workdir / f"accuracy_vs_size_{phase}.png",
            runs,
            x=lambda r: r["size"]["total"] / 1024,
            y=f"{phase}_accuracy",
            xlabel="model size (KiB: packed kernels + float32 scales and biases)",
            ylabel=f"test accuracy ({phase.upper()})",
            title=f"Accuracy vs size ({phase.upper()}); float: {float_row['accuracy']:.4f}",
        )


@common.stage_run("quantize", defaults, validate)
def run(config: ml_collections.ConfigDict, start: common.Start) -> dict[str, Any]:
    """Every strategy at every budget; returns the results (also in ``results.json``)."""
    q, finetune_recipe, workdir, model, variables, splits, _ = start
    names = [spec.name for spec in layers.specs(model, splits.train.images.shape[1:])]
    sizes = layer_sizes(variables["params"], names)
    float_eval = common.evaluate_test(model, variables, splits, config.train.eval_batch_size)
    checkpoint.save_variables(workdir / "export" / "float32", variables)
    n_params = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(variables["params"]))
    logging.info("float model: test accuracy %.4f", float_eval["accuracy"])

    tables = sensitivities(config, q, model, variables, splits.train, names, workdir / "scores")
    start_digest = provenance.variables_digest(variables)
    policy = common.resume_policy(config)
    recomputed: dict[str, list[str]] = {}
    results: dict[str, Any] = {
        "float": {
            "accuracy": float_eval["accuracy"],
            "loss": float_eval["loss"],
            "bytes": 4 * n_params,
            "disk_bytes": directory_size(workdir / "export" / "float32"),
        },
        "layer_sizes": sizes,
        **jax.tree.map(lambda x: x.tolist() if hasattr(x, "tolist") else x, tables),
        "runs": [],
        "quantize": q.to_dict(),
        "finetune": finetune_recipe,
    }
    for budget in q.budgets:
        for strategy in q.strategies:
            bits = allocate_bits(
                strategy,
                sizes,
                float(budget),
                table=tables.get(get_strategy(strategy).needs),
                bit_choices=tuple(q.bit_choices),
            )
            key = allocation_key(bits, q.activation_bits)
            unit = allocation_fingerprint(config, q, model, start_digest, bits)
            unit_dir = workdir / "allocations" / key
            found = provenance.claim(
                unit_dir, unit, what=f"the allocation {key} in {workdir}", policy=policy
            )
            if found.status == "recomputed":
                recomputed[key] = list(found.changed)
            outcome = run_one(config, q, model, variables, splits, bits, unit_dir, unit)
            run = {
                "strategy": strategy,
                "budget": float(budget),
                "bits": bits,
                "avg_bits": allocation_bits(bits, sizes) / sum(sizes.values()),
                "size": model_size_bytes(variables["params"], bits),
                **outcome,
            }
            results["runs"].append(run)
            results["recomputed"] = recomputed
            write_outputs(workdir, results)
            logging.info(
                "budget %g %s bits=%s PTQ %.4f QAT %.4f (%.1f KiB)",
                budget,
                strategy,
                bits,
                run["ptq_accuracy"],
                run["qat_accuracy"],
                run["size"]["total"] / 1024,
            )
    results["table"] = report.markdown_table(results["runs"], SUMMARY_COLUMNS)
    return results


STAGE = stage.register(
    stage.Stage(
        "quantize",
        defaults,
        validate,
        run,
        fingerprint=recipe.with_recipe(
            stage.section_fingerprint("quantize", STARTING_POINT_FIELDS, NEUTRAL_FIELDS)
        ),
    )
)
