"""Importance criteria: known answers, closed forms, additivity over examples, options, errors."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference_nets import draw_variables

from xaijax import importance, models

SHAPE = (28, 28, 1)
DATA_CRITERIA = ("deeplift", "taylor")


@functools.cache
def lenet():
    """LeNet-5 with numpy-drawn weights (no compilation) and a few non-negative images."""
    model = models.get_model("lenet5")
    variables = draw_variables(model, SHAPE, 0, 0.05, kernel_gain=np.sqrt(2.0))
    rng = np.random.default_rng(0)
    images = rng.uniform(0.0, 1.0, (6, *SHAPE)).astype(np.float32)
    labels = np.array([0, 3, 7, 3, 9, 1], np.int32)
    return model, variables, images, labels


def with_kernel(variables, name, update):
    params = {k: dict(v) for k, v in variables["params"].items()}
    params[name]["kernel"] = update(np.array(params[name]["kernel"]))
    return {"params": params}


@functools.cache
def batch_scorer(criterion, granularity, target):
    model = lenet()[0]
    return jax.jit(
        functools.partial(
            importance.score_batch, criterion, model, granularity=granularity, target=target
        )
    )


def assert_trees_close(a, b, rtol=1e-4, atol=1e-6):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


# ------------------------------------------------------------------------------------ registry


def test_registry_and_unknown_criterion():
    assert set(importance.CRITERIA) == {
        "deeplift",
        "deeplift_shap",
        "deeplift_magnitude",
        "lrp",
        "magnitude",
        "taylor",
        "random",
    }
    model, variables, images, labels = lenet()
    with pytest.raises(ValueError, match=r"unknown importance criterion 'hessian'.*deeplift"):
        importance.score("hessian", model, variables, (images, labels))


def test_bad_options_raise_before_work():
    model, variables, images, labels = lenet()
    data = (images, labels)
    cases = [
        ({"granularity": "layer"}, ValueError, "granularity"),
        ({"target": "max"}, ValueError, "target"),
        ({"reference": "noise"}, ValueError, "reference"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"num_examples": 7}, ValueError, "num_examples"),
        ({"num_examples": 0}, ValueError, "num_examples"),
        ({"reference": "blur", "blur_sigma": 0.0}, ValueError, "blur_sigma"),
        ({"reference": "samples", "num_references": 0}, ValueError, "num_references"),
        ({"reference": "samples", "num_references": 7}, ValueError, "num_references"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            importance.score("deeplift", model, variables, data, **kwargs)
    with pytest.raises(ValueError, match="needs data"):
        importance.score("taylor", model, variables)
    with pytest.raises(ValueError, match="images"):
        importance.score("taylor", model, variables, (images[:, :, :, 0], labels))
    with pytest.raises(ValueError, match="labels"):
        importance.score("taylor", model, variables, (images, labels[:3]))
    with pytest.raises(ValueError, match="labels"):
        importance.score("taylor", model, variables, (images, labels.astype(np.float32)))
    with pytest.raises(TypeError, match="Dataset"):
        importance.score("taylor", model, variables, images)
    with pytest.raises(ValueError, match="uses reference 'samples'"):
        importance.score("deeplift_shap", model, variables, data, reference="zeros")
    with pytest.raises(ValueError, match="granularity"):
        importance.score("magnitude", model, variables, granularity="filter")
    with pytest.raises(ValueError, match="does not use data"):
        importance.score_batch("magnitude", model, variables, images, labels)


# ------------------------------------------------------------------------------------ known answers


def test_magnitude_scaled_copy_and_weight_consistency():
    model, variables, _, _ = lenet()

    def scaled_copy(kernel):
        kernel[..., 1] = -2.5 * kernel[..., 0]
        return kernel

    variables = with_kernel(variables, "conv2", scaled_copy)
    units = importance.score("magnitude", model, variables)
    weights = importance.score("magnitude", model, variables, granularity="weight")
    assert set(units) == {s.name for s in model.layer_specs()}
    np.testing.assert_allclose(units["conv2"][1], 2.5 * units["conv2"][0], rtol=1e-6)
    for name, kernel_scores in weights.items():
        kernel = variables["params"][name]["kernel"]
        np.testing.assert_array_equal(kernel_scores["kernel"], np.abs(kernel))
        np.testing.assert_allclose(
            units[name], kernel_scores["kernel"].reshape(-1, kernel.shape[-1]).sum(0), rtol=1e-5
        )


@pytest.mark.parametrize("criterion", DATA_CRITERIA)
@pytest.mark.parametrize("granularity", importance.GRANULARITIES)
def test_filter_without_outgoing_weights_scores_zero(criterion, granularity):
    model, variables, images, labels = lenet()

    def cut_filter_2(kernel):  # conv2 reads conv1's channels on its input axis
        kernel[:, :, 2, :] = 0.0
        return kernel

    variables = with_kernel(variables, "conv2", cut_filter_2)
    scores = importance.score(
        criterion, model, variables, (images, labels), granularity=granularity, batch_size=4
    )
    conv1 = scores["conv1"] if granularity == "unit" else scores["conv1"]["kernel"]
    dead, alive = np.asarray(conv1[..., 2]), np.asarray(np.delete(conv1, 2, axis=-1))
    np.testing.assert_array_equal(dead, 0.0)
    assert np.all(alive.reshape(-1, 5).sum(0) > 0)


def test_taylor_matches_closed_form_at_the_classifier():
    # For the logits z = W h + b: dL/dz = softmax(z) - onehot(y), dL/dW_ij = h_i (p_j - y_j).
    model, variables, images, labels = lenet()

    def is_fc2(module, method):
        return method == "__call__" and module.name == "fc2"

    logits, state = model.apply(variables, images, train=False, capture_intermediates=is_fc2)
    hidden = jax.nn.relu(state["intermediates"]["fc2"]["__call__"][0])
    error = jax.nn.softmax(logits) - jax.nn.one_hot(labels, 10)
    kernel = variables["params"]["fc3"]["kernel"]
    units = batch_scorer("taylor", "unit", "label")(variables, images, labels)
    weights = batch_scorer("taylor", "weight", "label")(variables, images, labels)
    np.testing.assert_allclose(units["fc3"], jnp.abs(logits * error).sum(0), rtol=1e-4, atol=1e-6)
    expected = jnp.abs(kernel[None] * hidden[:, :, None] * error[:, None, :]).sum(0)
    np.testing.assert_allclose(weights["fc3"]["kernel"], expected, rtol=1e-4, atol=1e-6)


def test_deeplift_classifier_units_carry_the_target_logit_delta():
    # The classifier's units are the logits: only the target's contributes, by its full delta.
    model, variables, images, labels = lenet()
    units = batch_scorer("deeplift", "unit", "label")(variables, images[:1], labels[:1])
    logits = model.apply(variables, images[:1], train=False)[0]
    reference_logits = model.apply(variables, jnp.zeros((1, *SHAPE)), train=False)[0]
    expected = np.zeros(10)
    expected[labels[0]] = abs(logits[labels[0]] - reference_logits[labels[0]])
    np.testing.assert_allclose(units["fc3"], expected, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------ additivity


@pytest.mark.parametrize(
    ("criterion", "granularity", "target"),
    [
        ("deeplift", "unit", "label"),
        ("deeplift", "weight", "label"),
        ("deeplift", "unit", "all"),
        ("taylor", "unit", "predicted"),
        ("taylor", "weight", "label"),
    ],
)
def test_batch_score_is_sum_of_example_scores(criterion, granularity, target):
    model, variables, images, labels = lenet()
    scorer = batch_scorer(criterion, granularity, target)
    batch = scorer(variables, images, labels)
    singles = [scorer(variables, images[i : i + 1], labels[i : i + 1]) for i in range(len(images))]
    assert_trees_close(batch, jax.tree.map(lambda *s: sum(s), *singles))
    # Streaming with a padded last batch (3 + 2 examples) gives the mean of the first 5.
    streamed = importance.score(
        criterion,
        model,
        variables,
        (images, labels),
        granularity=granularity,
        target=target,
        batch_size=3,
        num_examples=5,
    )
    first_five = jax.tree.map(lambda *s: sum(s) / 5, *singles[:5])
    assert_trees_close(streamed, first_five)


# ------------------------------------------------------------------------------------ options


@pytest.mark.parametrize("criterion", DATA_CRITERIA)
@pytest.mark.parametrize("granularity", importance.GRANULARITIES)
def test_target_all_is_the_mean_over_classes(criterion, granularity):
    _, variables, images, labels = lenet()
    images = images[:2]
    every = batch_scorer(criterion, granularity, "all")(variables, images, labels[:2])
    by_label = batch_scorer(criterion, granularity, "label")
    per_class = [by_label(variables, images, np.full(2, c, np.int32)) for c in range(10)]
    assert_trees_close(every, jax.tree.map(lambda *s: sum(s) / 10, *per_class))


def test_target_predicted_uses_the_argmax():
    model, variables, images, labels = lenet()
    predicted = np.asarray(jnp.argmax(model.apply(variables, images, train=False), -1), np.int32)
    assert_trees_close(
        batch_scorer("deeplift", "unit", "predicted")(variables, images, labels),
        batch_scorer("deeplift", "unit", "label")(variables, images, predicted),
    )


def test_taylor_depends_on_the_label_through_the_loss():
    _, variables, images, labels = lenet()
    scorer = batch_scorer("taylor", "unit", "label")
    a = scorer(variables, images, labels)
    b = scorer(variables, images, (labels + 1) % 10)
    assert not np.allclose(a["conv1"], b["conv1"])


def test_references():
    model, variables, images, labels = lenet()
    mean = importance.shared_references("mean", images, 1, 0)
    np.testing.assert_allclose(mean[0], images.mean(0), rtol=1e-6)
    samples = importance.shared_references("samples", images, 4, seed=3)
    assert samples.shape == (4, *SHAPE)
    assert len({images.tolist().index(s.tolist()) for s in samples}) == 4
    constant = jnp.full((2, 9, 9, 2), 0.7)
    np.testing.assert_allclose(importance.gaussian_blur(constant, 1.5), constant, rtol=1e-6)
    blurred = importance.gaussian_blur(jnp.asarray(images), 2.0)
    assert blurred.shape == images.shape and float(blurred.std()) < float(images.std())
    # score() with reference="blur" equals the batch sum against each image's blurred copy.
    scorer = jax.jit(
        lambda v, x, y, r: importance.score_batch("deeplift", model, v, x, y, references=r)
    )
    streamed = importance.score(
        "deeplift", model, variables, (images, labels), reference="blur", batch_size=6
    )
    direct = scorer(
        variables, images, labels, importance.gaussian_blur(jnp.asarray(images), 2.0)[None]
    )
    assert_trees_close(streamed, jax.tree.map(lambda s: s / 6, direct))


def test_deeplift_shap_with_identical_references_equals_deeplift():
    model, variables, images, labels = lenet()
    reference = images[5]
    scorer = jax.jit(
        lambda v, x, y, r: importance.score_batch("deeplift", model, v, x, y, references=r)
    )
    once = scorer(variables, images[:3], labels[:3], reference[None])
    thrice = scorer(variables, images[:3], labels[:3], np.stack([reference] * 3))
    assert_trees_close(once, thrice)
    shap = importance.score(
        "deeplift_shap", model, variables, (images, labels), num_references=3, batch_size=6
    )
    assert set(shap) == set(once) and all(np.all(np.asarray(s) >= 0) for s in shap.values())


def test_random_scores_are_seeded():
    model, variables, _, _ = lenet()
    a = importance.score("random", model, variables, seed=1)
    b = importance.score("random", model, variables, seed=1)
    c = importance.score("random", model, variables, seed=2)
    assert_trees_close(a, b, rtol=0, atol=0)
    assert not np.allclose(a["fc1"], c["fc1"])
    for name, s in a.items():
        assert s.shape == variables["params"][name]["kernel"].shape[-1:]
        assert np.all((s >= 0) & (s < 1))
    w = importance.score("random", model, variables, granularity="weight", seed=1)
    assert w["conv2"]["kernel"].shape == variables["params"]["conv2"]["kernel"].shape


@pytest.mark.parametrize("granularity", importance.GRANULARITIES)
def test_deeplift_magnitude_is_the_geometric_mean_of_its_parts(granularity):
    model, variables, images, labels = lenet()
    kwargs = dict(granularity=granularity, batch_size=6)
    both = importance.score("deeplift_magnitude", model, variables, (images, labels), **kwargs)
    alone = importance.score("deeplift", model, variables, (images, labels), **kwargs)
    for name, kernel in variables["params"].items():
        kernel = np.abs(np.asarray(kernel["kernel"], np.float64))
        if granularity == "unit":  # L1 norm of each unit's kernel slice, computed here.
            l1 = kernel.reshape(-1, kernel.shape[-1]).sum(0)
            expected = np.sqrt(np.asarray(alone[name]) * l1)
            np.testing.assert_allclose(both[name], expected, rtol=1e-5, atol=1e-8)
        else:
            expected = np.sqrt(np.asarray(alone[name]["kernel"]) * kernel)
            np.testing.assert_allclose(both[name]["kernel"], expected, rtol=1e-5, atol=1e-8)


def test_combined_criterion_needs_a_data_free_partner():
    bad = importance.Criterion("twice_deeplift", per_example=importance.deeplift_per_example)
    bad = dataclasses.replace(bad, times="taylor")
    with pytest.raises(ValueError, match="times='taylor' must name a registered data-free"):
        importance.register_criterion(bad)
    assert "twice_deeplift" not in importance.CRITERIA


def test_target_all_weight_scores_through_the_sharded_engine():
    """``score`` shards its batches; target='all' of weight scores is the mean of the per-class
    label scores there too (vmapping the conv kernel pullback over classes failed under it)."""
    model, variables, images, _ = lenet()
    images = images[:2]
    kwargs = dict(granularity="weight", batch_size=2)
    every = importance.score(
        "deeplift", model, variables, (images, np.zeros(2, np.int32)), target="all", **kwargs
    )
    per_class = [
        importance.score("deeplift", model, variables, (images, np.full(2, c, np.int32)), **kwargs)
        for c in range(10)
    ]
    assert_trees_close(every, jax.tree.map(lambda *s: sum(s) / 10, *per_class))
