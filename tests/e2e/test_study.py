"""The study runner on digits: rows per seed x stage x method, resume without recomputation, and
tables regenerated from rows alone whose statistics equal scipy's."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from xaijax import study
from xaijax.config_utils import model_widths, validate_config

REPO = Path(__file__).resolve().parents[2]
# Tiny widths, one epoch of training and of each fine-tuning, few examples: the plumbing is under
# test, not the numbers (compilation dominates: about a minute per seed on 2 busy cores).
DIGITS = dict(
    epochs=1,
    explain_examples=1,
    examples=32,
    prune_examples=64,
    prune_batch_size=64,
    hessian_samples=1,
    widths={"conv1": 4, "conv2": 4, "conv3": 8, "conv4": 8, "fc1": 16},
)
FIELDS = {
    "seed",
    "model",
    "dataset",
    "stage",
    "method",
    "setting",
    "recipe",
    "fingerprint",
    "accuracy",
    "accuracy_before_finetune",
    "params",
    "nonzero_params",
    "flops",
    "size_bytes",
}
METHODS = {
    "baseline": {"float32"},
    "prune": {"deeplift", "magnitude"},
    "share": {"uniform", "deeplift"},
    "quantize": {"uniform", "deeplift_sensitivity"},
}


def stamps(directory: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in directory.rglob("stage.json")}


def run_script(
    script: str, *flags: str, cache: Path | None = None, timeout: int = 900, **env: str
) -> None:
    """``scripts/<script> <flags>`` in a subprocess (environment variables ``env`` added) that
    must succeed; with ``cache``, JAX's persistent compilation cache there lets a later run reuse
    the programs compiled for an earlier one (same shapes)."""
    if cache is not None:
        env |= {
            "JAX_COMPILATION_CACHE_DIR": str(cache),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        }
    command = [sys.executable, str(REPO / "scripts" / script), *flags]
    done = subprocess.run(
        command,
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def run_study(config_file: Path, workdir: Path, seeds: str, cache: Path) -> None:
    """``scripts/study.py``; a later seed reuses the programs compiled for an earlier one."""
    flags = (f"--config={config_file}", f"--workdir={workdir}", f"--seeds={seeds}")
    run_script("study.py", *flags, cache=cache)


@pytest.fixture(scope="module")
def studied(config_file, tmp_path_factory):
    """Seed 0 alone (a study interrupted after its first seed), then seeds 0 and 1, then seeds 0
    and 1 again; the rows and stage.json times after each call."""
    workdir = tmp_path_factory.mktemp("study") / "run"
    cache = tmp_path_factory.mktemp("jax_cache")
    calls = []
    for seeds in ("0", "0,1", "0,1"):
        run_study(config_file, workdir, seeds, cache)
        rows = study.read_rows(workdir / study.ROWS_FILE)
        assert rows == study.rows_from_workdir(workdir, [int(s) for s in seeds.split(",")])
        calls.append({"rows": rows, "stamps": stamps(workdir)})
    return workdir, calls


def test_rows_for_every_seed_stage_and_method(studied):
    workdir, calls = studied
    rows = calls[1]["rows"]
    for seed in (0, 1):
        for stage, methods in METHODS.items():
            mine = [r for r in rows if r["seed"] == seed and r["stage"] == stage]
            assert {r["method"] for r in mine} == methods, (seed, stage)
    results = {s: json.loads((workdir / f"seed_{s}" / "results.json").read_text()) for s in (0, 1)}
    for row in rows:
        assert set(row) >= FIELDS, row
        assert (row["model"], row["dataset"]) == ("vgg_small", "digits")
        assert 0.0 <= row["accuracy"] <= 1.0
        assert row["size_bytes"] > 0
        provenance = results[row["seed"]]["provenance"]
        stage = f"prune/{row['method']}" if row["stage"] == "prune" else row["stage"]
        assert row["fingerprint"] == provenance[stage]["fingerprint"]
        if row["stage"] == "prune":
            assert row["params"] >= row["nonzero_params"] > 0
            assert row["flops"] > 0 and row["setting"]["conv_sparsity"] == 0.5
            assert row["recipe"]["finetune_epochs"] == 1
        if row["stage"] == "share":
            assert row["setting"] == {"bits": 2}
        if row["stage"] == "quantize":
            assert row["setting"] == {"budget": 4.0}
            assert set(row["layer_bits"]) == set(results[0]["quantize"]["layer_sizes"])
    # Each seed trains its own baseline: the seeds' baselines differ.
    fingerprints = {r["seed"]: r["fingerprint"] for r in rows if r["stage"] == "baseline"}
    assert fingerprints[0] != fingerprints[1]
    prune_seeds = {s: results[s]["prune"]["deeplift"]["prune"]["seed"] for s in (0, 1)}
    assert prune_seeds == {0: 0, 1: 1}


def test_the_script_writes_the_report(studied):
    workdir, _ = studied
    text = (workdir / "study.md").read_text()
    assert "## Verdicts: DeepLIFT against the strongest baseline" in text
    summary = json.loads((workdir / "study.json").read_text())
    assert summary["seeds"] == [0, 1]
    for name in summary["figures"]:
        assert (workdir / name).read_bytes()[:4] == b"\x89PNG"
    recorded = json.loads((workdir / study.CONFIG_FILE).read_text())
    assert recorded["seeds"] == [0, 1]
    assert recorded["config"]["model"]["widths"]["conv1"] == 4


def test_an_interrupted_study_resumes_without_touching_finished_seeds(studied):
    workdir, (first, second, _) = studied
    assert {r["seed"] for r in first["rows"]} == {0}
    assert [r for r in second["rows"] if r["seed"] == 0] == first["rows"]
    seed0 = {p: t for p, t in second["stamps"].items() if "seed_0" in p.parts}
    assert seed0 == first["stamps"]
    assert not list(workdir.glob(".rows.jsonl.*"))  # no temporary file left behind


def test_a_second_call_recomputes_nothing(studied):
    _, (_, second, third) = studied
    assert third["stamps"] == second["stamps"]
    assert third["rows"] == second["rows"]


def test_seed_config_sets_every_seed_field(digits_config):
    config = digits_config()
    seeded = study.seed_config(config, 7)
    for path in study.SEED_FIELDS:
        section, name = path.split(".")
        assert seeded[section][name] == 7
        assert config[section][name] == 0  # the original is left alone
    # The seeded copy is still a valid config with the same widths.
    validate_config(seeded)
    assert model_widths(seeded) == model_widths(config) == dict(config.model.widths)


def scipy_interval(rows, stage, metric, ours, other):
    by_seed = {
        (r["method"], r["seed"]): r[metric]
        for r in rows
        if r["stage"] == stage and r["method"] in (ours, other)
    }
    seeds = sorted({s for _, s in by_seed})
    a = [by_seed[ours, s] for s in seeds]
    b = [by_seed[other, s] for s in seeds]
    ci = scipy.stats.ttest_rel(a, b).confidence_interval(0.95)
    return np.mean(np.subtract(a, b)), ci.low, ci.high


def test_tables_regenerate_from_rows_alone_with_scipy_statistics(studied, tmp_path):
    workdir, calls = studied
    rows = calls[1]["rows"]
    alone = tmp_path / "rows.jsonl"
    shutil.copy(workdir / study.ROWS_FILE, alone)
    output = tmp_path / "tables" / "study.md"
    run_script("study_tables.py", f"--rows={alone}", f"--output={output}", timeout=300)
    text = output.read_text()
    summary = json.loads(output.with_suffix(".json").read_text())
    assert "95% paired t" in text
    assert any(word in text for word in (" wins against ", " ties with ", " loses to "))
    for stage in ("prune", "share", "quantize"):
        assert (output.parent / f"study_{stage}.png").read_bytes()[:4] == b"\x89PNG"
        assert f"](study_{stage}.png)" in text
    assert summary.pop("figures") == [f"study_{s}.png" for s in ("prune", "share", "quantize")]
    assert summary == study.summarize(rows)

    checked = 0
    for cell in summary["cells"]:
        for entry in cell["methods"]:
            values = [
                r["accuracy"]
                for r in rows
                if r["stage"] == cell["stage"] and r["method"] == entry["method"]
            ]
            assert entry["n"] == len(values) == 2
            assert entry["accuracy"]["mean"] == pytest.approx(np.mean(values))
            assert entry["accuracy"]["std"] == pytest.approx(np.std(values, ddof=1))
        for c in cell["comparisons"]:
            mean, low, high = scipy_interval(
                rows, cell["stage"], c["metric"], c["method"], c["against"]
            )
            assert c["mean"] == pytest.approx(mean, abs=1e-12)
            if math.isnan(low):  # equal differences: scipy gives nan, we give the point [d, d]
                assert c["low"] == c["high"] == pytest.approx(mean, abs=1e-12)
            else:
                assert (c["low"], c["high"]) == pytest.approx((low, high))
            verdict = "wins" if c["low"] > 0 else "loses" if c["high"] < 0 else "ties"
            assert c["verdict"] == verdict
            row = f"| {c['n']} | {c['mean']:+.4f} | [{c['low']:+.4f}, {c['high']:+.4f}] |"
            assert row in text
            checked += 1
    assert checked == 2 * 3  # two metrics x (prune, share, quantize), one baseline each


def synthetic_rows(accuracies: dict[str, list[float]], stage: str = "prune") -> list[dict]:
    return [
        {
            "seed": seed,
            "model": "m",
            "dataset": "d",
            "stage": stage,
            "method": method,
            "setting": {"bits": 2},
            "recipe": {"finetune_epochs": 1},
            "fingerprint": "f",
            "accuracy": value,
            "accuracy_before_finetune": value / 2,
            "params": None,
            "nonzero_params": None,
            "flops": None,
            "size_bytes": 100,
        }
        for method, values in accuracies.items()
        for seed, value in enumerate(values)
    ]


def test_strongest_baseline_is_the_best_non_deeplift_method():
    rows = synthetic_rows(
        {
            "deeplift": [0.80, 0.82, 0.81],
            "deeplift_shap": [0.90, 0.91, 0.92],
            "magnitude": [0.70, 0.72, 0.74],
            "taylor": [0.79, 0.80, 0.83],
        }
    )
    (cell,) = study.summarize(rows)["cells"]
    accuracy = [c for c in cell["comparisons"] if c["metric"] == "accuracy"]
    assert [c["against"] for c in accuracy] == ["deeplift_shap", "taylor", "magnitude"]
    assert [c["strongest"] for c in accuracy] == [False, True, False]
    assert [c["verdict"] for c in accuracy] == ["loses", "ties", "wins"]
    text = study.tables(rows)
    assert "taylor (strongest baseline)" in text
    assert "deeplift wins against magnitude" in text
    assert "deeplift loses to deeplift_shap" in text


def test_one_seed_gives_means_without_intervals():
    rows = synthetic_rows({"deeplift": [0.8], "magnitude": [0.7]})
    (cell,) = study.summarize(rows)["cells"]
    assert cell["methods"][0]["accuracy"] == {"mean": 0.8, "std": None}
    assert {c["verdict"] for c in cell["comparisons"]} == {"n/a"}
    assert "n/a (1 common seeds; an interval needs 2)" in study.tables(rows)


def test_bootstrap_tables_name_their_interval():
    rows = synthetic_rows({"deeplift": [0.80, 0.82, 0.81], "magnitude": [0.70, 0.72, 0.74]})
    text = study.tables(rows, interval_method="bootstrap")
    assert "95% paired percentile bootstrap interval" in text


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda rows: rows.append(dict(rows[0])), "two rows for method 'deeplift' and seed 0"),
        (lambda rows: rows[1].update(recipe={"finetune_epochs": 2}), "disagree on the fine-tuning"),
        (lambda rows: rows[0].update(stage="distill"), "unknown stage 'distill'"),
    ],
)
def test_inconsistent_rows_are_refused(edit, message):
    rows = synthetic_rows({"deeplift": [0.80, 0.82], "magnitude": [0.70, 0.72]})
    edit(rows)
    with pytest.raises(ValueError, match=message):
        study.summarize(rows)


def test_bad_seeds_are_refused():
    for seeds, message in (((), "at least one seed"), ((0, 0), "distinct"), ((-1,), ">= 0")):
        with pytest.raises(ValueError, match=message):
            study.check_seeds(seeds)


# --------------------------------------------------------------------------------- ablations

ABLATION = """
from study_digits import get_config as study_config


def get_config():
    config = study_config()
    config.ablation = {
        "variants": {
            "deeplift_magnitude": {
                "stage": "prune", "overrides": {"prune": {"criterion": "deeplift_magnitude"}}
            },
            "deeplift+sqrt_importance": {
                "stage": "share", "overrides": {"share": {"importance_exponent": 0.5}}
            },
        }
    }
    return config
"""


def run_ablation(config_file: Path, study_dir: Path, workdir: Path, cache: Path) -> None:
    flags = (f"--config={config_file}", f"--study_workdir={study_dir}", f"--workdir={workdir}")
    run_script(
        "ablation.py", *flags, "--seeds=0,1", cache=cache, PYTHONPATH=str(config_file.parent)
    )


@pytest.fixture(scope="module")
def ablated(studied, config_file, tmp_path_factory):
    """Two variants (a pruning criterion, a sharing exponent) on the two seeds, run twice."""
    study_dir, _ = studied
    config = config_file.parent / "ablation_digits.py"
    config.write_text(ABLATION)
    workdir = tmp_path_factory.mktemp("ablation") / "run"
    cache = tmp_path_factory.mktemp("jax_cache_ablation")
    run_ablation(config, study_dir, workdir, cache)
    first = (study.read_rows(workdir / study.ROWS_FILE), stamps(workdir))
    run_ablation(config, study_dir, workdir, cache)
    second = (study.read_rows(workdir / study.ROWS_FILE), stamps(workdir))
    return study_dir, workdir, first, second


def test_variants_pair_with_the_study_on_its_baselines(ablated):
    study_dir, workdir, (rows, _), _ = ablated
    names = {"deeplift_magnitude": "prune", "deeplift+sqrt_importance": "share"}
    assert {(r["method"], r["seed"]) for r in rows} == {(m, s) for m in names for s in (0, 1)}
    for row in rows:
        assert row["stage"] == names[row["method"]]
        results = json.loads(
            (workdir / row["method"] / f"seed_{row['seed']}" / "results.json").read_text()
        )
        studied_results = json.loads(
            (study_dir / f"seed_{row['seed']}" / "results.json").read_text()
        )
        # The copied starting stages were reused (same fingerprint), not retrained.
        starts = ["baseline"] + (["prune/deeplift"] if row["stage"] == "share" else [])
        for stage in starts:
            assert results["provenance"][stage]["status"] == "reused"
            expected = studied_results["provenance"][stage]["fingerprint"]
            assert results["provenance"][stage]["fingerprint"] == expected
        if row["stage"] == "share":
            assert results["share"]["share"]["importance_exponent"] == 0.5
            assert row["setting"] == {"bits": 2}
        else:
            assert results["prune"]["deeplift_magnitude"]["prune"]["criterion"] == (
                "deeplift_magnitude"
            )
        assert "artifact" not in results


def test_ablation_resumes_without_recomputing(ablated):
    _, _, first, second = ablated
    assert first == second


def test_ablation_tables_compare_each_variant_with_the_default_and_the_strongest(ablated):
    study_dir, workdir, (rows, _), _ = ablated
    text = (workdir / "ablation.md").read_text()
    assert "vs default DeepLIFT" in text and "(strongest baseline)" in text
    from xaijax.study import ablation

    study_rows = study.read_rows(study_dir / study.ROWS_FILE)
    found = ablation.comparisons(study_rows + rows)
    magnitude = [e for e in found if e["method"] == "deeplift_magnitude"]
    assert {e["metric"] for e in magnitude} == set(study.COMPARED)
    for entry in magnitude:  # Against the default: the paired difference computed here.
        by = {
            (r["method"], r["seed"]): r[entry["metric"]]
            for r in study_rows + rows
            if r["stage"] == "prune"
        }
        d = [by["deeplift_magnitude", s] - by["deeplift", s] for s in (0, 1)]
        assert entry["vs_default"]["mean"] == pytest.approx(np.mean(d))
        assert entry["vs_default"]["n"] == 2


def test_bad_variants_fail_before_any_work(digits_config, tmp_path):
    from xaijax.study import ablation

    with pytest.raises(ValueError, match="stage must be one of"):
        ablation.Variant("deeplift+x", "quantize", {})
    with pytest.raises(ValueError, match="must match"):
        ablation.Variant("deeplift[x]", "prune", {})
    config = digits_config()
    bad = ablation.Variant("deeplift+typo", "prune", {"prune": {"refrence": "mean"}})
    with pytest.raises(ValueError, match=r"config\.prune has unknown fields \['refrence'\]"):
        ablation.run(config, tmp_path / "study", tmp_path / "ablation", [bad], [0])
    assert not (tmp_path / "ablation").exists()
