"""Regime tables and regime / ECQ ablation variants, on rows built by hand (no JAX)."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest
import scipy.stats

from xaijax.study import ablation, regimes, rows_from_results

SEEDS = (0, 1, 2, 3)
SETTING = {"param_budget": 0.1}


def row(seed, method, accuracy, *, stage="prune", setting=SETTING, recipe=None, **extra):
    return {
        "seed": seed,
        "model": "lenet5",
        "dataset": "fashion_mnist",
        "stage": stage,
        "method": method,
        "setting": dict(setting),
        "recipe": dict(recipe or {"finetune_epochs": 2}),
        "accuracy": accuracy,
        "accuracy_before_finetune": None,
        "params": None,
        "nonzero_params": None,
        "flops": None,
        "size_bytes": None,
        **extra,
    }


def regime_row(seed, criterion, accuracy, regime):
    return row(
        seed,
        f"{regime}+{criterion}",
        accuracy,
        recipe={"finetune_epochs": 0},
        regime=regime,
        regime_method=criterion,
    )


ACCURACY = {  # criterion -> per-seed accuracy in the one-shot regime
    "deeplift": [0.61, 0.55, 0.63, 0.58],
    "lrp": [0.60, 0.57, 0.59, 0.52],
    "taylor": [0.50, 0.41, 0.52, 0.49],
    "magnitude": [0.44, 0.46, 0.43, 0.41],
}


def test_regime_rows_label_study_and_variant_rows_into_separate_cells():
    study = [row(s, "deeplift", 0.87) for s in SEEDS] + [
        row(s, "float32", 0.9, stage="baseline", setting={}) for s in SEEDS
    ]
    variants = [regime_row(s, "lrp", 0.5, "oneshot") for s in SEEDS]
    labelled = regimes.regime_rows(study, variants)
    # Baseline rows are left out (no variant ran that stage); the study rows are fine-tuned.
    assert {(r["method"], r["setting"]["regime"]) for r in labelled} == {
        ("deeplift", regimes.STUDY_REGIME),
        ("lrp", "oneshot"),
    }


def test_comparisons_pair_each_explanation_with_the_best_classic_and_deeplift_with_lrp():
    variants = [
        regime_row(s, c, acc[i], "oneshot")
        for c, acc in ACCURACY.items()
        for i, s in enumerate(SEEDS)
    ]
    found = regimes.comparisons(regimes.regime_rows([], variants))
    pairs = {(e["method"], e["against"]): e for e in found}
    # taylor has the higher mean of the two classic criteria; lrp is deeplift's counterpart.
    assert set(pairs) == {("deeplift", "taylor"), ("lrp", "taylor"), ("deeplift", "lrp")}
    for (method, against), entry in pairs.items():
        d = np.subtract(ACCURACY[method], ACCURACY[against])
        low, high = scipy.stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=scipy.stats.sem(d))
        assert entry["mean"] == pytest.approx(d.mean())
        assert (entry["low"], entry["high"]) == pytest.approx((low, high))
        expected = "wins" if low > 0 else "loses" if high < 0 else "ties"
        assert entry["verdict"] == expected
    assert pairs[("deeplift", "taylor")]["best_classic"]
    assert not pairs[("deeplift", "lrp")]["best_classic"]


def test_ecq_methods_pair_deeplift_with_lrp_relevance():
    share = {"bits": 4}
    study = [
        row(s, m, 0.86 + 0.001 * s, stage="share", setting=share)
        for s in SEEDS
        for m in ("uniform", "deeplift")
    ]
    variants = [
        row(
            s,
            f"ecq+{r}",
            0.85 + 0.002 * s + (0.001 if r == "lrp" else 0),
            stage="share",
            setting=share,
            regime=regimes.STUDY_REGIME,
            regime_method=f"ecq+{r}",
        )
        for s in SEEDS
        for r in ("deeplift", "lrp")
    ]
    found = regimes.comparisons(regimes.regime_rows(study, variants))
    assert {(e["method"], e["against"]) for e in found} == {
        ("deeplift", "uniform"),
        ("ecq+deeplift", "uniform"),
        ("ecq+lrp", "uniform"),
        ("ecq+deeplift", "ecq+lrp"),
    }
    text = regimes.tables(study, variants)
    assert "## share: bits=4, regime=fine-tuned" in text
    assert "ecq+deeplift loses to ecq+lrp" in text  # lrp is 0.001 higher on every seed


def test_is_explanation_reads_every_token():
    assert regimes.is_explanation("deeplift_shap")
    assert regimes.is_explanation("ecq+lrp")
    assert not regimes.is_explanation("magnitude")
    assert not regimes.is_explanation("uniform")


def test_variants_cross_regimes_and_criteria_with_the_criterion_override():
    found = regimes.variants({"oneshot": {"prune": {"finetune_epochs": 0}}}, ("deeplift", "lrp"))
    assert list(found) == ["oneshot+deeplift", "oneshot+lrp"]
    assert found["oneshot+lrp"] == {
        "stage": "prune",
        "overrides": {"prune": {"finetune_epochs": 0, "criterion": "lrp"}},
        "regime": "oneshot",
    }
    parsed = ablation.variants_from_config(found)
    assert [(v.method, v.regime) for v in parsed] == [("deeplift", "oneshot"), ("lrp", "oneshot")]
    with pytest.raises(ValueError, match="at least one regime"):
        regimes.variants({}, ("deeplift",))


def test_share_variant_method_names_the_ecq_rows():
    ecq = ablation.Variant(
        "ecq+lrp", "share", {"share": {"assignments": ("ecq",), "importances": ("lrp",)}}
    )
    assert (ecq.importance, ecq.method) == ("lrp", "ecq+lrp")
    plain = ablation.Variant("sqrt", "share", {"share": {"importance_exponent": 0.5}})
    assert (plain.importance, plain.method) == ("deeplift", "deeplift")
    with pytest.raises(ValueError, match=r"give one share\.assignments"):
        _ = ablation.Variant("x", "share", {"share": {"assignments": ("ecq", "kmeans")}}).method


def test_variant_overrides_merge_into_nested_sections():
    config = ml_collections.ConfigDict(
        {"prune": {"importance": {"target": "label", "seed": 0}, "criterion": "deeplift"}}
    )
    ablation._merge(
        config, {"prune": {"importance": {"target": "all"}}, "finetune": {"lr_rewind": True}}
    )
    assert config.prune.importance.to_dict() == {"target": "all", "seed": 0}
    assert config.prune.criterion == "deeplift"
    assert config.finetune.lr_rewind is True


def test_joint_results_give_one_row_per_strategy_and_budget():
    runs = [
        {
            "strategy": s,
            "budget": b,
            "accuracy_before": 0.5,
            "accuracy_after": 0.8,
            "bytes": 9000.5,
            "nonzero_params": 1000,
        }
        for b in (0.04, 0.08)
        for s in ("joint_deeplift", "uniform")
    ]
    results = {
        "model": "lenet5",
        "dataset": "fashion_mnist",
        "baseline": {"accuracy": 0.9, "params": 10, "flops": 20, "size_bits": 320},
        "joint": {
            "joint": {
                "seed": 3,
                "finetune_epochs": 1,
                "finetune_learning_rate": None,
                "finetune_batch_size": 128,
            },
            "runs": runs,
        },
        "provenance": {"baseline": {"fingerprint": "a"}, "joint": {"fingerprint": "b"}},
    }
    found = [r for r in rows_from_results(results, 3) if r["stage"] == "joint"]
    assert [(r["method"], r["setting"]) for r in found] == [
        (r["strategy"], {"budget": r["budget"]}) for r in runs
    ]
    assert all(r["size_bytes"] == 9000 and r["accuracy_before_finetune"] == 0.5 for r in found)
    with pytest.raises(ValueError, match="record the seeds"):
        rows_from_results(results, 4)


def test_a_recipe_regime_is_paired_with_the_same_method_under_the_study_recipe():
    study = [row(s, "deeplift", 0.87 + 0.01 * s) for s in SEEDS]
    longer = [0.875, 0.889, 0.887, 0.9]
    variants = [
        row(
            s,
            "epochs4+deeplift",
            longer[s],
            recipe={"finetune_epochs": 4},
            regime="epochs4",
            regime_method="deeplift",
        )
        for s in SEEDS
    ]
    found = regimes.against_study_recipe(regimes.regime_rows(study, variants))
    (entry,) = found
    assert (entry["method"], entry["against"]) == ("deeplift (epochs4)", "deeplift (fine-tuned)")
    d = np.subtract(longer, [0.87 + 0.01 * s for s in SEEDS])
    low, high = scipy.stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=scipy.stats.sem(d))
    assert (entry["mean"], entry["low"], entry["high"]) == pytest.approx((d.mean(), low, high))
    # A regime with another setting (one-shot) has no study cell to pair with.
    oneshot = [regime_row(s, "deeplift", 0.5, "oneshot") for s in SEEDS]
    for r in oneshot:
        r["setting"] = {"param_budget": 0.1, "iterations": 1}
    assert regimes.against_study_recipe(regimes.regime_rows(study, oneshot)) == []


def test_joint_is_paired_with_the_sequential_pipeline_at_the_nearest_size():
    from xaijax.study import sequential

    quantize = [
        row(
            s,
            "deeplift_sensitivity",
            acc,
            stage="quantize",
            setting={"budget": bits},
            size_bytes=size,
        )
        for s in SEEDS
        for bits, size, acc in ((3.0, 14_800, 0.86 + 0.002 * s), (4.0, 19_000, 0.87 + 0.001 * s))
    ]
    joint_acc = [0.885, 0.889, 0.884, 0.891]
    joint = [
        row(
            s,
            "joint_deeplift",
            joint_acc[s],
            stage="joint",
            setting={"budget": 19_100.0},
            recipe={"finetune_epochs": 1},
            size_bytes=19_050,
        )
        for s in SEEDS
    ]
    (entry,) = sequential.comparisons(quantize + joint)
    assert entry["sequential_budget"] == 4.0  # 19,000 B is within 5% of 19,100; 14,800 is not
    d = np.subtract(joint_acc, [0.87 + 0.001 * s for s in SEEDS])
    low, high = scipy.stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=scipy.stats.sem(d))
    assert (entry["mean"], entry["low"], entry["high"]) == pytest.approx((d.mean(), low, high))
    far = [dict(r, setting={"budget": 40_000.0}) for r in joint]
    assert sequential.comparisons(quantize + far) == []
    assert "4 bits, 19,000 B" in sequential.table(quantize + joint)


def test_a_rule_override_labels_the_variant_but_not_the_rows_it_reads():
    spec = {"assignments": ("ecq",), "importances": ("lrp",), "importance": {"rule": "epsilon"}}
    variant = ablation.Variant("ecq+lrp+epsilon", "share", {"share": spec}, "fine-tuned")
    assert (variant.method, variant.label) == ("ecq+lrp", "ecq+lrp[epsilon]")
    assert regimes.is_explanation(variant.label)


def test_a_run_of_some_variants_keeps_the_rows_of_the_others(tmp_path):
    from xaijax.study import write_rows

    rows = [row(s, name, 0.5) for name in ("a", "b") for s in (0, 1)]
    write_rows(tmp_path / "rows.jsonl", rows)
    kept = ablation.kept_rows(tmp_path / "rows.jsonl", {("a", 0), ("a", 1), ("b", 0)})
    assert [(r["method"], r["seed"]) for r in kept] == [("b", 1)]
    assert ablation.kept_rows(tmp_path / "missing.jsonl", set()) == []
