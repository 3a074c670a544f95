"""Tests for xaijax.weight_sharing: k-means, codebooks, shared-weight fine-tuning, sizes."""

from __future__ import annotations

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from xaijax import weight_sharing as ws

SIZES = (5, 50)  # few distinct shapes keep jit recompilation cheap


def lloyd_reference(values, weights, codebook, iters):
    """Textbook weighted Lloyd in float64: argmin assignment, weighted means, empty kept.

    The codebook is kept sorted, so argmin's ties go to the smaller centroid.
    """
    x = np.asarray(values, np.float64)
    w = np.ones_like(x) if weights is None else np.asarray(weights, np.float64)
    c = np.sort(np.asarray(codebook, np.float64))
    for _ in range(iters):
        assign = np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)
        for j in range(c.size):
            members = assign == j
            if w[members].sum() > 0:
                c[j] = np.sum(w[members] * x[members]) / w[members].sum()
        c = np.sort(c)
    assign = np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)
    return c, float(np.sum(w * (x - c[assign]) ** 2))


def objective(values, weights, codebook, indices):
    x = np.asarray(values, np.float64)
    w = np.ones_like(x) if weights is None else np.asarray(weights, np.float64)
    return float(np.sum(w * (x - np.asarray(codebook, np.float64)[np.asarray(indices)]) ** 2))


@st.composite
def weighted_problems(draw):
    n = draw(st.sampled_from(SIZES))
    values = draw(
        hnp.arrays(np.float32, n, elements=st.floats(-4, 4, width=32, allow_subnormal=False))
    )
    weights = None
    if draw(st.booleans()):
        weights = draw(
            hnp.arrays(np.float32, n, elements=st.floats(0, 3, width=32, allow_subnormal=False))
        )
        weights[draw(st.integers(0, n - 1))] = 1.0  # a positive total weight
    bits = draw(st.sampled_from((1, 3)))
    return values, weights, bits


# ------------------------------------------------------------------------------------------------
# 1-D k-means
# ------------------------------------------------------------------------------------------------


@settings(max_examples=10, deadline=None)
@given(weighted_problems(), st.sampled_from(ws.INITS))
def test_kmeans_no_worse_than_lloyd_reference_from_same_init(problem, init):
    values, weights, bits = problem
    start = ws.initial_codebook(values, bits, weights, init=init, key=jax.random.key(3))
    result = ws.kmeans_1d(values, bits, weights, init=start, max_iters=20)
    _, reference = lloyd_reference(values, weights, start, int(result.num_iters))
    ours = objective(values, weights, result.codebook, result.indices)
    assert ours <= reference * (1 + 1e-5) + 1e-6
    np.testing.assert_allclose(float(result.objective), ours, rtol=1e-4, atol=1e-5)


@settings(max_examples=8, deadline=None)
@given(weighted_problems())
def test_objective_history_is_non_increasing_and_ends_at_objective(problem):
    values, weights, bits = problem
    result = ws.kmeans_1d(values, bits, weights, max_iters=15, track_objective=True)
    history = np.asarray(result.objective_history, np.float64)
    assert history.shape == (16,)
    slack = 1e-5 * history[0] + 1e-6
    assert np.all(np.diff(history) <= slack)
    np.testing.assert_allclose(history[-1], float(result.objective), rtol=1e-4, atol=1e-5)


def test_converged_codebook_is_weighted_mean_of_nearest_members():
    rng = np.random.default_rng(0)
    values = rng.standard_normal(2000).astype(np.float32)
    weights = rng.exponential(size=2000).astype(np.float32)
    result = ws.kmeans_1d(values, 4, weights, max_iters=200)
    assert int(result.num_iters) < 200  # stopped because assignments were stable
    codebook = np.asarray(result.codebook, np.float64)
    indices = np.asarray(result.indices)
    assert np.all(np.diff(codebook) >= 0)
    nearest = np.argmin(np.abs(values[:, None] - codebook[None, :]), axis=1)
    distance = np.abs(values - codebook[indices])
    np.testing.assert_allclose(distance, np.abs(values - codebook[nearest]), atol=1e-6)
    for j in np.unique(indices):
        members = indices == j
        mean = np.sum(weights[members] * values[members]) / np.sum(weights[members])
        np.testing.assert_allclose(codebook[j], mean, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("init", ["linear", "density"])
def test_zero_importance_values_move_no_centroid(init):
    rng = np.random.default_rng(1)
    values = rng.standard_normal(50).astype(np.float32)
    weights = rng.uniform(0.5, 2.0, 50).astype(np.float32)
    weights[:5] = 0.0
    base = ws.kmeans_1d(values, 3, weights, init=init)
    moved = values.copy()
    moved[:5] = [
        100.0,
        -50.0,
        7.0,
        0.123,
        -3.0,
    ]  # zero-importance values anywhere, far outliers too
    other = ws.kmeans_1d(moved, 3, weights, init=init)
    np.testing.assert_allclose(np.asarray(other.codebook), np.asarray(base.codebook), rtol=1e-6)
    # they are still assigned to their nearest centroid
    nearest = np.argmin(np.abs(moved[:5, None] - np.asarray(other.codebook)[None]), axis=1)
    np.testing.assert_array_equal(np.asarray(other.indices)[:5], nearest)


def test_empty_cluster_keeps_its_centroid():
    values = np.array([0.0, 0.1, 0.2, 1.0, 1.1], np.float32)
    start = np.array([0.0, 1.0, 50.0, 60.0], np.float32)  # 50 and 60 never attract a value
    result = ws.kmeans_1d(values, 2, init=start)
    np.testing.assert_allclose(np.asarray(result.codebook), [0.1, 1.05, 50.0, 60.0], rtol=1e-6)


def test_weights_equal_to_repeating_values():
    """Integer weights act like repeated values: same codebook as the expanded unweighted data."""
    values = np.array([-1.0, -0.2, 0.3, 0.5, 2.0, 2.5], np.float32)
    counts = np.array([3, 1, 2, 1, 4, 1])
    start = np.array([-1.0, 0.0, 1.0, 2.0], np.float32)
    weighted = ws.kmeans_1d(values, 2, counts.astype(np.float32), init=start)
    expanded = ws.kmeans_1d(np.repeat(values, counts), 2, init=start)
    np.testing.assert_allclose(weighted.codebook, expanded.codebook, rtol=1e-6)


@pytest.mark.parametrize("init", ws.INITS)
def test_initialisations_are_sorted_seeded_and_inside_the_weighted_range(init):
    rng = np.random.default_rng(2)
    values = rng.standard_normal(50).astype(np.float32)
    weights = np.ones(50, np.float32)
    weights[values > 1.0] = 0.0  # outside the support: no initial centroid may go there
    first = np.asarray(ws.initial_codebook(values, 3, weights, init=init, key=jax.random.key(5)))
    again = np.asarray(ws.initial_codebook(values, 3, weights, init=init, key=jax.random.key(5)))
    np.testing.assert_array_equal(first, again)
    assert first.shape == (8,) and first.dtype == np.float32
    assert np.all(np.diff(first) >= 0)
    support = values[weights > 0]
    assert support.min() <= first.min() and first.max() <= support.max()


@pytest.mark.parametrize("bits", [0, 9, -1, 2.0, True, "3", None])
def test_bad_bits_raise(bits):
    with pytest.raises((ValueError, TypeError), match="bits"):
        ws.kmeans_1d(np.zeros(4, np.float32), bits)


@pytest.mark.parametrize(
    ("values", "weights", "kwargs", "match"),
    [
        (np.zeros((2, 3)), None, {}, "1-D"),
        (np.zeros(0), None, {}, "1-D"),
        (np.array([0.0, np.nan]), None, {}, "finite"),
        (np.zeros(4), np.ones(3), {}, "shape"),
        (np.zeros(4), np.array([1.0, -1.0, 1.0, 1.0]), {}, "non-negative"),
        (np.zeros(4), None, {"init": "kmeans"}, "init"),
        (np.zeros(4), None, {"init": np.zeros(3)}, "shape"),
        (np.zeros(4), None, {"max_iters": -1}, "max_iters"),
    ],
)
def test_bad_kmeans_input_raises(values, weights, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ws.kmeans_1d(values, 2, weights, **kwargs)


# ------------------------------------------------------------------------------------------------
# Layers, encode / decode
# ------------------------------------------------------------------------------------------------


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(16, name="fc1")(x))
        x = nn.relu(nn.Dense(16, name="fc2")(x))
        return nn.Dense(3, name="fc3")(x)


def mlp_params():
    return MLP().init(jax.random.key(0), jnp.zeros((1, 6)))["params"]


def random_mask(params, rate, seed):
    """0/1 pytree: kernels keep each weight with probability 1 - rate, other leaves all ones."""
    rng = np.random.default_rng(seed)

    def make(path, leaf):
        if jax.tree_util.keystr(path).endswith("['kernel']"):
            return (rng.random(leaf.shape) >= rate).astype(np.float32)
        return np.ones(leaf.shape, np.float32)

    return jax.tree_util.tree_map_with_path(make, params)


def assert_on_codebooks(params, shared):
    kernels = ws.kernel_leaves(params)
    for name, layer in shared.items():
        kernel = np.asarray(kernels[name])
        indices = np.asarray(layer.indices)
        np.testing.assert_array_equal(kernel[indices == ws.MASKED], 0.0)
        kept = indices != ws.MASKED
        np.testing.assert_array_equal(kernel[kept], np.asarray(layer.codebook)[indices[kept]])


def test_cluster_params_decodes_onto_codebooks_and_keeps_masked_weights_zero():
    params = mlp_params()
    mask = random_mask(params, 0.4, seed=0)
    importance = jax.tree_util.tree_map(jnp.abs, params)
    shared = ws.cluster_params(params, {"fc1": 2, "fc2": 3}, importance, mask)
    assert set(shared) == {"fc1", "fc2"}
    assert shared["fc1"].codebook.shape == (4,) and shared["fc2"].codebook.shape == (8,)
    decoded = ws.decode(params, shared)
    assert_on_codebooks(decoded, shared)
    for name in ("fc1", "fc2"):
        keep = np.asarray(mask[name]["kernel"]) != 0
        indices = np.asarray(shared[name].indices)
        np.testing.assert_array_equal(indices == ws.MASKED, ~keep)
        assert indices.min() >= ws.MASKED and indices.max() < 2 ** shared[name].bits
    # layers left out of ``bits`` and all biases are untouched
    np.testing.assert_array_equal(decoded["fc3"]["kernel"], params["fc3"]["kernel"])
    np.testing.assert_array_equal(decoded["fc1"]["bias"], params["fc1"]["bias"])


def test_encode_decode_round_trip():
    params = mlp_params()
    mask = random_mask(params, 0.3, seed=1)
    shared = ws.cluster_params(params, 3, mask=mask)
    decoded = ws.decode(params, shared)
    codebooks = {name: layer.codebook for name, layer in shared.items()}
    again = ws.encode(decoded, codebooks, mask)
    for name, layer in shared.items():
        np.testing.assert_array_equal(again[name].indices, layer.indices)
    # encoding arbitrary params uses only codebook values, and re-encoding is idempotent
    encoded = ws.encode(params, codebooks, mask)
    once = ws.decode(params, encoded)
    assert_on_codebooks(once, encoded)
    twice = ws.decode(params, ws.encode(once, codebooks, mask))
    jax.tree_util.tree_map(np.testing.assert_array_equal, once, twice)


def test_cluster_params_with_uniform_importance_equals_plain_kmeans():
    params = mlp_params()
    shared = ws.cluster_params(params, 2)
    kernel = np.ravel(params["fc2"]["kernel"])
    result = ws.kmeans_1d(kernel, 2)
    np.testing.assert_array_equal(shared["fc2"].codebook, result.codebook)
    np.testing.assert_array_equal(np.ravel(shared["fc2"].indices), result.indices)


def test_cluster_params_bad_input_raises():
    params = mlp_params()
    with pytest.raises(ValueError, match="unknown layers"):
        ws.cluster_params(params, {"conv9": 2})
    with pytest.raises(ValueError, match="bits"):
        ws.cluster_params(params, {"fc1": 9})
    with pytest.raises(TypeError, match="bits"):
        ws.cluster_params(params, 2.5)
    negative = jax.tree_util.tree_map(lambda p: -jnp.ones_like(p), params)
    with pytest.raises(ValueError, match="non-negative"):
        ws.cluster_params(params, 2, importance=negative)
    wrong_shape = jax.tree_util.tree_map(lambda p: jnp.ones((*p.shape, 1)), params)
    with pytest.raises(ValueError, match="shape"):
        ws.cluster_params(params, 2, importance=wrong_shape)
    with pytest.raises(ValueError, match="init"):
        ws.cluster_params(params, 2, init="uniform")
    with pytest.raises(ValueError, match="kernel"):
        ws.cluster_params({"fc1": {"bias": jnp.zeros(3)}}, 2)
    with pytest.raises(ValueError, match="2\\^bits"):
        ws.encode(params, {"fc1": jnp.zeros(3)})


# ------------------------------------------------------------------------------------------------
# Shared-weight fine-tuning
# ------------------------------------------------------------------------------------------------


def mlp_loss(params, x, y):
    logits = MLP().apply({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def regression_batch():
    rng = np.random.default_rng(4)
    return rng.standard_normal((32, 6)).astype(np.float32), rng.integers(0, 3, 32)


@pytest.mark.parametrize(
    "optimizer",
    [optax.sgd(0.1), optax.sgd(0.1, momentum=0.9), optax.adam(1e-2), optax.adamw(1e-2, 0.1)],
    ids=["sgd", "momentum", "adam", "adamw"],
)
def test_fine_tuning_keeps_weights_on_codebooks_and_masked_at_zero(optimizer):
    params = mlp_params()
    mask = random_mask(params, 0.3, seed=2)
    shared = ws.cluster_params(params, 2, mask=mask)
    params = ws.decode(params, shared)
    tx = optax.chain(ws.shared_gradients(shared), optimizer)
    opt_state = tx.init(params)
    x, y = regression_batch()

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(mlp_loss)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(6):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    tuned = ws.extract_codebooks(params, shared)
    assert_on_codebooks(params, tuned)  # every weight equals its (moved) centroid exactly
    for name in shared:
        assert not np.allclose(tuned[name].codebook, shared[name].codebook)
    assert losses[-1] < losses[0]


def test_sgd_moves_each_centroid_by_the_sum_of_its_members_gradients():
    params = mlp_params()
    mask = random_mask(params, 0.3, seed=3)
    shared = ws.cluster_params(params, 3, mask=mask)
    params = ws.decode(params, shared)
    x, y = regression_batch()
    grads = jax.grad(mlp_loss)(params, x, y)
    learning_rate = 0.05
    tx = optax.chain(ws.shared_gradients(shared), optax.sgd(learning_rate))
    updates, _ = tx.update(grads, tx.init(params), params)
    tuned = ws.extract_codebooks(optax.apply_updates(params, updates), shared)
    for name, layer in shared.items():
        gradient = np.asarray(grads[name]["kernel"], np.float64)
        indices = np.asarray(layer.indices)
        for j in range(layer.codebook.shape[0]):
            expected = float(layer.codebook[j]) - learning_rate * gradient[indices == j].sum()
            np.testing.assert_allclose(float(tuned[name].codebook[j]), expected, atol=1e-6)
        # biases are not shared: their gradient passes through unchanged
        np.testing.assert_array_equal(updates[name]["bias"], -learning_rate * grads[name]["bias"])


def test_snap_to_codebooks_restores_exact_sharing():
    params = mlp_params()
    mask = random_mask(params, 0.3, seed=5)
    shared = ws.cluster_params(params, 2, mask=mask)
    decoded = ws.decode(params, shared)
    noise = jax.tree_util.tree_map(
        lambda p: 1e-3 * jax.random.normal(jax.random.key(9), p.shape), decoded
    )
    snapped = ws.snap_to_codebooks(jax.tree_util.tree_map(jnp.add, decoded, noise), shared)
    assert_on_codebooks(snapped, ws.extract_codebooks(snapped, shared))
    for name, layer in shared.items():
        np.testing.assert_allclose(
            ws.extract_codebooks(snapped, shared)[name].codebook, layer.codebook, atol=1e-3
        )


# ------------------------------------------------------------------------------------------------
# Size accounting and Huffman coding
# ------------------------------------------------------------------------------------------------


def test_size_report_against_hand_count():
    indices = np.array([[0, 0, 0], [0, 0, 0], [1, 1, 1], [2, 3, ws.MASKED]], np.int32)
    params = {
        "fc": {"kernel": jnp.zeros((4, 3)), "bias": jnp.zeros(3)},
        "bn": {"scale": jnp.ones(5)},
    }
    shared = {"fc": ws.SharedLayer(jnp.arange(4, dtype=jnp.float32), jnp.asarray(indices))}
    report = ws.size_report(params, shared)
    layer = report.layers["fc"]
    # 11 kept weights x 2 bits; 12-bit pruning mask; 4 x 32-bit codebook entries
    assert (layer.index_bits, layer.mask_bits, layer.codebook_bits) == (22, 12, 128)
    # counts (6, 3, 1, 1): Huffman lengths (1, 2, 3, 3) -> 6 + 6 + 3 + 3 bits
    assert layer.huffman_index_bits == 18
    assert report.other_bits == 32 * (3 + 5)
    assert report.float32_bits == 32 * (12 + 3 + 5)
    assert report.total_bits == 22 + 12 + 128 + 256
    assert report.huffman_total_bits == 18 + 12 + 128 + 256
    assert report.compression_ratio == pytest.approx(640 / 418)
    assert report.huffman_compression_ratio == pytest.approx(640 / 414)


def test_size_report_without_pruning_has_no_mask_bits():
    params = mlp_params()
    shared = ws.cluster_params(params, 4)
    report = ws.size_report(params, shared)
    for name, layer in report.layers.items():
        assert layer.mask_bits == 0 and layer.num_pruned == 0
        assert layer.index_bits == 4 * np.size(params[name]["kernel"])
        assert layer.huffman_index_bits <= layer.index_bits
    assert report.compression_ratio > 1


def test_huffman_hand_examples():
    np.testing.assert_array_equal(ws.huffman_code_lengths([5, 2, 1, 1]), [1, 2, 3, 3])
    np.testing.assert_array_equal(ws.huffman_code_lengths([0, 7, 0]), [0, 1, 0])
    np.testing.assert_array_equal(ws.huffman_code_lengths([1, 1, 1, 1]), [2, 2, 2, 2])
    assert ws.huffman_bits([0, 0]) == 0
    with pytest.raises(ValueError, match="non-negative"):
        ws.huffman_code_lengths([3, -1])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 1000), min_size=2, max_size=40))
def test_huffman_is_a_complete_prefix_code_within_the_entropy_bound(counts):
    counts = np.asarray(counts)
    lengths = ws.huffman_code_lengths(counts)
    used = counts > 0
    np.testing.assert_array_equal(lengths > 0, used)
    total = counts.sum()
    if used.sum() >= 2:
        assert np.isclose(np.sum(2.0 ** -lengths[used]), 1.0)  # Kraft equality: complete code
        p = counts[used] / total
        entropy_bits = -total * np.sum(p * np.log2(p))
        assert entropy_bits - 1e-6 <= ws.huffman_bits(counts) < entropy_bits + total
        # optimal cost equals the sum of all merged weights (an independent computation)
        weights = sorted(int(c) for c in counts[used])
        merged = 0
        while len(weights) > 1:
            a, b = weights.pop(0), weights.pop(0)
            merged += a + b
            weights = sorted([*weights, a + b])
        assert ws.huffman_bits(counts) == merged


# ------------------------------------------------------------------------------------------------
# The weight sharing experiment end to end (xaijax.experiments.share)
# ------------------------------------------------------------------------------------------------

SHARE_WIDTHS = {"conv1": 4, "conv2": 4, "conv3": 8, "conv4": 8, "fc1": 16}


def test_share_experiment_end_to_end_from_pruned_variables(tmp_path):
    """Cluster, fine-tune through xaijax.training.fit and snap: on codebooks, pruned stay zero."""
    import csv
    import importlib.util
    import json

    import ml_collections

    from xaijax import models
    from xaijax.experiments import share

    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("smoke", repo / "configs" / "digits_smoke.py")
    smoke = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(smoke)
    config = smoke.get_config()
    config.model.widths = SHARE_WIDTHS
    model = models.get_model("vgg_small", widths=SHARE_WIDTHS)
    variables = jax.device_get(model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False))
    kernel = np.array(variables["params"]["fc1"]["kernel"])
    kernel[::2] = 0.0  # pruned weights: they must stay out of the clustering and stay zero
    variables["params"]["fc1"]["kernel"] = kernel
    config.share = ml_collections.ConfigDict(
        {
            "bits": (2,),
            "importances": ("magnitude",),
            "importance": {"num_examples": 64, "batch_size": 64},
        }
    )
    results = share.run(config, tmp_path / "run", variables=variables)
    assert results["pruned_weights"] == int(np.sum(kernel == 0))
    assert [(r["importance"], r["bits"]) for r in results["rows"]] == [("magnitude", 2)]
    for row in results["rows"]:
        assert row["max_off_codebook_after_finetune"] == 0.0
        assert 0 <= row["accuracy_shared"] <= 1 and 0 <= row["accuracy_finetuned"] <= 1
        assert row["layers"]["fc1"]["num_pruned"] == int(np.sum(kernel == 0))
        assert row["size_bits"] < row["float32_bits"]
    with open(tmp_path / "run" / "results.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 1
    assert (tmp_path / "run" / "accuracy_vs_bits.png").stat().st_size > 0
    assert json.loads((tmp_path / "run" / "results.json").read_text())["rows"][0]["bits"] == 2

    config.share.bits = (9,)
    with pytest.raises(ValueError, match=r"config\.share\.bits"):
        share.run(config, tmp_path / "bad", variables=variables)


def test_share_importance_exponent_powers_the_kmeans_weights():
    """p = 0.5 weighs k-means by sqrt|w| (magnitude), p = 0 clusters like plain k-means."""
    from xaijax import models
    from xaijax.experiments import share

    model = models.get_model("vgg_small", widths=SHARE_WIDTHS)
    variables = jax.device_get(model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False))
    section = share.defaults()
    for exponent in (1.0, 0.5, 0.0):
        section.importance_exponent = exponent
        share.validate(section)
        weights = share.importance_scores("magnitude", section, model, variables, None)
        for name, layer in variables["params"].items():
            if "kernel" in layer:
                expected = np.abs(np.asarray(layer["kernel"])) ** exponent
                np.testing.assert_allclose(weights[name]["kernel"], expected, rtol=1e-6)
    flat = ws.cluster_params(variables["params"], 2, weights)
    plain = ws.cluster_params(variables["params"], 2)
    for name in plain:
        np.testing.assert_array_equal(flat[name].indices, plain[name].indices)
        np.testing.assert_allclose(flat[name].codebook, plain[name].codebook, rtol=1e-6)
    section.importance_exponent = -1.0
    with pytest.raises(ValueError, match="importance_exponent must be >= 0"):
        share.validate(section)
