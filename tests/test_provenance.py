"""Cached results are reused only under the fingerprint that produced them.

Unit tests of ``xaijax.provenance``, then one test per experiment kind (baseline, prune run, prune
sweep, weight sharing, quantization): a rerun in the same workdir with a changed field reports
exactly the rows of a fresh run of the new config, and ``config.resume='strict'`` refuses,
naming the field.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xaijax import data, importance, provenance, training
from xaijax.experiments import common
from xaijax.experiments import prune as prune_experiment
from xaijax.experiments import quantize as quantize_experiment
from xaijax.experiments import share as share_experiment
from xaijax.experiments import sweep as sweep_experiment

REPO = Path(__file__).resolve().parents[1]
TINY_WIDTHS = {"conv1": 4, "conv2": 4, "conv3": 8, "conv4": 8, "fc1": 16}


# ------------------------------------------------------------------------------------------------
# The mechanism


def test_digest_changes_with_any_input_and_only_then():
    base = provenance.fingerprint(a=1, nested={"b": (1, 2), "c": "x"})
    assert base.digest == provenance.fingerprint(nested={"c": "x", "b": [1, 2]}, a=1).digest
    for other in (
        provenance.fingerprint(a=2, nested={"b": (1, 2), "c": "x"}),
        provenance.fingerprint(a=1, nested={"b": (1, 3), "c": "x"}),
        provenance.fingerprint(a=1, nested={"b": (1, 2), "c": "x", "d": None}),
        provenance.fingerprint(a=1.0000001, nested={"b": (1, 2), "c": "x"}),
    ):
        assert other.digest != base.digest
    assert base.inputs["nested.b"] == [1, 2]


def test_changed_fields_and_extend():
    old = {"a": 1, "b": 2, "gone": 0}
    new = {"a": 1, "b": 3, "added": 4}
    assert provenance.changed_fields(old, new) == ["added", "b", "gone"]
    fp = provenance.fingerprint(a=1)
    assert fp.extend(b=2).inputs == {**fp.inputs, "b": 2}
    assert fp.extend(a=1).digest == fp.digest
    with pytest.raises(ValueError, match="'a'"):
        fp.extend(a=2)


def test_variables_digest_sees_one_changed_weight_and_a_changed_shape():
    variables = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}}
    digest = provenance.variables_digest(variables)
    assert digest == provenance.variables_digest(jax.tree.map(jnp.asarray, variables))
    nudged = {"params": {"w": variables["params"]["w"].copy()}}
    nudged["params"]["w"][1, 2] = np.nextafter(np.float32(5), np.float32(6))
    assert provenance.variables_digest(nudged) != digest
    reshaped = {"params": {"w": variables["params"]["w"].reshape(3, 2)}}
    assert provenance.variables_digest(reshaped) != digest


def test_claim_new_resumed_recomputed_and_strict(tmp_path):
    unit = tmp_path / "unit"
    first = provenance.fingerprint(lr=0.1, epochs=1)
    assert provenance.claim(unit, first, what="unit", policy="recompute").status == "new"
    (unit / "partial.ckpt").write_text("state")
    again = provenance.claim(unit, first, what="unit", policy="recompute")
    assert again.status == "resumed" and (unit / "partial.ckpt").exists()

    second = provenance.fingerprint(lr=0.2, epochs=1)
    with pytest.raises(provenance.StaleResultError, match=r"lr: 0\.1 -> 0\.2"):
        provenance.claim(unit, second, what="unit", policy="strict")
    assert (unit / "partial.ckpt").exists()  # Refused before touching anything.
    found = provenance.claim(unit, second, what="unit", policy="recompute")
    assert found.status == "recomputed" and found.changed == ("lr",)
    assert sorted(p.name for p in unit.iterdir()) == [provenance.FINGERPRINT_FILE]
    assert provenance.recorded_inputs(unit) == dict(second.inputs)
    with pytest.raises(ValueError, match=r"config\.resume"):
        provenance.claim(unit, second, what="unit", policy="sometimes")


@pytest.mark.parametrize("record", [None, "{not json", '{"inputs": 3}'])
def test_files_without_a_valid_record_are_never_trusted(tmp_path, record):
    unit = tmp_path / "unit"
    unit.mkdir()
    (unit / "row.json").write_text("{}")
    if record is not None:
        (unit / provenance.FINGERPRINT_FILE).write_text(record)
    fp = provenance.fingerprint(x=1)
    assert provenance.claim(unit, fp, what="unit", policy="recompute").status == "recomputed"
    assert not (unit / "row.json").exists()


# ------------------------------------------------------------------------------------------------
# Every experiment kind: a changed field never reports an old row


def smoke_config(**sections):
    spec = importlib.util.spec_from_file_location("smoke", REPO / "configs" / "digits_smoke.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.model.widths = TINY_WIDTHS
    config.train.epochs = 1
    for name, fields in sections.items():
        config[name].update(fields)
    return config


@pytest.fixture(scope="module")
def start():
    """The tiny VGG, random variables and the digits splits (no training: bookkeeping tests)."""
    config = smoke_config()
    model = training.model_from_config(config)
    variables = jax.device_get(model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False))
    return model, variables, training.datasets_from_config(config)


def test_baseline_is_retrained_when_a_training_field_changes(tmp_path):
    workdir = tmp_path / "trained"
    config = smoke_config()
    first = common.load_or_train(config, workdir)
    stamp = (workdir / "results.json").stat().st_mtime_ns

    logging_only = smoke_config(train={"log_every_steps": 3, "eval_batch_size": 100})
    reused = common.load_or_train(logging_only, workdir)
    assert (workdir / "results.json").stat().st_mtime_ns == stamp
    jax.tree.map(np.testing.assert_array_equal, reused, first)

    strict = smoke_config(optimizer={"learning_rate": 1e-3})
    strict.resume = "strict"
    with pytest.raises(provenance.StaleResultError, match=r"optimizer\.learning_rate"):
        common.load_or_train(strict, workdir)
    assert (workdir / "results.json").stat().st_mtime_ns == stamp

    changed = smoke_config(optimizer={"learning_rate": 1e-3})
    retrained = common.load_or_train(changed, workdir)
    fresh = common.load_or_train(changed, tmp_path / "fresh")
    jax.tree.map(np.testing.assert_array_equal, retrained, fresh)
    recorded = json.loads((workdir / "results.json").read_text())["config"]["optimizer"]
    assert recorded["learning_rate"] == pytest.approx(1e-3)


def without_timing(rows):
    """Result rows without wall times and bytes on disk: the only fields two identical runs may
    differ in (orbax's OCDBT layout of the integer export is not byte-for-byte reproducible)."""
    drop = {"wall_time_s", "score_time_s", "seconds", "disk_bytes"}
    return [{k: v for k, v in row.items() if k not in drop} for row in rows]


def test_share_rerun_with_a_changed_field_reports_only_new_rows(tmp_path, start):
    model, variables, splits = start
    fields = {"bits": (2,), "importances": ("uniform",), "finetune_epochs": 1}
    first = smoke_config(share=fields)
    kwargs = {"model": model, "variables": variables, "splits": splits}
    old = share_experiment.run(first, tmp_path / "run", **kwargs)

    strict = smoke_config(share={**fields, "finetune_learning_rate": 3e-3})
    strict.resume = "strict"
    with pytest.raises(provenance.StaleResultError, match=r"share\.finetune_learning_rate"):
        share_experiment.run(strict, tmp_path / "run", **kwargs)

    changed = smoke_config(share={**fields, "finetune_learning_rate": 3e-3})
    rerun = share_experiment.run(changed, tmp_path / "run", **kwargs)
    fresh = share_experiment.run(changed, tmp_path / "fresh", **kwargs)
    assert without_timing(rerun["rows"]) == without_timing(fresh["rows"])
    assert rerun["rows"][0]["fingerprint"] != old["rows"][0]["fingerprint"]
    assert rerun["rows"][0]["accuracy_finetuned"] != old["rows"][0]["accuracy_finetuned"]
    assert "share.finetune_learning_rate" in rerun["recomputed"]["uniform_2bit"]


def test_quantize_rerun_with_a_changed_field_reports_only_new_runs(tmp_path, start):
    model, variables, splits = start
    fields = {
        "budgets": (4.0,),
        "strategies": ("uniform",),
        "finetune_epochs": 1,
        "finetune_batch_size": 64,
        "importance": {"num_examples": 32, "batch_size": 32},
        "hessian_examples": 32,
        "hessian_samples": 1,
    }
    kwargs = {"model": model, "variables": variables, "splits": splits}
    old = quantize_experiment.run(smoke_config(quantize=fields), tmp_path / "run", **kwargs)
    changed = smoke_config(quantize={**fields, "finetune_learning_rate": 1e-2})
    rerun = quantize_experiment.run(changed, tmp_path / "run", **kwargs)
    fresh = quantize_experiment.run(changed, tmp_path / "fresh", **kwargs)
    assert without_timing(rerun["runs"]) == without_timing(fresh["runs"])
    assert rerun["runs"][0]["fingerprint"] != old["runs"][0]["fingerprint"]
    assert rerun["recomputed"] == {"w4-4-4-4-4-4": ["finetune.learning_rate"]}


def test_prune_run_rerun_with_a_changed_field_equals_a_fresh_run(tmp_path, start):
    model, variables, splits = start
    fields = {"importance": {"num_examples": 64}, "finetune_epochs": 1, "granularity": "unit"}
    kwargs = {"model": model, "variables": variables, "splits": splits}
    old = prune_experiment.run(smoke_config(prune=fields), tmp_path / "run", **kwargs)
    changed = smoke_config(prune={**fields, "finetune_learning_rate": 5e-3})
    rerun = prune_experiment.run(changed, tmp_path / "run", **kwargs)
    fresh = prune_experiment.run(changed, tmp_path / "fresh", **kwargs)
    assert rerun["fingerprint"] == fresh["fingerprint"] != old["fingerprint"]
    assert rerun["accuracy"] == fresh["accuracy"]
    assert rerun["accuracy"]["after_finetune"] != old["accuracy"]["after_finetune"]


def test_sweep_rerun_with_a_changed_field_reports_only_new_rows(tmp_path, start):
    model, variables, _ = start
    axes = {"criteria": ("magnitude",), "sparsities": (0.5,), "granularities": ("unit",)}
    fields = {"importance": {"num_examples": 64}, "finetune_epochs": 1}
    kwargs = {"model": model, "variables": variables, **axes}
    old = sweep_experiment.sweep(smoke_config(prune=fields), tmp_path / "run", **kwargs)
    changed = smoke_config(prune={**fields, "finetune_learning_rate": 5e-3})
    rerun = sweep_experiment.sweep(changed, tmp_path / "run", **kwargs)
    fresh = sweep_experiment.sweep(changed, tmp_path / "fresh", **kwargs)
    timing = {"score_seconds", "finetune_seconds"}
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]
    assert strip(rerun) == strip(fresh)
    assert rerun[0]["accuracy_after_finetune"] != old[0]["accuracy_after_finetune"]
    assert len(sweep_experiment.read_sweep_rows(tmp_path / "run" / "sweep.csv")) == 1


def test_integer_export_that_scores_differently_is_refused(tmp_path, start, monkeypatch):
    """The quantize experiment itself checks the exported integers score exactly as the
    fake-quantized model (a perturbed dequantization must raise, not be reported)."""
    model, variables, splits = start
    fields = {"budgets": (4.0,), "strategies": ("uniform",), "finetune_epochs": 0}
    fields.update(importance={"num_examples": 32}, hessian_examples=32, hessian_samples=1)
    real = quantize_experiment.dequantize

    def perturbed(exported):
        dequantized = real(exported)
        scale = lambda path, x: -x if jax.tree_util.keystr(path).endswith("['kernel']") else x
        return jax.tree_util.tree_map_with_path(scale, dequantized)

    monkeypatch.setattr(quantize_experiment, "dequantize", perturbed)
    with pytest.raises(quantize_experiment.ExportMismatchError, match="w4-4-4-4-4-4"):
        quantize_experiment.run(
            smoke_config(quantize=fields),
            tmp_path / "run",
            model=model,
            variables=variables,
            splits=splits,
        )


def test_neutral_fields_enter_fingerprints_only_when_they_change_the_computation():
    """A field added after results were cached is left out at its neutral value (so those results
    stay valid) and included at any other value."""
    section = {"bits": 4, "backend": "aqt"}
    assert common.plain(section, neutral={"backend": "aqt"}) == {"bits": 4}
    assert common.plain({**section, "backend": "qwix"}, neutral={"backend": "aqt"}) == {
        "bits": 4,
        "backend": "qwix",
    }
    config = smoke_config()
    q = quantize_experiment.defaults()
    model = training.model_from_config(config)
    bits = {"conv1": 4}
    default = quantize_experiment.allocation_fingerprint(config, q, model, "start", bits)
    assert not any("backend" in key for key in default.inputs)
    q.backend = "reference"
    other = quantize_experiment.allocation_fingerprint(config, q, model, "start", bits)
    assert other.inputs["backend"] == "reference" and other.digest != default.digest
    stage_print = quantize_experiment.STAGE.fingerprint
    with config.unlocked():
        config.quantize = q
    assert "quantize.backend" in stage_print(config, model, "start").inputs
    config.quantize.backend = "aqt"
    assert "quantize.backend" not in stage_print(config, model, "start").inputs


def test_share_importance_exponent_is_neutral_at_one():
    config = smoke_config()
    model = training.model_from_config(config)
    variables = {"params": {"fc": {"kernel": np.ones((2, 2), np.float32)}}}
    section = share_experiment.defaults()
    before = share_experiment.row_fingerprints(config, section, model, variables)
    assert not any("importance_exponent" in k for f in before.values() for k in f.inputs)
    section.importance_exponent = 0.5
    after = share_experiment.row_fingerprints(config, section, model, variables)
    for key, fingerprint in after.items():
        scored = key[1] != share_experiment.UNIFORM
        assert (fingerprint.digest != before[key].digest) == scored, key


def test_prune_scarce_data_scores_the_balanced_examples_and_enters_the_fingerprint(start):
    model, variables, splits = start
    scarce = smoke_config(
        prune={"criterion": "deeplift", "importance": {"examples_per_class": 2}, "seed": 3}
    )
    scores = prune_experiment.score_fn(scarce.prune, model, splits.train)(variables, "unit")
    balanced = data.balanced_subset(splits.train, 2, seed=3)
    expected = importance.score(
        "deeplift", model, variables, balanced, granularity="unit", batch_size=128
    )
    chex.assert_trees_all_close(scores, jax.device_get(expected), rtol=1e-6)
    default = prune_experiment.stage_fingerprint(smoke_config(), model, "s").inputs
    changed = prune_experiment.stage_fingerprint(scarce, model, "s").inputs
    assert "prune.importance.examples_per_class" not in default
    assert changed["prune.importance.examples_per_class"] == 2
