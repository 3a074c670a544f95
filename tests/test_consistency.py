"""Explanation consistency: rank correlation and top-k overlap against scipy and brute force, the
summaries against numpy group-bys, DeepLIFT maps against a direct call, the pipeline step and the
study rows on hand-made workdirs, and the paired tables against scipy's t interval."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import reference_nets
import scipy.stats

from xaijax import checkpoint, consistency, data, deeplift, pipeline, statistics, study
from xaijax.defaults import base_config
from xaijax.experiments import consistency as consistency_experiment
from xaijax.experiments import consistency_study


class TinyNet(nn.Module):
    """conv 3x3 (4 filters unless ``widths["conv"]``) - relu - dense: the smallest model with a
    spatial map; a ``widths`` dict makes it unhashable, like a shrunk zoo model."""

    num_classes: int = 10
    widths: dict | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.relu(nn.Conv((self.widths or {}).get("conv", 4), (3, 3))(x))
        return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))


SHAPE = (8, 8, 1)


def draw(seed: int) -> dict:
    return reference_nets.draw_variables(TinyNet(), SHAPE, seed)


# ----------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("ties", [False, True])
def test_spearman_equals_scipy(ties):
    rng = np.random.default_rng(1 + ties)
    if ties:  # Few distinct values: long runs of ties in both maps.
        a, b = rng.integers(-2, 3, (12, 5, 6)), rng.integers(0, 3, (12, 5, 6))
    else:
        a, b = rng.normal(size=(12, 5, 6)), rng.normal(size=(12, 5, 6))
    expected = [
        scipy.stats.spearmanr(x.ravel(), y.ravel()).statistic for x, y in zip(a, b, strict=True)
    ]
    np.testing.assert_allclose(consistency.spearman(a, b), expected, rtol=1e-12, atol=1e-12)
    ranks = consistency.average_ranks(a)
    np.testing.assert_array_equal(ranks, scipy.stats.rankdata(a.reshape(12, -1), axis=1))


def test_identical_maps_agree_fully_and_a_reversed_ranking_gives_minus_one():
    maps = np.random.default_rng(3).normal(size=(5, 4, 4))
    found = consistency.agreement(maps, maps)
    np.testing.assert_allclose(found["spearman"], 1.0)
    np.testing.assert_array_equal(found["top_overlap"], 1.0)
    np.testing.assert_allclose(consistency.spearman(maps, -maps), -1.0)
    np.testing.assert_allclose(consistency.spearman(maps, maps**3 + 2.0), 1.0)  # Monotone.


def test_a_constant_map_has_undefined_spearman_and_is_counted():
    maps = np.random.default_rng(4).normal(size=(3, 9))
    other = maps.copy()
    other[1] = 0.0
    rho = consistency.spearman(maps, other)
    assert np.isnan(rho[1]) and np.isfinite(rho[[0, 2]]).all()
    summary = consistency.summarize({"spearman": rho}, np.array([0, 0, 1]))
    assert summary["spearman_undefined"] == 1
    assert summary["spearman"]["mean"] == pytest.approx(np.mean(rho[[0, 2]]))
    assert summary["per_class"]["1"]["spearman"] == pytest.approx(rho[2])


def brute_force_overlap(a: np.ndarray, b: np.ndarray, fraction: Fraction) -> float:
    """|top_k(a) ∩ top_k(b)| / k with exact k = ceil(fraction * P), ties to the lower index."""
    a, b = a.ravel().tolist(), b.ravel().tolist()
    k = max(1, math.ceil(fraction * len(a)))
    top = lambda v: set(sorted(range(len(v)), key=lambda i: (-v[i], i))[:k])
    return len(top(a) & top(b)) / k


@pytest.mark.parametrize("fraction", [Fraction(1, 10), Fraction(1, 4), Fraction(3, 100), 1])
def test_top_k_overlap_equals_a_brute_force_set_intersection(fraction):
    rng = np.random.default_rng(5)
    a = rng.integers(0, 6, (7, 6, 5)).astype(float)  # Ties decide membership at the boundary.
    b = np.where(rng.random(a.shape) < 0.5, a, rng.integers(0, 6, a.shape))
    expected = [brute_force_overlap(x, y, Fraction(fraction)) for x, y in zip(a, b, strict=True)]
    found = consistency.top_k_overlap(a, b, float(fraction))
    np.testing.assert_array_equal(found, expected)
    # agreement() ranks pixels by magnitude.
    magnitude = [
        brute_force_overlap(abs(x), abs(y), Fraction(fraction)) for x, y in zip(-a, b, strict=True)
    ]
    np.testing.assert_array_equal(
        consistency.agreement(-a, b, float(fraction))["top_overlap"], magnitude
    )


def test_top_k_count_is_an_exact_ceiling_and_bad_fractions_raise():
    for pixels in (1, 30, 64, 784, 1024, 3072):
        for tenths in range(1, 11):
            expected = max(1, math.ceil(Fraction(tenths, 10) * pixels))
            assert consistency.top_k_count(pixels, tenths / 10) == expected
    for bad in (0.0, -0.1, 1.5, True):
        with pytest.raises(ValueError, match="top fraction"):
            consistency.top_k_count(10, bad)
    with pytest.raises(ValueError, match="equal shapes"):
        consistency.spearman(np.zeros((2, 4)), np.zeros((2, 5)))
    with pytest.raises(ValueError, match="NaN"):
        consistency.top_k_overlap(np.full((1, 4), np.nan), np.zeros((1, 4)))


def test_summary_equals_a_numpy_groupby():
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 4, 50)
    labels[labels == 2] = 3  # A class with no examples is absent.
    values = {"spearman": rng.uniform(-1, 1, 50), "top_overlap": rng.uniform(0, 1, 50)}
    summary = consistency.summarize(values, labels)
    assert summary["n"] == 50 and sorted(summary["per_class"]) == ["0", "1", "3"]
    for name, v in values.items():
        mean, std = statistics.mean_std(v)
        assert summary[name] == pytest.approx({"mean": mean, "std": std})
        sums, counts = np.bincount(labels, weights=v), np.bincount(labels)
        for label in (0, 1, 3):
            entry = summary["per_class"][str(label)]
            assert entry["n"] == counts[label]
            assert entry[name] == pytest.approx(sums[label] / counts[label])
    with pytest.raises(ValueError, match="one value per label"):
        consistency.summarize({"spearman": np.zeros(3)}, np.zeros(4, int))


# ----------------------------------------------------------------------------- model maps


def test_maps_equal_a_direct_deeplift_call_and_sum_to_the_logit_delta():
    model, variables = TinyNet(), draw(0)
    rng = np.random.default_rng(7)
    images = rng.uniform(0, 1, (7, *SHAPE)).astype(np.float32)
    labels = rng.integers(0, 10, 7).astype(np.int32)
    dataset = data.Dataset(images, labels)
    maps = consistency.pixel_maps(model, variables, dataset, batch_size=3)  # Pads the last batch.
    apply = lambda x: model.apply(variables, x, train=False)
    direct = deeplift.attribute(apply, images, jnp.zeros(SHAPE), target=labels)
    np.testing.assert_allclose(maps, np.asarray(direct).sum(-1), rtol=1e-5, atol=1e-6)
    logits, at_zero = apply(images), apply(jnp.zeros((1, *SHAPE)))
    delta = logits[np.arange(7), labels] - at_zero[0, labels]
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), delta, rtol=1e-4, atol=1e-4)
    assert consistency.pixel_maps(model, variables, dataset, num_examples=2).shape == (2, 8, 8)
    unhashable = TinyNet(widths={"conv": 4})  # Not cached, same maps.
    np.testing.assert_allclose(consistency.pixel_maps(unhashable, variables, dataset), maps)


def test_a_model_agrees_with_itself_and_less_with_a_perturbed_copy():
    model, variables = TinyNet(), draw(0)
    rng = np.random.default_rng(8)
    dataset = data.Dataset(
        rng.uniform(0, 1, (16, *SHAPE)).astype(np.float32), rng.integers(0, 10, 16)
    )
    itself = consistency.compare_models((model, variables), (model, variables), dataset)
    assert itself["spearman"]["mean"] == pytest.approx(1.0)
    assert itself["top_overlap"]["mean"] == 1.0
    noisy = jax.tree.map(lambda w: w + 0.3 * rng.standard_normal(w.shape), variables)
    other = consistency.compare_models((model, variables), (model, noisy), dataset)
    assert other["spearman"]["mean"] < 0.99 and other["top_overlap"]["mean"] < 1.0
    assert other["spearman"]["mean"] >= -1.0 and other["top_overlap"]["mean"] >= 0.0


# ----------------------------------------------------------------------------- pipeline / study


def test_pipeline_fields_default_and_validate():
    section = pipeline.defaults()
    assert section.explain_consistency is True and section.consistency_examples == 500
    for field, bad in (("explain_consistency", 1), ("consistency_examples", 0)):
        given = ml_collections.ConfigDict({**section.to_dict(), field: bad})
        with pytest.raises(ValueError, match=rf"config\.compress\.{field}"):
            pipeline.validate(given)


def masked(variables: dict, seed: int) -> dict:
    """``variables`` with a random half of each kernel zeroed (an unstructured pruning)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda path, w: (
            np.where(rng.random(w.shape) < 0.5, 0.0, np.asarray(w)).astype(np.float32)
            if jax.tree_util.keystr(path).endswith("['kernel']")
            else np.asarray(w)
        ),
        variables,
    )


def write_seed(run_dir: Path, seed: int, criteria: tuple[str, ...]) -> dict:
    """A finished pipeline run as the consistency code reads it: dense and masked variables."""
    variables = draw(seed)
    checkpoint.save_variables(run_dir / "baseline" / "variables", variables)
    pruned = {}
    for i, criterion in enumerate(criteria):
        pruned[criterion] = masked(variables, 100 * seed + i)
        checkpoint.write_json_atomic(run_dir / "prune" / criterion / "results.json", {})
        checkpoint.save_variables(
            run_dir / "prune" / criterion / "pruned_variables", pruned[criterion]
        )
    checkpoint.write_json_atomic(run_dir / "results.json", {"prune": {c: {} for c in criteria}})
    return {"dense": variables, **pruned}


CRITERIA = ("deeplift", "magnitude")
SEEDS = (0, 1, 2)


def study_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.data.name = "digits"
    config.model.name = "test_consistency:TinyNet"
    return config


@pytest.fixture(scope="module")
def fake_study(tmp_path_factory) -> tuple[Path, dict]:
    """A finished study as the consistency code reads it (``study_config.json``, per seed the
    dense and masked variables), with no training."""
    study_dir = tmp_path_factory.mktemp("study")
    drawn = {s: write_seed(study_dir / f"seed_{s}", s, CRITERIA) for s in SEEDS}
    checkpoint.write_json_atomic(
        study_dir / study.CONFIG_FILE, {"seeds": list(SEEDS), "config": study_config().to_dict()}
    )
    return study_dir, drawn


def test_study_rows_pair_each_pruned_model_and_the_next_seed_with_the_dense_model(
    fake_study, tmp_path
):
    study_dir, drawn = fake_study
    config, criteria = study_config(), CRITERIA
    rows = consistency_study.study_rows(
        study_dir,
        SEEDS,
        lambda s: study.seed_config(config, s),
        num_examples=40,
        batch_size=32,
        figure_dir=tmp_path,
        num_images=3,
    )
    assert (tmp_path / consistency_study.HEATMAP_FIGURE).read_bytes()[:4] == b"\x89PNG"
    assert len(rows) == 9 and json.loads(json.dumps(rows)) == rows
    test = data.Dataset(*_digits_test(config, 40))
    model = TinyNet()
    partners = {0: 1, 1: 2, 2: 0}
    for row in rows:
        seed = row["seed"]
        if row["method"] == consistency_study.YARDSTICK:
            assert row["other_seed"] == partners[seed]
            other = drawn[partners[seed]]["dense"]
        else:
            other = drawn[seed][row["method"]]
        expected = consistency.compare_models((model, drawn[seed]["dense"]), (model, other), test)
        assert row["spearman"] == pytest.approx(expected["spearman"]["mean"], abs=1e-6)
        assert row["top_overlap"] == pytest.approx(expected["top_overlap"]["mean"])
        assert row["nonzero_params"] == sum(
            np.count_nonzero(w) for w in jax.tree.leaves(other["params"])
        )
    assert consistency_study.yardstick_pairs((4, 7)) == {4: 7}
    assert consistency_study.yardstick_pairs((4,)) == {}

    # The pipeline step on seed 0 gives the same pruned rows and a report section.
    found = consistency_experiment.pipeline_step(
        study_dir / "seed_0",
        (model, drawn[0]["dense"]),
        criteria,
        test,
        num_examples=40,
        num_images=2,
        batch_size=32,
    )
    assert found["yardstick"] is None and found["examples"] == 40
    assert (study_dir / "seed_0" / found["figure"]).exists()
    for step_row, study_row in zip(found["rows"], rows[:2], strict=True):
        assert step_row["spearman"] == pytest.approx(study_row["spearman"], abs=1e-6)
    text = "\n".join(consistency_experiment.report_lines(found))
    assert "## Explanation consistency" in text and "| deeplift |" in text


def _digits_test(config, count: int) -> tuple[np.ndarray, np.ndarray]:
    from xaijax import training

    test = training.datasets_from_config(config).test
    return test.images[:count], test.labels[:count]


def test_tables_give_scipy_paired_t_intervals_and_verdicts():
    rng = np.random.default_rng(9)
    seeds = (0, 1, 2, 3)
    values = {
        "deeplift": rng.uniform(0.7, 0.8, 4),
        "magnitude": rng.uniform(0.4, 0.5, 4),
        consistency_study.YARDSTICK: rng.uniform(0.5, 0.9, 4),
    }
    rows = [
        {
            "seed": s,
            "method": method,
            "nonzero_params": 100,
            "examples": 10,
            "top_fraction": 0.1,
            "spearman": float(v[i]),
            "top_overlap": float(v[i]) / 2,
            "per_class": {"0": {"n": 10, "spearman": float(v[i]), "top_overlap": 0.1}},
        }
        for method, v in values.items()
        for i, s in enumerate(seeds)
    ]
    found = consistency_study.comparisons(rows)
    pairs = [(c["method"], c["against"]) for c in found[:3]]
    assert pairs == [
        ("deeplift", "magnitude"),
        ("deeplift", consistency_study.YARDSTICK),
        ("magnitude", consistency_study.YARDSTICK),
    ]
    d = values["deeplift"] - values["magnitude"]
    low, high = scipy.stats.t.interval(0.95, 3, loc=d.mean(), scale=scipy.stats.sem(d))
    first = found[0]
    assert (first["low"], first["high"]) == (pytest.approx(low), pytest.approx(high))
    assert first["verdict"] == "wins"  # Every seed's difference is at least 0.2.
    text = consistency_study.tables(rows)
    assert "deeplift wins against magnitude" in text and "## Paired comparisons" in text
    single = [row for row in rows if row["seed"] == 0]
    assert consistency_study.comparisons(single)[0]["verdict"] == "n/a"


def test_the_script_writes_the_rows_the_tables_and_the_figures(fake_study, tmp_path):
    study_dir, _ = fake_study
    output = tmp_path / "out"
    script = Path(__file__).resolve().parents[1] / "scripts" / "consistency.py"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent)}
    flags = [f"--study_workdir={study_dir}", f"--output={output}", "--examples=40"]
    subprocess.run([sys.executable, str(script), *flags], check=True, env=env, timeout=300)
    rows = study.read_rows(output / "rows.jsonl")
    expected = consistency_study.study_rows(
        study_dir, SEEDS, lambda s: study.seed_config(study_config(), s), num_examples=40
    )
    assert [(r["seed"], r["method"]) for r in rows] == [(r["seed"], r["method"]) for r in expected]
    for row, want in zip(rows, expected, strict=True):
        assert row["spearman"] == pytest.approx(want["spearman"], abs=1e-6)
    text = (output / "consistency.md").read_text()
    for name in ("agreement_spearman.png", "agreement_top_overlap.png", "consistency_heatmaps.png"):
        assert f"]({name})" in text and (output / name).read_bytes()[:4] == b"\x89PNG"
    (output / "consistency.md").unlink()
    subprocess.run(
        [sys.executable, str(script), *flags, "--tables_only"], check=True, env=env, timeout=120
    )
    assert (output / "consistency.md").read_text() == text
