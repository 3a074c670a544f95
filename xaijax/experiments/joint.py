"""Joint pruning and bit allocation experiment: one byte budget, pruning levels and widths chosen
together per layer (``xaijax.quantization.joint``).

Settings are the ``config.joint`` section (:func:`defaults`). For every byte budget (``budgets``:
fractions of the float32 model's bytes, or bytes with ``budget_unit='bytes'``) and strategy

* ``joint_deeplift``: DeepLIFT damage from weight scores (a filter's score: the sum over its
  kernel slice), solved exactly;
* ``joint_hessian``: Hessian-trace damage and saliency masks, solved exactly;
* ``uniform``: one level and one width for every layer (the largest that fits), magnitude masks
  (L1 per filter, ``|w|`` per weight),

it builds the masks and widths, evaluates the masked fake-quantized model (``accuracy_before``),
fine-tunes it with quantization-aware training under ``config.finetune`` (the quantize
experiment's path: ``common.finetune`` on the quantized model, a cosine schedule at a tenth of
the config's learning rate unless ``finetune_learning_rate``, the float model it starts from as
distillation teacher) with the mask kept by ``xaijax.pruning.keep_pruned``, and evaluates again
(``accuracy_after``). Each run records the measured bytes and the solver's bound (both within
the budget), the predicted damage, and the level and width of every layer.

Each allocation is a unit of work in ``workdir/allocations/<key>`` (``result.json`` and the
fine-tuning checkpoints), tied to the fingerprint of what determines it: a rerun reuses or
resumes it under the same inputs. So are the DeepLIFT scores and Hessian traces, in
``workdir/scores`` (``qat.scores``). ``results.json`` (atomic, after every run), ``results.csv``,
``results.md`` and ``accuracy_vs_bytes_{before,after}.png`` are written in ``workdir``. The stage
is not in the default ``config.compress.stages``; list it to run it.
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

from xaijax import checkpoint, data, provenance, pruning, report
from xaijax.experiments import common, layers, qat, recipe, sections, stage
from xaijax.experiments.joint_plans import (
    STRATEGIES,
    allocate,
    allocation_key,
    plan,
    scores,
)
from xaijax.quantization import SUPPORTED_BITS, joint

BUDGET_UNITS = ("fraction", "bytes")
STARTING_POINT_FIELDS = common.STARTING_POINT_FIELDS
SUMMARY_COLUMNS = ("strategy", "budget", "kib", "accuracy_before", "accuracy_after")


def defaults() -> ml_collections.ConfigDict:
    """Every ``config.joint`` field and its default (the QAT fields: ``qat.defaults``)."""
    return ml_collections.ConfigDict(
        {
            "strategies": STRATEGIES,
            "budgets": (0.04, 0.08),
            "budget_unit": "fraction",
            "levels": joint.DEFAULT_LEVELS,
            "bit_choices": SUPPORTED_BITS,
            "prune_classifier": False,
            **qat.defaults(),
        }
    )


def validate(j: ml_collections.ConfigDict) -> None:
    """Raise ``ValueError`` naming the first bad ``config.joint`` field (before any work)."""
    if not j.strategies:
        raise ValueError("config.joint.strategies is empty")
    for name in j.strategies:
        if name not in STRATEGIES:
            raise ValueError(f"config.joint.strategies: unknown {name!r}; choose from {STRATEGIES}")
    sections.check_choice(j, "joint", "budget_unit", BUDGET_UNITS)
    if not j.budgets:
        raise ValueError("config.joint.budgets is empty")
    for budget in j.budgets:
        ok = isinstance(budget, int | float) and not isinstance(budget, bool) and budget > 0
        if not ok or (j.budget_unit == "fraction" and budget > 1):
            limit = "in (0, 1]" if j.budget_unit == "fraction" else "> 0"
            raise ValueError(f"config.joint.budgets must be numbers {limit}, got {budget!r}")
    joint.check_levels(tuple(j.levels), "config.joint.levels")
    if not j.bit_choices:
        raise ValueError("config.joint.bit_choices is empty")
    for bits in j.bit_choices:
        if isinstance(bits, bool) or bits not in SUPPORTED_BITS:
            raise ValueError(f"config.joint.bit_choices: {bits!r} is not one of {SUPPORTED_BITS}")
    if not isinstance(j.prune_classifier, bool):
        raise ValueError("config.joint.prune_classifier must be True or False")
    qat.validate(j, "joint")


def allocation_fingerprint(
    config: ml_collections.ConfigDict,
    j: ml_collections.ConfigDict,
    model: nn.Module,
    start_digest: str,
    bits: dict[str, int],
    mask: Any,
) -> provenance.Fingerprint:
    """What determines one allocation's evaluations and fine-tuning
    (``qat.allocation_fingerprint``): besides the widths, the digest of the mask and the
    backend."""
    return qat.allocation_fingerprint(
        "joint",
        config,
        j,
        model,
        start_digest,
        bits,
        mask=provenance.variables_digest(mask),
        backend=j.backend,
    )


def run_one(
    config: ml_collections.ConfigDict,
    j: ml_collections.ConfigDict,
    model: nn.Module,
    variables: Mapping[str, Any],
    splits: data.Splits,
    masked: Mapping[str, Any],
    mask: Any,
    bits: dict[str, int],
    unit_dir: epath.Path,
    unit: provenance.Fingerprint,
) -> dict[str, Any]:
    """Evaluate, fine-tune (QAT with the mask kept) and evaluate one allocation in ``unit_dir``
    (claimed for ``unit`` by the caller; a finished one is read back)."""
    qmodel = layers.quantized(model, bits, backend=j.backend)

    def compute(timer: common.Timer) -> dict[str, Any]:
        before, tuned, after = qat.evaluate_and_finetune(
            config,
            j,
            qmodel,
            splits,
            masked,
            timer=timer,
            before_phase="evaluate_before",
            workdir=unit_dir / "finetune",
            unit=unit,
            mask=mask,
            teacher=(model, variables),
        )
        leaked = jax.tree.map(
            lambda p, m: float(np.max(np.abs(np.asarray(p) * (1 - np.asarray(m))), initial=0.0)),
            tuned["params"],
            mask,
        )
        return {
            "accuracy_before": before["accuracy"],
            "loss_before": before["loss"],
            "accuracy_after": after["accuracy"],
            "loss_after": after["loss"],
            "max_abs_masked_after": max(jax.tree.leaves(leaked), default=0.0),
        }

    return qat.cached_result(unit_dir, unit, compute)


def write_outputs(workdir: epath.Path, results: dict[str, Any]) -> None:
    """``results.json`` (atomic) and, once there are runs, the table and the two figures."""
    checkpoint.write_json_atomic(workdir / "results.json", results)
    runs = results["runs"]
    if not runs:
        return
    rows = [
        {
            "strategy": r["strategy"],
            "budget": r["budget"],
            "budget_kib": r["budget_bytes"] / 1024,
            "kib": r["bytes"] / 1024,
            "bound_kib": r["bytes_bound"] / 1024,
            **{f"{n}": f"{c['level']:g}/{c['bits']}" for n, c in r["allocation"].items()},
            "accuracy_before": r["accuracy_before"],
            "accuracy_after": r["accuracy_after"],
        }
        for r in runs
    ]
    report.write_csv_atomic(workdir / "results.csv", rows)
    float_row = results["float"]
    header = (
        f"Float model: accuracy {float_row['accuracy']:.4f}, {float_row['bytes'] / 1024:.1f} KiB."
        " Layer cells: pruned fraction / bits.\n\n"
    )
    report.write_text_atomic(workdir / "results.md", header + report.markdown_table(rows))
    for phase in ("before", "after"):
        qat.plot_by_strategy(
            workdir / f"accuracy_vs_bytes_{phase}.png",
            runs,
            x=lambda r: r["bytes"] / 1024,
            y=f"accuracy_{phase}",
            xlabel="model size (KiB: kept kernels at their widths, presence bits, float32 rest)",
            ylabel=f"test accuracy ({phase} fine-tuning)",
            title=f"Joint pruning + bits, {phase} fine-tuning; float {float_row['accuracy']:.4f}",
        )


@common.stage_run("joint", defaults, validate)
def run(config: ml_collections.ConfigDict, start: common.Start) -> dict[str, Any]:
    """Every strategy at every budget; returns the results (also in ``results.json``)."""
    j, finetune_recipe, workdir, model, variables, splits, _ = start
    specs = layers.specs(model, splits.train.images.shape[1:])
    params = variables["params"]
    exclude = () if j.prune_classifier else pruning.default_exclude(specs)
    geometry = joint.layer_geometry(specs, params, exclude=exclude)
    costs = joint.cost_table(geometry, tuple(j.levels), tuple(j.bit_choices))
    fixed = joint.fixed_bits(specs, params)
    float_bytes = joint.float_model_bytes(params)
    float_eval = common.evaluate_test(model, variables, splits, config.train.eval_batch_size)
    inputs = scores(config, j, model, variables, splits.train, list(geometry), workdir / "scores")
    start = provenance.variables_digest(variables)
    policy = common.resume_policy(config)
    results: dict[str, Any] = {
        "float": {**float_eval, "bytes": float_bytes},
        "geometry": {name: g._asdict() for name, g in geometry.items()},
        "fixed_bytes": fixed / 8,
        "score_seconds": inputs["seconds"],
        "runs": [],
        "joint": j.to_dict(),
        "finetune": finetune_recipe,
    }
    plans = {strategy: plan(strategy, j, params, geometry, inputs) for strategy in j.strategies}
    for budget in j.budgets:
        budget_bytes = float(budget) * (float_bytes if j.budget_unit == "fraction" else 1.0)
        for strategy in j.strategies:
            found = allocate(
                strategy,
                plans[strategy],
                budget_bytes,
                j=j,
                specs=specs,
                variables=variables,
                geometry=geometry,
                costs=costs,
                fixed=fixed,
            )
            key = allocation_key(strategy, found.choices)
            unit = allocation_fingerprint(config, j, model, start, found.bits, found.mask)
            unit_dir = workdir / "allocations" / key
            provenance.claim(unit_dir, unit, what=f"the allocation {key}", policy=policy)
            outcome = run_one(
                config,
                j,
                model,
                variables,
                splits,
                found.masked,
                found.mask,
                found.bits,
                unit_dir,
                unit,
            )
            size = found.size
            results["runs"].append(
                {
                    "strategy": strategy,
                    "budget": float(budget),
                    "budget_bytes": budget_bytes,
                    "bytes": size["total"] / 8,
                    "kib": size["total"] / 8192,
                    "bytes_bound": found.bound / 8,
                    "capacity_bytes": found.capacity / 8,
                    "size_bits": size,
                    "predicted_damage": found.predicted_damage,
                    "allocation": {n: c._asdict() for n, c in found.choices.items()},
                    "nonzero_params": pruning.nonzero_count(found.masked["params"]),
                    "key": key,
                    **outcome,
                }
            )
            write_outputs(workdir, results)
            logging.info(
                "joint %s at %.1f KiB: %.1f KiB, accuracy %.4f -> %.4f",
                strategy,
                budget_bytes / 1024,
                size["total"] / 8192,
                outcome["accuracy_before"],
                outcome["accuracy_after"],
            )
    results["table"] = report.markdown_table(results["runs"], SUMMARY_COLUMNS)
    write_outputs(workdir, results)
    return results


STAGE = stage.register(
    stage.Stage(
        "joint",
        defaults,
        validate,
        run,
        fingerprint=recipe.with_recipe(stage.section_fingerprint("joint", STARTING_POINT_FIELDS)),
    )
)
