"""The artifact of a finished pipeline: which compressed model it holds, and exporting it.

The artifact holds the pipeline's final compressed model, chosen by :func:`choose_source`:

1. with a ``quantize`` stage: the integer export of one of its allocations, the one with the best
   test accuracy of the integer model (ties: the smaller) among the strategies of the carried
   criterion (``strategy.startswith(config.compress.carry)``, as in the report; every strategy when
   none matches), or the given ``strategy`` / ``budget``. Its model is the one the quantize stage
   started from, physically shrunk when pruning was structured. Only weights are quantized in the
   artifact: with ``config.quantize.activation_bits`` set, it reproduces the integer model's
   accuracy (``integer_accuracy``), not the activation-quantized one;
2. else, with a ``prune`` stage: the carried criterion's pruned (shrunk) float model;
3. else the float baseline.

The ``share`` stage keeps no weight-shared variables, so it is not a source; shared weights can
be exported with :func:`xaijax.artifact.encode_shared`.
"""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import ml_collections
from etils import epath

from xaijax import data, experiments, paths, report, training
from xaijax.artifact.encoding import Encoded, encode_float, encode_integer
from xaijax.artifact.writer import disk_bytes, write
from xaijax.experiments import common
from xaijax.quantization import load_integer_model


def choose_source(
    results: Mapping[str, Any],
    carry: str,
    *,
    strategy: str | None = None,
    budget: float | None = None,
) -> dict[str, Any]:
    """The compressed model of pipeline ``results`` the artifact holds (module docstring)."""
    runs = list(results.get("quantize", {}).get("runs", []))
    if not runs:
        if strategy is not None or budget is not None:
            raise ValueError("a strategy or budget was given but the results hold no quantize runs")
        if "prune" in results:
            accuracy = results["prune"][carry]["accuracy"]["after_finetune"]
            return {"stage": "prune", "criterion": carry, "accuracy": accuracy}
        return {"stage": "baseline", "accuracy": results["baseline"]["accuracy"]}
    if strategy is not None:
        chosen = [r for r in runs if r["strategy"] == strategy]
        if not chosen:
            names = sorted({r["strategy"] for r in runs})
            raise ValueError(f"no quantize run of strategy {strategy!r}; the runs have {names}")
    else:
        chosen = [r for r in runs if r["strategy"].startswith(carry)] or runs
    if budget is not None:
        chosen = [r for r in chosen if r["budget"] == float(budget)]
        if not chosen:
            raise ValueError(f"no quantize run at budget {budget:g} for the chosen strategies")
    best = max(chosen, key=lambda r: (r["integer_accuracy"], -r["size"]["total"]))
    return {
        "stage": "quantize",
        "strategy": best["strategy"],
        "budget": best["budget"],
        "allocation": best["allocation"],
        "bits": dict(best["bits"]),
        "accuracy": best["integer_accuracy"],
    }


def encode_source(
    source: Mapping[str, Any], workdir: epath.PathLike, variables: Mapping[str, Any]
) -> Encoded:
    """The packed weights of ``source``: the quantize stage's integer export, else ``variables``
    (the carried float model) as they are."""
    if source["stage"] != "quantize":
        return encode_float(variables)
    path = epath.Path(workdir) / "quantize" / "allocations" / source["allocation"] / "export"
    if not path.is_dir():
        raise ValueError(
            f"the integer export of allocation {source['allocation']} is missing: {path}"
        )
    return encode_integer(load_integer_model(path))


def carried_model(
    config: ml_collections.ConfigDict, workdir: epath.PathLike, stages: Sequence[str], carry: str
) -> tuple[nn.Module, dict[str, Any]]:
    """The model and variables a finished pipeline carried to its last stage: the baseline,
    then each stage's ``load_result`` (pruning's shrunk model of criterion ``carry``)."""
    workdir = epath.Path(workdir)
    model = training.model_from_config(config)
    variables = common.load_variables(workdir / "baseline" / "variables")
    for name in stages:
        spec = experiments.get_stage(name)
        if spec.load_result is not None:
            stage_dir = workdir / name / (carry if spec.varies else "")
            model, variables = spec.load_result(model, stage_dir)
    return model, variables


def _relative_name(path: epath.Path, root: epath.Path) -> str:
    """``path`` relative to ``root`` when inside it (local paths with links resolved), else
    ``path`` (absolute when local)."""
    if paths.is_local(path) and paths.is_local(root):
        path, root = pathlib.Path(path).resolve(), pathlib.Path(root).resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def export_final(
    workdir: epath.PathLike,
    results: Mapping[str, Any],
    *,
    carry: str,
    model: nn.Module,
    variables: Mapping[str, Any],
    test: data.Dataset,
    batch_size: int = 256,
    strategy: str | None = None,
    budget: float | None = None,
    out: epath.PathLike | None = None,
) -> dict[str, Any]:
    """Write the artifact of the pipeline in ``workdir`` (default ``<workdir>/artifact``) from
    its ``results`` and carried ``model`` / ``variables``; returns its summary: the source, the
    accuracy the artifact measured on ``test``, the computed size and the sizes on disk."""
    workdir = epath.Path(workdir)
    source = choose_source(results, carry, strategy=strategy, budget=budget)
    encoded = encode_source(source, workdir, variables)
    out = workdir / "artifact" if out is None else epath.Path(out)
    manifest = write(
        out,
        functools.partial(model.apply, train=False),
        encoded,
        input_shape=test.images.shape[1:],
        test=(test.images, test.labels),
        batch_size=batch_size,
        metadata={"model": results.get("model"), "dataset": results.get("dataset"), **source},
    )
    return {
        "path": _relative_name(out, workdir),
        "encoding": encoded.kind,
        "source": source,
        "accuracy": manifest["accuracy"],
        "source_accuracy": source["accuracy"],
        "computed_bytes": manifest["size"]["computed_bytes"],
        "weights_bytes": manifest["size"]["weights_bytes"],
        "disk_bytes": disk_bytes(out),
    }


def describe(source: Mapping[str, Any]) -> str:
    """A short name of an artifact's source, for reports."""
    if source["stage"] == "quantize":
        return f"{source['strategy']} {source['budget']:g} bits ({source['allocation']})"
    if source["stage"] == "prune":
        return f"pruned ({source['criterion']})"
    return "baseline (float32)"


def report_lines(entry: Mapping[str, Any]) -> list[str]:
    """The report's "Deployable artifact" section for an :func:`export_final` summary."""
    row = {
        "artifact": entry["path"],
        "holds": describe(entry["source"]),
        "weights": entry["encoding"],
        "accuracy": entry["accuracy"],
        "source accuracy": entry["source_accuracy"],
        "computed bytes": round(entry["computed_bytes"]),
        "weights file bytes": entry["weights_bytes"],
        "on disk bytes": entry["disk_bytes"],
    }
    return [
        "## Deployable artifact",
        "",
        "The final compressed model as a `jax.export` program with its packed weights and a "
        "manifest (load it with `xaijax.artifact.load`; no model code or config needed). "
        "`accuracy` is the artifact's own on the test set; `computed` is the stage's size "
        "formula plus 4 bytes per batch-norm statistic; `on disk` counts the program, the "
        "weights file and the manifest.",
        "",
        report.markdown_table([row]),
    ]
