"""What the two quantization-aware stages (``quantize`` and ``joint``) share: the QAT recipe, the
fingerprint and caching of one allocation, the DeepLIFT scores and Hessian traces (kept for a
resumed run, :func:`scores`), the backend check and the plots.

QAT fine-tunes the fake-quantized model through :func:`xaijax.experiments.common.finetune` with a
cosine schedule at ``finetune_learning_rate`` (default: a tenth of ``config.optimizer``'s rate,
:func:`learning_rate`), the mask of exact zeros kept by ``pruning.keep_pruned`` and the float
model it starts from as distillation teacher. Each allocation is a unit of work in its own
directory whose ``result.json`` is written last (:func:`cached_result`).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import traverse_util
from ml_collections import config_dict

from xaijax import checkpoint, data, importance, models, paths, provenance, report, training
from xaijax.experiments import common, scoring, sections
from xaijax.quantization import get_backend, hutchinson_traces

Variables = Mapping[str, Any]


def defaults() -> dict[str, Any]:
    """The fields every QAT stage's section has: its starting point, the backend, the QAT recipe,
    the DeepLIFT scoring (``importance``, ``xaijax.experiments.scoring``), the Hessian traces and
    the seed (references, balanced examples, Hessian probes)."""
    return {
        **common.starting_point_defaults(),
        "backend": "aqt",
        "finetune_epochs": 2,
        "finetune_learning_rate": config_dict.placeholder(float),  # None: a tenth of training's
        "finetune_batch_size": 128,
        "importance": scoring.defaults(num_examples=1024, batch_size=256),
        "hessian_examples": 1024,
        "hessian_samples": 16,
        "seed": 0,
    }


def validate(
    section: ml_collections.ConfigDict, where: str, activation_bits: int | None = None
) -> None:
    """Raise ``ValueError`` naming the first bad field of :func:`defaults` in ``config.<where>``
    (the backend probed on ``section.bit_choices``)."""
    minimums = {
        "finetune_epochs": 0,
        "seed": 0,
        "finetune_batch_size": 1,
        "hessian_examples": 1,
        "hessian_samples": 1,
    }
    sections.check_integers(section, where, minimums)
    if section.finetune_learning_rate is not None and not section.finetune_learning_rate > 0:
        raise ValueError(f"config.{where}.finetune_learning_rate must be > 0")
    scoring.validate(section.importance, f"{where}.importance")
    check_backend(section, where, activation_bits)


def deeplift_scores(
    section: ml_collections.ConfigDict,
    model: nn.Module,
    variables: Variables,
    train: data.Dataset,
) -> Any:
    """DeepLIFT scores of every weight under ``section.importance`` and ``section.seed``."""
    arguments = scoring.score_arguments(section.importance, train, seed=section.seed)
    return importance.score("deeplift", model, variables, granularity="weight", **arguments)


SCORES_FILE = "scores.json"
DEEPLIFT_SCORES_FILE = "deeplift_scores.npz"


def scores_fingerprint(
    config: ml_collections.ConfigDict,
    section: ml_collections.ConfigDict,
    model: nn.Module,
    start_digest: str,
    names: Sequence[str],
    *,
    deeplift: bool,
    hessian: bool,
) -> provenance.Fingerprint:
    """What determines :func:`deeplift_scores` and :func:`hessian_traces` of the variables of
    digest ``start_digest``: the model, the data, the layers, the seed and the settings of the
    scores asked for."""
    return provenance.fingerprint(
        unit="scores",
        model=provenance.model_identity(model),
        start=start_digest,
        data=config.data,
        layers=list(names),
        seed=section.seed,
        importance=section.importance.to_dict() if deeplift else None,
        hessian=(
            {"examples": section.hessian_examples, "samples": section.hessian_samples}
            if hessian
            else None
        ),
    )


def scores(
    config: ml_collections.ConfigDict,
    section: ml_collections.ConfigDict,
    model: nn.Module,
    variables: Variables,
    train: data.Dataset,
    names: Sequence[str],
    directory: epath.Path,
    *,
    deeplift: bool = True,
    hessian: bool = True,
) -> dict[str, Any]:
    """``{"deeplift": weight scores, "traces": {layer: tr(H)}, "seconds": {...}}`` of
    ``variables`` (:func:`deeplift_scores` if ``deeplift``, :func:`hessian_traces` over
    ``names`` if ``hessian``, with their wall times), kept in ``directory`` (claimed for
    :func:`scores_fingerprint`): a rerun under the same inputs, such as a resumed stage, reads
    them back bit for bit instead of recomputing them. ``scores.json`` is written last."""
    unit = scores_fingerprint(
        config,
        section,
        model,
        provenance.variables_digest(variables),
        names,
        deeplift=deeplift,
        hessian=hessian,
    )
    provenance.claim(
        directory, unit, what=f"the scores in {directory}", policy=common.resume_policy(config)
    )
    record_file = directory / SCORES_FILE
    if record_file.exists():
        record = json.loads(record_file.read_text())
        keys = record.pop("deeplift_keys")
        if keys is not None:
            with (directory / DEEPLIFT_SCORES_FILE).open("rb") as stream:
                arrays = np.load(stream)
                flat = {tuple(key): arrays[f"a{i}"] for i, key in enumerate(keys)}
            record["deeplift"] = traverse_util.unflatten_dict(flat)
        return record

    found: dict[str, Any] = {"seconds": {}}
    if deeplift:
        started = time.perf_counter()
        found["deeplift"] = jax.device_get(deeplift_scores(section, model, variables, train))
        found["seconds"]["deeplift"] = time.perf_counter() - started
    if hessian:
        started = time.perf_counter()
        found["traces"] = hessian_traces(section, model, variables, train, names)
        found["seconds"]["hessian"] = time.perf_counter() - started
    record = {key: value for key, value in found.items() if key != "deeplift"}
    record["deeplift_keys"] = None
    if deeplift:
        flat = traverse_util.flatten_dict(found["deeplift"])
        buffer = io.BytesIO()
        np.savez(buffer, **{f"a{i}": np.asarray(leaf) for i, leaf in enumerate(flat.values())})
        paths.write_bytes_atomic(directory / DEEPLIFT_SCORES_FILE, buffer.getvalue())
        record["deeplift_keys"] = [list(key) for key in flat]
    checkpoint.write_json_atomic(record_file, record)
    return found


def learning_rate(config: ml_collections.ConfigDict, section: ml_collections.ConfigDict) -> float:
    """``section.finetune_learning_rate``, default a tenth of the config's learning rate."""
    return section.finetune_learning_rate or float(config.optimizer.learning_rate) / 10


def finetune_settings(
    config: ml_collections.ConfigDict, section: ml_collections.ConfigDict
) -> dict[str, Any]:
    """``common.finetune_settings`` of QAT under ``section`` (cosine schedule)."""
    return common.finetune_settings(
        config,
        epochs=section.finetune_epochs,
        learning_rate=learning_rate(config, section),
        batch_size=section.finetune_batch_size,
        schedule="cosine",
    )


def allocation_fingerprint(
    unit: str,
    config: ml_collections.ConfigDict,
    section: ml_collections.ConfigDict,
    model: nn.Module,
    start_digest: str,
    bits: Mapping[str, int],
    **extra: Any,
) -> provenance.Fingerprint:
    """What determines one allocation's evaluations and QAT: the model, the digest of the
    variables it starts from, the data, the widths, the QAT settings and the stage's ``extra``
    inputs (backend, mask, ...)."""
    return provenance.fingerprint(
        unit=unit,
        model=provenance.model_identity(model),
        start=start_digest,
        data=config.data,
        bits=dict(bits),
        **extra,
        finetune=finetune_settings(config, section),
    )


def finetune(
    config: ml_collections.ConfigDict,
    section: ml_collections.ConfigDict,
    qmodel: nn.Module,
    splits: data.Splits,
    variables: Variables,
    *,
    workdir: epath.Path,
    unit: provenance.Fingerprint,
    mask: Any,
    teacher: tuple[nn.Module, Variables],
) -> dict:
    """Quantization-aware fine-tuning of ``variables`` in ``qmodel`` (resumable in ``workdir``,
    tied to ``unit``), with ``mask``'s zeros kept and ``teacher`` for distillation."""
    return common.finetune(
        config,
        qmodel,
        splits,
        variables,
        workdir=workdir,
        unit=unit,
        epochs=section.finetune_epochs,
        learning_rate=learning_rate(config, section),
        batch_size=section.finetune_batch_size,
        schedule="cosine",
        mask=mask,
        teacher=teacher,
    )


def evaluate_and_finetune(
    config: ml_collections.ConfigDict,
    section: ml_collections.ConfigDict,
    qmodel: nn.Module,
    splits: data.Splits,
    start: Variables,
    *,
    timer: common.Timer,
    before_phase: str,
    workdir: epath.Path,
    unit: provenance.Fingerprint,
    mask: Any,
    teacher: tuple[nn.Module, Variables],
) -> tuple[dict[str, Any], dict, dict[str, Any]]:
    """``(before, tuned, after)``: the test metrics of ``qmodel`` on ``start`` (timed as
    ``before_phase``), the variables :func:`finetune` leaves and their test metrics (both timed
    as ``qat``)."""
    eval_batch = config.train.eval_batch_size
    with timer.phase(before_phase):
        before = common.evaluate_test(qmodel, start, splits, eval_batch)
    with timer.phase("qat"):
        tuned = finetune(
            config,
            section,
            qmodel,
            splits,
            start,
            workdir=workdir,
            unit=unit,
            mask=mask,
            teacher=teacher,
        )
        after = common.evaluate_test(qmodel, tuned, splits, eval_batch)
    return before, tuned, after


def cached_result(
    unit_dir: epath.Path,
    unit: provenance.Fingerprint,
    compute: Callable[[common.Timer], dict[str, Any]],
) -> dict[str, Any]:
    """``unit_dir/result.json`` when the unit finished (the caller claimed ``unit_dir`` for
    ``unit``), else ``compute(timer)`` plus its phases' ``seconds``, stamped with ``unit`` and
    written atomically."""
    done = unit_dir / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    timer = common.Timer()
    result = compute(timer)
    result = provenance.stamp({**result, "seconds": timer.seconds}, unit)
    checkpoint.write_json_atomic(done, result)
    return result


def hessian_traces(
    section: ml_collections.ConfigDict,
    model: nn.Module,
    variables: Variables,
    train: data.Dataset,
    names: Sequence[str],
) -> dict[str, Any]:
    """Hutchinson estimates of ``tr(H_l)`` of every layer ``l`` in ``names``, with ``H`` the
    Hessian of the mean cross-entropy of the first ``section.hessian_examples`` training
    examples with respect to the kernels, over ``section.hessian_samples`` Rademacher probes
    drawn from ``section.seed``."""
    count = min(section.hessian_examples, train.num_examples)
    images, labels = jnp.asarray(train.images[:count]), jnp.asarray(train.labels[:count])
    others = {k: v for k, v in variables.items() if k != "params"}

    def loss_fn(params: Any) -> jax.Array:
        logits = model.apply({"params": params, **others}, images, **models.inference_kwargs(model))
        return jnp.mean(training.cross_entropy(logits, labels))

    return hutchinson_traces(
        loss_fn,
        variables["params"],
        list(names),
        jax.random.key(section.seed),
        section.hessian_samples,
    )


def check_backend(
    section: ml_collections.ConfigDict, where: str, activation_bits: int | None = None
) -> None:
    """Raise ``ValueError`` naming ``config.<where>.backend`` when it is unknown or cannot run
    a width of ``section.bit_choices`` (probed on both layer kinds)."""
    try:
        backend = get_backend(section.backend)
        for kind in ("conv", "dense"):
            for bits in section.bit_choices:
                backend.layer_kwargs(kind, bits, activation_bits)
    except ValueError as error:
        raise ValueError(f"config.{where}.backend={section.backend!r}: {error}") from error


def plot_by_strategy(
    path: epath.Path,
    runs: Sequence[Mapping[str, Any]],
    *,
    x: Callable[[Mapping[str, Any]], float],
    y: str,
    xlabel: str,
    ylabel: str,
    title: str,
) -> epath.Path:
    """One line per strategy of ``runs``: ``y`` against ``x(run)``."""
    series = {}
    for strategy in dict.fromkeys(r["strategy"] for r in runs):
        mine = [r for r in runs if r["strategy"] == strategy]
        series[strategy] = ([x(r) for r in mine], [r[y] for r in mine])
    return report.line_plot(path, series, xlabel=xlabel, ylabel=ylabel, title=title)
