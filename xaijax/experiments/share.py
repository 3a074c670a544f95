"""Weight sharing experiment: importance-weighted k-means or relevance-aware entropy-constrained
(ECQ) assignment per layer, shared-weight fine-tuning.

For every bit width in ``config.share.bits`` and importance in ``config.share.importances``
(``uniform`` = plain k-means, or any criterion of ``xaijax.importance``, e.g. ``magnitude`` = |w|
and ``deeplift`` = mean over examples of |DeepLIFT contribution of the weight|, raised to
``importance_exponent``), each Conv / Dense kernel is clustered into 2^bits shared values
(``xaijax.weight_sharing.cluster_params``), evaluated, fine-tuned with each centroid moved by the
summed gradient of its members (``shared_gradients`` chained before the config's optimizer),
snapped back onto its codebook and evaluated again. Exact zeros in kernels (pruned weights) stay
zero and out of the clustering.

``config.share.assignments`` chooses the clustering of each row: ``kmeans`` (the importance
weights the k-means) and/or ``ecq`` (``weight_sharing.ecq_cluster_params``: entropy-constrained
assignment with a fixed zero centroid, the importance acting as the relevance that sends weights
to zero, ``ecq_lambda`` the entropy multiplier relative to each layer's mean squared weight).
ECQ rows are labelled ``ecq_<importance>`` (their ``importance`` field and directory prefix) and
record ``assignment`` and ``relevance``; their zero-cluster weights are held at exactly zero
during fine-tuning (as pruned weights are), so the zero centroid stays 0.

The fine-tuning follows ``config.finetune`` (``xaijax.experiments.recipe``); its distillation
teacher is the float model the stage starts from, before clustering, and ``results.json``
records the options that are on (``finetune``).

Outputs in ``workdir``: ``results.json`` (atomic), ``results.csv``, ``results.md`` and the plots
``accuracy_vs_bits.png``, ``accuracy_before_finetune_vs_bits.png``, ``accuracy_vs_ratio.png``.
Each (assignment, importance, bits) run lives in ``workdir/<label>_<bits>bit`` (``row.json`` and the
fine-tuning checkpoints under ``finetune/``), tied to the fingerprint of everything that determines
the row (:func:`row_fingerprints`): a rerun reuses finished rows and resumes unfinished fine-tuning
of the same inputs, and recomputes rows whose inputs changed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from ml_collections import config_dict

from xaijax import checkpoint, data, importance, provenance, training, weight_sharing
from xaijax.experiments import common, recipe, scoring, sections, stage
from xaijax.experiments.share_rows import (
    ASSIGNMENTS,
    ECQ,
    KMEANS,
    UNIFORM,
    row_label,
    run_one,
    write_outputs,
)

#: ``share`` fields that only ECQ rows read: left out of every k-means row's fingerprint, and out
#: of the stage's fingerprint when no row uses ECQ, so k-means results keep their fingerprints.
ECQ_FIELDS = ("ecq_lambda",)
#: ``share`` fields that enumerate the rows (each row's own values enter its fingerprint).
SWEEP_FIELDS = ("bits", "importances", "assignments")
#: ``share`` fields that only locate the starting point (its variables digest stands for them).
STARTING_POINT_FIELDS = common.STARTING_POINT_FIELDS
#: Fields added after results were cached, at the value that computes what they computed before:
#: fingerprints leave them out at that value (``common.plain``).
NEUTRAL_FIELDS = {"importance_exponent": 1.0, "importance": scoring.NEUTRAL_FIELDS}
#: ``share`` fields (and sub-sections) read only when an importance criterion scores the weights.
SCORING_FIELDS = ("importance", "importance_exponent")


def defaults() -> ml_collections.ConfigDict:
    """The ``share`` config section and its defaults."""
    return ml_collections.ConfigDict(
        {
            # Where the model comes from: saved variables, else the baseline trained (if absent)
            # in trained_workdir (None: <workdir>/trained).
            **common.starting_point_defaults(),
            # The sweep.
            "bits": (1, 2, 3, 4, 5),
            "importances": (UNIFORM, "magnitude", "deeplift"),
            # Clustering: "kmeans" and/or "ecq" rows for every importance and bit width.
            "assignments": (KMEANS,),
            "init": "linear",
            "max_iters": 30,
            # ECQ entropy multiplier, relative to each layer's mean squared weight. At 0.05 on
            # Laplace-distributed weights, 3 to 5 bits, the zero cluster holds 41-45% of the
            # weights (19-33% at 0), the Huffman-coded indices are 13-26% smaller than
            # k-means' and the squared error grows 1.2x (3 bits) to 3.3x (5 bits); docs/api.md.
            "ecq_lambda": 0.05,
            # How a criterion of importances scores the weights (xaijax.experiments.scoring).
            "importance": scoring.defaults(num_examples=5_000, batch_size=128),
            # k-means weights s_i^p: p = 1 weights by the importance itself, 0.5 by its square
            # root (flatter), 0 ignores it (plain k-means).
            "importance_exponent": 1.0,
            # Draws the k-means initialisation, the references and any balanced examples.
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
    if not share.assignments:
        raise ValueError("config.share.assignments must name at least one assignment")
    for name in share.assignments:
        if name not in ASSIGNMENTS:
            raise ValueError(
                f"config.share.assignments must hold names in {ASSIGNMENTS}, got {name!r}"
            )
    if len(set(share.assignments)) != len(share.assignments):
        raise ValueError(f"config.share.assignments has repeats: {tuple(share.assignments)}")
    lam = share.ecq_lambda
    if isinstance(lam, bool) or not isinstance(lam, int | float) or not 0 <= lam < float("inf"):
        raise ValueError(f"config.share.ecq_lambda must be a finite number >= 0, got {lam!r}")
    sections.check_choice(share, "share", "init", weight_sharing.INITS)
    scoring.validate(share.importance, "share.importance")
    sections.check_integers(share, "share", {"max_iters": 0, "seed": 0, "finetune_epochs": 0})
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
    the criterion ``name``'s scores ``s`` under ``share.importance``, or None for plain k-means."""
    if name == UNIFORM:
        return None
    arguments = scoring.score_arguments(share.importance, train, seed=share.seed)
    scores = importance.score(name, model, variables, granularity="weight", **arguments)
    return jax.tree.map(lambda s: np.power(s, share.importance_exponent), jax.device_get(scores))


def _without(fp: provenance.Fingerprint, fields: set[str]) -> provenance.Fingerprint:
    """``fp`` without the inputs ``fields`` and those of sub-sections named in ``fields``."""
    prefixes = tuple(f"{field}." for field in fields)
    kept = {k: v for k, v in fp.inputs.items() if k not in fields and not k.startswith(prefixes)}
    return provenance.Fingerprint(kept)


def row_fingerprints(
    config: ml_collections.ConfigDict,
    share: ml_collections.ConfigDict,
    model: Any,
    variables: Mapping[str, Any],
) -> dict[tuple[str, str, int], provenance.Fingerprint]:
    """``(assignment, importance, bits) -> fingerprint`` of each row: the model and the digest of
    the variables it starts from, the ``share`` fields the row reads and its fine-tuning settings.
    K-means rows leave out the ECQ fields (their fingerprints are those from before ECQ existed);
    ECQ rows add ``assignment``."""
    base = provenance.fingerprint(
        unit="share",
        model=provenance.model_identity(model),
        start=provenance.variables_digest(variables),
        data=config.data,
        share=common.plain(share, (*STARTING_POINT_FIELDS, *SWEEP_FIELDS), NEUTRAL_FIELDS),
        finetune=common.finetune_settings(
            config,
            epochs=share.finetune_epochs,
            learning_rate=share.finetune_learning_rate,
            batch_size=share.finetune_batch_size,
        ),
    )
    unscored = {f"share.{field}" for field in SCORING_FIELDS}
    ecq_only = {f"share.{field}" for field in ECQ_FIELDS}
    fingerprints = {}
    for assignment in share.assignments:
        for name in share.importances:
            row_base = base if assignment == ECQ else _without(base, ecq_only)
            if name == UNIFORM:
                row_base = _without(row_base, unscored)
            method = {} if assignment == KMEANS else {"assignment": assignment}
            for bits in share.bits:
                fingerprints[assignment, name, bits] = row_base.extend(
                    **method, importance=name, bits=bits
                )
    return fingerprints


def stage_fingerprint(
    config: ml_collections.ConfigDict, model: Any, start_digest: str
) -> provenance.Fingerprint:
    """The stage's fingerprint (``stage.section_fingerprint`` of ``share``), without
    ``assignments`` and the ECQ fields unless a row uses ECQ: as before ECQ existed otherwise."""
    assignments = config.share.get("assignments", defaults().assignments)
    unused = () if ECQ in assignments else ("assignments", *ECQ_FIELDS)
    section = stage.section_fingerprint("share", (*STARTING_POINT_FIELDS, *unused), NEUTRAL_FIELDS)
    return section(config, model, start_digest)


@common.stage_run("share", defaults, validate)
def run(config: ml_collections.ConfigDict, start: common.Start) -> dict[str, Any]:
    """The whole sweep; returns the results dict (also written to ``results.json``)."""
    share, finetune_recipe, workdir, model, variables, splits, _ = start
    mask = common.zero_mask(variables["params"])
    dense = training.evaluate(model, splits.test, config.train.eval_batch_size, variables=variables)
    fingerprints = row_fingerprints(config, share, model, variables)
    policy = common.resume_policy(config)
    run_dirs = {
        (assignment, name, bits): workdir / f"{row_label(assignment, name)}_{bits}bit"
        for assignment, name, bits in fingerprints
    }
    claims = {
        key: provenance.claim(
            run_dirs[key],
            fp,
            what=f"the weight sharing row {run_dirs[key].name} in {workdir}",
            policy=policy,
        )
        for key, fp in fingerprints.items()
    }
    rows = []
    for importance_name in share.importances:
        keys = [
            (assignment, importance_name, bits)
            for assignment in share.assignments
            for bits in share.bits
        ]
        pending = {key for key in keys if not (run_dirs[key] / "row.json").exists()}
        started = time.perf_counter()
        scores = (
            importance_scores(importance_name, share, model, variables, splits.train)
            if pending
            else None
        )
        score_seconds = time.perf_counter() - started
        for key in keys:
            assignment, _, bits = key
            row_path = run_dirs[key] / "row.json"
            if key in pending:
                logging.info("%s, %d bits", run_dirs[key].name, bits)
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
                    run_dirs[key],
                    fingerprints[key],
                    assignment=assignment,
                )
                row["score_time_s"] = score_seconds
                checkpoint.write_json_atomic(row_path, row)
            row = json.loads(row_path.read_text())
            row.setdefault("assignment", KMEANS)  # Rows written before ECQ existed.
            rows.append(row)
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
            run_dirs[key].name: list(found.changed)
            for key, found in claims.items()
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
        fingerprint=recipe.with_recipe(stage_fingerprint),
    )
)
