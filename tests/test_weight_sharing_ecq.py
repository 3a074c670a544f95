"""Tests for xaijax.weight_sharing.ecq (relevance-aware entropy-constrained sharing) and its use in
the share experiment (config fields, fingerprints, row names)."""

from __future__ import annotations

import copy
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xaijax import weight_sharing as ws

N = 64  # one shape for most tests keeps jit recompilation cheap
BITS = 2


def ecq_reference(values, codebook, relevance=None, mask=None, lam=0.0, zero=True, iters=30):
    """The ECQ iteration written out in float64 numpy, cost matrix and all.

    Pins the entry nearest 0 to 0, starts from uniform P, then alternates: assignment
    a_i = argmin_k m_ik (w_i - c_k)^2 + lam * (-log2 P_k) (first minimum; m_iz = R_i / mean R),
    non-zero centroids <- plain means of their members (empty ones kept), P <- occupancy; stops
    when no assignment changes. Returns (sorted codebook, indices into it or -1, history).
    """
    x = np.asarray(values, np.float64)
    keep = np.ones(x.shape, bool) if mask is None else np.asarray(mask) != 0
    c = np.sort(np.asarray(codebook, np.float64))
    k = c.size
    z = int(np.argmin(np.abs(c))) if zero else -1
    if zero:
        c[z] = 0.0
    r = np.ones_like(x)
    if relevance is not None:
        rel = np.asarray(relevance, np.float64)
        mean = rel[keep].mean()
        r = rel / mean if mean > 0 else r

    def penalty(p):
        with np.errstate(divide="ignore"):
            info = np.where(p > 0, -np.log2(np.where(p > 0, p, 1.0)), np.inf)
        return lam * info if lam > 0 else np.zeros(k)

    def costs(c, p):
        d = (x[:, None] - c[None, :]) ** 2
        if zero:
            d[:, z] *= r
        return d + penalty(p)[None, :]

    def objective(c, p, a):
        return float(sum(costs(c, p)[i, a[i]] for i in np.flatnonzero(keep)))

    p = np.full(k, 1.0 / k)
    a = np.argmin(costs(c, p), axis=1)
    history = [objective(c, p, a)]
    for _ in range(iters):
        counts = np.array([np.sum(keep & (a == j)) for j in range(k)], np.float64)
        for j in range(k):
            if j != z and counts[j] > 0:
                c[j] = x[keep & (a == j)].mean()
        p = counts / counts.sum()
        new = np.argmin(costs(c, p), axis=1)
        history.append(objective(c, p, new))
        changed = np.any((new != a) & keep)
        a = new
        if not changed:
            break
    order = np.argsort(c, kind="stable")
    rank = np.argsort(order)
    return c[order], np.where(keep, rank[a], -1), np.array(history)


def problem(seed=0, n=N):
    rng = np.random.default_rng(seed)
    values = rng.laplace(0.0, 1.0, n).astype(np.float32)
    relevance = rng.exponential(1.0, n).astype(np.float32)
    mask = rng.random(n) > 0.2
    return values, relevance, mask


INIT = np.array([-1.5, -0.4, 0.3, 1.7], np.float32)


@pytest.mark.parametrize(
    "lam, use_relevance, use_mask",
    [(0.0, False, False), (0.3, False, False), (0.3, True, True), (1.0, True, False)],
)
def test_ecq_matches_the_float64_reference(lam, use_relevance, use_mask):
    values, relevance, mask = problem(1)
    relevance = relevance if use_relevance else None
    mask = mask if use_mask else None
    result = ws.ecq_cluster(values, BITS, relevance, lam=lam, mask=mask, init=INIT)
    codebook, indices, history = ecq_reference(values, INIT, relevance, mask, lam)
    np.testing.assert_array_equal(np.asarray(result.indices), indices)
    np.testing.assert_allclose(np.asarray(result.codebook), codebook, rtol=1e-5, atol=1e-6)
    assert int(result.num_iters) == history.size - 1
    np.testing.assert_allclose(np.asarray(result.history)[: history.size], history, rtol=1e-4)


def test_lambda_zero_uniform_relevance_without_zero_centroid_is_kmeans():
    """lam = 0, r_i = 1 and no zero centroid: the same iteration as kmeans_1d, same init."""
    values, _, _ = problem(2)
    ecq = ws.ecq_cluster(values, BITS, lam=0.0, zero_centroid=False, init=INIT)
    km = ws.kmeans_1d(values, BITS, init=INIT)
    np.testing.assert_array_equal(np.asarray(ecq.indices), np.asarray(km.indices))
    np.testing.assert_allclose(np.asarray(ecq.codebook), np.asarray(km.codebook), rtol=1e-5)
    np.testing.assert_allclose(float(ecq.objective), float(km.objective), rtol=1e-5)
    assert int(ecq.zero_index) == -1


def test_lambda_zero_uniform_relevance_assigns_to_the_nearest_entry():
    """With the zero centroid pinned, lam = 0 and constant relevance (normalised to r_i = 1) the
    result is a k-means fixed point: every value sits on its nearest entry; the constant does not
    matter."""
    values, _, _ = problem(3)
    plain = ws.ecq_cluster(values, BITS, lam=0.0, init=INIT)
    constant = ws.ecq_cluster(values, BITS, np.full(N, 3.7, np.float32), lam=0.0, init=INIT)
    assert int(plain.num_iters) < 30
    nearest = ws.nearest_indices(jnp.asarray(values), plain.codebook)
    np.testing.assert_array_equal(np.asarray(plain.indices), np.asarray(nearest))
    np.testing.assert_array_equal(np.asarray(constant.indices), np.asarray(plain.indices))
    np.testing.assert_array_equal(np.asarray(constant.codebook), np.asarray(plain.codebook))


@pytest.mark.parametrize("lam", [0.0, 0.2, 1.0])
def test_each_iteration_does_not_increase_the_objective(lam):
    values, relevance, mask = problem(4)
    result = ws.ecq_cluster(values, 3, relevance, lam=lam, mask=mask, max_iters=30)
    history = np.asarray(result.history, np.float64)
    assert np.all(np.diff(history) <= 1e-5 * history[0])
    assert float(result.objective) == history[int(result.num_iters)]
    # Converged: J is the distortion plus lam * n * H(occupancy) of the returned assignment.
    assert int(result.num_iters) < 30
    c, a = np.asarray(result.codebook, np.float64), np.asarray(result.indices)
    keep = a >= 0
    p = np.bincount(a[keep], minlength=c.size) / keep.sum()
    np.testing.assert_allclose(np.asarray(result.probabilities), p, rtol=1e-6)
    x = np.asarray(values, np.float64)[keep]
    r = np.asarray(relevance, np.float64)
    r = (r / r[keep].mean())[keep]
    members = a[keep]
    distortion = (x - c[members]) ** 2
    distortion = np.where(members == int(result.zero_index), r * distortion, distortion)
    information = -np.log2(p[members]) if lam > 0 else np.zeros_like(x)
    np.testing.assert_allclose(
        float(result.objective), np.sum(distortion + lam * information), rtol=1e-5
    )


def test_zero_cluster_grows_with_lambda_and_the_zero_centroid_is_exactly_zero():
    """On a fixed problem the zero cluster grows and the index entropy falls as lam grows."""
    values, relevance, _ = problem(5)
    scale = float(np.mean(values.astype(np.float64) ** 2))
    for rel in (None, relevance):
        zero_counts, entropies = [], []
        for lam in (0.0, 0.05, 0.1, 0.2, 0.4, 0.8):
            result = ws.ecq_cluster(values, BITS, rel, lam=lam * scale, init=INIT)
            codebook, indices = np.asarray(result.codebook), np.asarray(result.indices)
            zero = int(result.zero_index)
            assert codebook[zero] == 0.0 and not np.signbit(codebook[zero])
            assert np.all(np.diff(codebook) >= 0)
            zero_counts.append(int(np.sum(indices == zero)))
            p = np.bincount(indices, minlength=2**BITS) / indices.size
            entropies.append(-np.sum(p[p > 0] * np.log2(p[p > 0])))
        assert zero_counts == sorted(zero_counts) and zero_counts[-1] > zero_counts[0]
        assert np.all(np.diff(entropies) <= 1e-9)


def test_lower_relevance_sends_more_weights_to_zero():
    """Every value twice, once with low and once with high relevance: both copies see the same
    codebook and probabilities, so a high-relevance copy on zero implies its low copy is too."""
    values, _, _ = problem(6, n=N // 2)
    doubled = np.concatenate([values, values])
    relevance = np.concatenate([np.full(N // 2, 0.2), np.full(N // 2, 5.0)]).astype(np.float32)
    scale = float(np.mean(values.astype(np.float64) ** 2))
    for lam in (0.0, 0.1):
        result = ws.ecq_cluster(doubled, BITS, relevance, lam=lam * scale, init=INIT)
        on_zero = np.asarray(result.indices) == int(result.zero_index)
        low, high = on_zero[: N // 2], on_zero[N // 2 :]
        assert np.all(low >= high)
        assert low.sum() > high.sum()


def test_masked_values_stay_out():
    """A masked value gets MASKED and changes nothing: same result as clustering the kept ones."""
    values, relevance, mask = problem(7)
    values_out = values.copy()
    values_out[~mask] = 1e3  # far outliers: they would move a centroid if they took part
    masked = ws.ecq_cluster(values_out, BITS, relevance, lam=0.3, mask=mask, init=INIT)
    kept = ws.ecq_cluster(values[mask], BITS, relevance[mask], lam=0.3, init=INIT)
    indices = np.asarray(masked.indices)
    assert np.all(indices[~mask] == ws.MASKED)
    np.testing.assert_array_equal(indices[mask], np.asarray(kept.indices))
    np.testing.assert_array_equal(np.asarray(masked.codebook), np.asarray(kept.codebook))
    np.testing.assert_allclose(np.asarray(masked.probabilities), np.asarray(kept.probabilities))


def tiny_params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "conv": {
            "kernel": rng.normal(0, 0.3, (4, 4, 1, 4)).astype(np.float32),
            "bias": np.zeros(4),
        },
        "dense": {"kernel": rng.normal(0, 0.05, (8, 8)).astype(np.float32)},
    }


def test_ecq_cluster_params_scales_lambda_per_layer_and_keeps_pruned_weights_out():
    params = tiny_params()
    params["dense"]["kernel"][::3] = 0.0
    mask = {
        name: {"kernel": (layer["kernel"] != 0).astype(np.float32)}
        for name, layer in params.items()
    }
    relevance = jax.tree.map(
        lambda m: np.abs(m) + 0.1,
        {name: {"kernel": layer["kernel"]} for name, layer in params.items()},
    )
    shared = ws.ecq_cluster_params(params, BITS, relevance, mask, lam=0.1)
    for name, layer in shared.items():
        kernel = params[name]["kernel"]
        keep = kernel != 0
        mean_square = float(np.mean(kernel[keep].astype(np.float64) ** 2))
        direct = ws.ecq_cluster(
            kernel.ravel(),
            BITS,
            relevance[name]["kernel"].ravel(),
            lam=0.1 * float(np.float32(mean_square)),
            mask=keep.ravel(),
            key=jax.random.fold_in(jax.random.key(0), list(params).index(name)),
        )
        np.testing.assert_array_equal(np.asarray(layer.indices).ravel(), np.asarray(direct.indices))
        assert np.all(np.asarray(layer.indices)[~keep] == ws.MASKED)
        assert np.any(np.asarray(layer.codebook) == 0.0)
    decoded = ws.decode(params, shared)
    assert np.all(np.asarray(decoded["dense"]["kernel"])[params["dense"]["kernel"] == 0] == 0.0)
    # lam is relative to the layer's scale: scaling a kernel leaves its assignment unchanged.
    scaled = copy.deepcopy(params)
    scaled["dense"]["kernel"] = scaled["dense"]["kernel"] * np.float32(8.0)
    again = ws.ecq_cluster_params(scaled, BITS, relevance, mask, lam=0.1)
    np.testing.assert_array_equal(
        np.asarray(again["dense"].indices), np.asarray(shared["dense"].indices)
    )
    np.testing.assert_allclose(
        np.asarray(again["dense"].codebook), 8.0 * np.asarray(shared["dense"].codebook), rtol=1e-5
    )


def test_ecq_sparsity_shows_as_a_smaller_huffman_size():
    params = tiny_params(1)
    plain = ws.size_report(params, ws.cluster_params(params, 3))
    ecq = ws.size_report(params, ws.ecq_cluster_params(params, 3, lam=0.1))
    assert ecq.huffman_total_bits < plain.huffman_total_bits
    assert ecq.total_bits == plain.total_bits  # packed indices: same bits per weight


def test_bad_inputs_raise_named_errors():
    values, relevance, _ = problem(8)
    with pytest.raises(ValueError, match="bits"):
        ws.ecq_cluster(values, 0, lam=0.1)
    with pytest.raises(ValueError, match="bits"):
        ws.ecq_cluster(values, 9, lam=0.1)
    with pytest.raises(TypeError, match="bits"):
        ws.ecq_cluster(values, 2.0, lam=0.1)
    with pytest.raises(ValueError, match="lam"):
        ws.ecq_cluster(values, BITS, lam=-0.1)
    with pytest.raises(ValueError, match="lam"):
        ws.ecq_cluster(values, BITS, lam=float("nan"))
    with pytest.raises(ValueError, match="relevance has shape"):
        ws.ecq_cluster(values, BITS, relevance[:-1], lam=0.1)
    with pytest.raises(ValueError, match="relevance must be finite"):
        ws.ecq_cluster(values, BITS, np.where(relevance > 1, np.nan, relevance), lam=0.1)
    with pytest.raises(ValueError, match="relevance must be non-negative"):
        ws.ecq_cluster(values, BITS, -relevance, lam=0.1)
    with pytest.raises(ValueError, match="values must be finite"):
        ws.ecq_cluster(np.where(values > 1, np.nan, values), BITS, lam=0.1)
    with pytest.raises(ValueError, match="zero_centroid"):
        ws.ecq_cluster(values, BITS, relevance, lam=0.1, zero_centroid=False)
    with pytest.raises(ValueError, match="mask has shape"):
        ws.ecq_cluster(values, BITS, lam=0.1, mask=np.ones(N - 1))
    with pytest.raises(ValueError, match="init"):
        ws.ecq_cluster(values, BITS, lam=0.1, init="nope")
    with pytest.raises(ValueError, match="max_iters"):
        ws.ecq_cluster(values, BITS, lam=0.1, max_iters=-1)
    params = tiny_params()
    with pytest.raises(ValueError, match="relevance has no kernel entry"):
        ws.ecq_cluster_params(params, BITS, {"conv": {"kernel": np.ones((4, 4, 1, 4))}}, lam=0.1)
    with pytest.raises(ValueError, match="lam"):
        ws.ecq_cluster_params(params, BITS, lam=-1.0)


# The share experiment: config, fingerprints and rows.


def test_share_config_validates_the_ecq_fields():
    from xaijax.experiments import share

    for field, value in [
        ("assignments", ("kmeans", "ecqx")),
        ("assignments", ()),
        ("assignments", ("ecq", "ecq")),
        ("ecq_lambda", -0.5),
        ("ecq_lambda", float("nan")),
        ("ecq_lambda", float("inf")),
    ]:
        section = share.defaults()
        section[field] = value
        with pytest.raises(ValueError, match=f"config.share.{field}"):
            share.validate(section)
    section = share.defaults()
    assert tuple(section.assignments) == ("kmeans",)
    section.assignments = ("kmeans", "ecq")
    share.validate(section)


def _fingerprint_setup():
    import importlib.util

    from xaijax import models

    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("smoke", repo / "configs" / "digits_smoke.py")
    smoke = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(smoke)
    config = smoke.get_config()
    model = models.get_model("vgg_small", widths=SHARE_WIDTHS)
    variables = {"params": tiny_params()}
    return config, model, variables


def test_kmeans_fingerprints_are_those_from_before_ecq():
    """k-means rows: the pre-ECQ formula over the section without the new fields, whatever
    ecq_lambda is and whether ECQ rows run beside them; ECQ rows change with ecq_lambda."""
    from xaijax import provenance
    from xaijax.experiments import common, share, stage

    config, model, variables = _fingerprint_setup()
    section = share.defaults()
    section.importances = ("uniform", "magnitude")
    section.bits = (2, 3)
    # The section before ECQ and the importance exponent existed (the exponent at its neutral 1).
    new_fields = ("assignments", "ecq_lambda", "importance_exponent")
    old_section = {k: v for k, v in section.to_dict().items() if k not in new_fields}
    # The importance sub-section's fields added later (scarce data, the rule) at their neutral
    # value (off) are left out too.
    old_section["importance"] = {
        k: v
        for k, v in old_section["importance"].items()
        if k not in ("examples_per_class", "rule")
    }
    old_base = provenance.fingerprint(
        unit="share",
        model=provenance.model_identity(model),
        start=provenance.variables_digest(variables),
        data=config.data,
        share={
            k: v
            for k, v in old_section.items()
            if k not in ("variables_dir", "trained_workdir", "bits", "importances")
        },
        finetune=common.finetune_settings(
            config,
            epochs=section.finetune_epochs,
            learning_rate=section.finetune_learning_rate,
            batch_size=section.finetune_batch_size,
        ),
    )
    scoring = {f"share.{f}" for f in share.SCORING_FIELDS}
    expected = {}
    for name in section.importances:
        inputs = {
            k: v
            for k, v in old_base.inputs.items()
            if name != "uniform"
            or not (k in scoring or k.startswith(tuple(f"{s}." for s in scoring)))
        }
        for bits in section.bits:
            expected[name, bits] = provenance.Fingerprint(inputs).extend(importance=name, bits=bits)

    variants = []
    for assignments, lam in [
        (("kmeans",), 0.05),
        (("kmeans", "ecq"), 0.05),
        (("kmeans", "ecq"), 0.2),
    ]:
        s = copy.deepcopy(section)
        s.assignments, s.ecq_lambda = assignments, lam
        found = share.row_fingerprints(config, s, model, variables)
        for (name, bits), fp in expected.items():
            assert found["kmeans", name, bits].digest == fp.digest
        variants.append(found)
    ecq_a, ecq_b = variants[1], variants[2]
    for key in ecq_a:
        if key[0] == "ecq":
            assert ecq_a[key].digest != ecq_b[key].digest
            assert ecq_a[key].digest not in {fp.digest for fp in expected.values()}
            assert ecq_a[key].inputs["assignment"] == "ecq"

    # The stage fingerprint: as before ECQ existed unless a row uses it.
    config.share = section
    old_config = copy.deepcopy(config)
    old_config.share = type(section)(old_section)
    old = stage.section_fingerprint("share", share.STARTING_POINT_FIELDS)(old_config, model, "d")
    assert share.stage_fingerprint(config, model, "d").digest == old.digest
    config.share.ecq_lambda = 0.3
    assert share.stage_fingerprint(config, model, "d").digest == old.digest
    config.share.assignments = ("kmeans", "ecq")
    with_ecq = share.stage_fingerprint(config, model, "d")
    assert with_ecq.digest != old.digest and with_ecq.inputs["share.ecq_lambda"] == 0.3


SHARE_WIDTHS = {"conv1": 4, "conv2": 4, "conv3": 8, "conv4": 8, "fc1": 16}


def test_share_experiment_with_ecq_end_to_end(tmp_path):
    """Digits, 3 bits, magnitude relevance: the ECQ row lies on its codebooks after fine-tuning,
    keeps its zero cluster at zero and pruned weights pruned, and its Huffman size is below that
    of the k-means row at the same bits (computed here as the experiment does: the index counts,
    which fine-tuning does not change); study rows name it ``ecq+magnitude``."""
    import ml_collections

    from xaijax.experiments import common, share
    from xaijax.study import rows as study_rows

    config, model, _ = _fingerprint_setup()
    config.model.widths = SHARE_WIDTHS
    variables = jax.device_get(model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False))
    kernel = np.array(variables["params"]["fc1"]["kernel"])
    kernel[::2] = 0.0  # pruned weights
    variables["params"]["fc1"]["kernel"] = kernel
    pruned = int(np.sum(kernel == 0))
    config.share = ml_collections.ConfigDict(
        {"bits": (3,), "importances": ("magnitude",), "assignments": ("ecq",)}
    )
    results = share.run(config, tmp_path / "run", variables=variables)
    [ecq] = results["rows"]
    assert (ecq["importance"], ecq["assignment"], ecq["relevance"]) == (
        "ecq_magnitude",
        "ecq",
        "magnitude",
    )
    assert ecq["ecq_lambda"] == share.defaults().ecq_lambda
    assert ecq["max_off_codebook_after_finetune"] == 0.0
    assert ecq["layers"]["fc1"]["num_pruned"] == pruned
    assert (tmp_path / "run" / "ecq_magnitude_3bit" / "row.json").exists()

    section = share.defaults()
    params = variables["params"]
    mask = common.zero_mask(params)
    scores = share.importance_scores("magnitude", section, model, variables, None)
    kmeans_shared = ws.cluster_params(params, 3, scores, mask, key=jax.random.key(section.seed))
    kmeans_size = ws.size_report(params, kmeans_shared)
    assert ecq["huffman_size_bits"] < kmeans_size.huffman_total_bits
    assert ecq["size_bits"] == kmeans_size.total_bits
    kmeans_zeros = sum(
        int(np.sum(np.asarray(k) == 0))
        for k in ws.kernel_leaves(ws.decode(params, kmeans_shared)).values()
    )
    assert ecq["zero_weights"] > kmeans_zeros >= pruned

    old_kmeans_row = {"importance": "magnitude", "bits": 3, "accuracy_finetuned": 0.5}
    old_kmeans_row |= {"accuracy_shared": 0.5, "size_bits": 8}
    pipeline_like = {
        "model": results["model"],
        "dataset": results["dataset"],
        "provenance": {"baseline": {"fingerprint": "b"}, "share": {"fingerprint": "s"}},
        "baseline": {"accuracy": 1.0, "params": 1, "flops": 1, "size_bits": 32},
        "share": {**results, "rows": [old_kmeans_row, ecq]},
    }
    rows = study_rows.rows_from_results(pipeline_like, 0)
    assert [r["method"] for r in rows if r["stage"] == "share"] == ["magnitude", "ecq+magnitude"]
