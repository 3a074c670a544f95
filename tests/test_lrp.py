"""xaijax.lrp: conservation, the numpy oracle of ``lrp_oracle``, errors, and the ``lrp`` criterion.

Relevance conservation (``xaijax.lrp.rules``): through a layer, ``sum_i R_i = sum_j R_j - A`` with
the absorbed relevance ``A = sum_j sum_k c_k (bias_k[j] + stabiliser_k[j]) / d_k[j] * R_j``; the
activations, max pooling and reshapes pass relevance unchanged; the output's relevance is the
target logit. So bias-free networks under z+ / alpha-beta conserve it exactly, and otherwise the
input relevances sum to the logit minus the layers' ``A`` (computed by the oracle from that
formula).
"""

from __future__ import annotations

import deeplift_oracle as dl
import flax.linen as nn
import jax
import jax.numpy as jnp
import lrp_oracle as oracle
import numpy as np
import pytest
from reference_nets import MLP, SmallCNN, assert_close, assert_far, draw_variables, numpy_params

from xaijax import importance, lrp

RULES = {
    "epsilon": lrp.epsilon(0.3),
    "zplus": lrp.zplus(),
    "alpha2beta1": lrp.alpha_beta(2, 1),
    "alpha1beta0": lrp.alpha_beta(1, 0),
    "composite": {"conv": lrp.alpha_beta(2, 1), "dense": lrp.epsilon(0.3)},
}
LABELS = np.array([0, 2, 1, 2])


def _cnn(bias_scale: float, seed: int = 7, widths: tuple[int, int, int] = (4, 5, 6)):
    model = SmallCNN(pool=True, widths=widths)
    variables = draw_variables(model, (8, 8, 2), seed=seed, bias_scale=bias_scale)
    x = np.random.default_rng(seed).uniform(size=(4, 8, 8, 2)).astype(np.float32)
    return model, variables, x


def _mlp(bias_scale: float, activation="relu", seed=3, widths=(7, 6, 3), inputs=5):
    model = MLP(widths, activation=activation)
    variables = draw_variables(model, (inputs,), seed=seed, bias_scale=bias_scale)
    x = np.random.default_rng(seed).standard_normal((4, inputs)).astype(np.float32)  # signed
    return model, variables, x


def _explain_both(model, variables, x, rules, with_weights=True):
    """xaijax's input, layer and weight relevances (one jit) and the oracle's explanation."""
    layers = model.oracle_layers(numpy_params(variables))
    expected = oracle.explain(layers, x, np.eye(3)[LABELS], oracle.oracle_rules(lrp.resolve(rules)))

    @jax.jit
    def run(x):
        fn = lambda v: model.apply(variables, v)
        inputs, delta = lrp.relevance(fn, x, target=LABELS, rules=rules, return_delta=True)
        hidden = lrp.layer_relevances(model, variables, x, target=LABELS, rules=rules)
        weights = (
            lrp.parameter_relevances(model, variables, x, target=LABELS, rules=rules)
            if with_weights
            else None
        )
        return inputs, delta, hidden, weights

    return layers, expected, run(x)


# ----------------------------------------------------------------------------------------------
# The numpy oracle.


@pytest.mark.parametrize(
    "net, name", [("cnn", name) for name in RULES] + [("mlp", name) for name in list(RULES)[:4]]
)
def test_matches_the_numpy_oracle(net, name):
    """Input, unit and weight relevances equal the oracle's (the MLP's inputs are signed, so the
    rules' input parts matter; ``composite`` on the MLP would repeat ``epsilon``)."""
    model, variables, x = _cnn(0.5) if net == "cnn" else _mlp(0.5)
    layers, expected, (inputs, delta, hidden, weights) = _explain_both(
        model, variables, x, RULES[name]
    )
    assert_close(inputs, expected.relevances[0])
    for layer_name, index in zip(model.names, dl.parametrized(layers), strict=True):
        assert_close(hidden[layer_name], expected.relevances[index + 1])
        assert_close(weights[layer_name], expected.weights[index])
    # The conservation error is exactly the relevance the layers absorb.
    logit = expected.values[-1][np.arange(4), LABELS]
    absorbed = sum(expected.absorbed.values())
    assert_close(delta, -absorbed)
    assert_close(inputs.reshape(4, -1).sum(1), logit - absorbed)
    # Some relevance really is absorbed, and gradient x input is not LRP under these rules.
    assert np.abs(absorbed).max() > 1e-2
    grad = jax.vmap(jax.grad(lambda v, t: model.apply(variables, v[None])[0, t]))(x, LABELS)
    assert_far(inputs, grad * x)


def test_tanh_passes_relevance_unchanged():
    model, variables, x = _mlp(0.5, activation="tanh")
    _, expected, (inputs, _, hidden, _) = _explain_both(model, variables, x, "epsilon")
    assert_close(inputs, expected.relevances[0])
    assert_close(hidden["dense0"], expected.relevances[1])


def test_a_plain_jitted_function_with_the_kernel_first_matches_the_oracle():
    """No Flax: ``W^T x`` written as ``dot(W, x)`` (the input is the second operand), biases
    added by broadcasting, nested jit."""
    model, variables, x = _mlp(0.5)
    params = numpy_params(variables)
    layers = model.oracle_layers(params)
    rules = lrp.alpha_beta(2, 1)

    @jax.jit
    def fn(v):
        for i, name in enumerate(model.names):
            kernel, bias = params[name]["kernel"], params[name]["bias"]
            v = jnp.einsum("io,bi->bo", kernel, v) + bias
            v = jax.nn.relu(v) if i < len(model.names) - 1 else v
        return v

    got = jax.jit(lambda v: lrp.relevance(fn, v, target=LABELS, rules=rules))(x)
    expected = oracle.explain(layers, x, np.eye(3)[LABELS], oracle.oracle_rules(lrp.resolve(rules)))
    assert_close(got, expected.relevances[0])


# ----------------------------------------------------------------------------------------------
# Conservation.


@pytest.mark.parametrize("name", ["zplus", "alpha2beta1", "alpha1beta0"])
@pytest.mark.parametrize("net", ["cnn", "mlp"])
def test_bias_free_networks_conserve_relevance_exactly(net, name):
    """Without biases and stabilisers, a layer absorbs only the terms ``c_k R_j`` of units whose
    denominator ``d_k[j]`` is 0 (e.g. alpha2-beta1 at a logit whose inputs all contribute
    positively, ``d_- = 0``). Examples without such a unit conserve relevance exactly at every
    layer; the others lose exactly those terms."""
    # Wide enough that most units get contributions of both signs.
    if net == "cnn":
        model, variables, x = _cnn(0.0, widths=(6, 8, 16))
    else:
        model, variables, x = _mlp(0.0, widths=(16, 16, 3), inputs=12)
    layers, expected, (inputs, delta, hidden, _) = _explain_both(
        model, variables, x, RULES[name], with_weights=False
    )
    logit = expected.values[-1][np.arange(4), LABELS]
    absorbed = sum(expected.absorbed.values())
    np.testing.assert_allclose(delta, -absorbed, atol=1e-5 * np.abs(logit).max())
    exact = np.all([np.abs(a) < 1e-12 for a in expected.absorbed.values()], axis=0)
    assert exact.sum() >= 2, "too few examples without a zero denominator"
    np.testing.assert_allclose(inputs.reshape(4, -1).sum(1)[exact], logit[exact], rtol=1e-5)
    for layer_name in model.names:  # every layer holds the whole relevance
        total = np.asarray(hidden[layer_name]).reshape(4, -1).sum(1)
        np.testing.assert_allclose(total[exact], logit[exact], rtol=1e-5)
    # Above each layer, the relevance lost is what the layers above absorb.
    above = np.zeros(4)
    for layer_name, index in reversed(list(zip(model.names, dl.parametrized(layers), strict=True))):
        total = np.asarray(hidden[layer_name]).reshape(4, -1).sum(1)
        np.testing.assert_allclose(total, logit - above, rtol=1e-5, atol=1e-6)
        above = above + expected.absorbed[index]


class _PoolNet(nn.Module):
    """conv (no bias) -> relu -> average pool -> residual ``+ relu`` -> flatten -> dense."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train
        h = nn.relu(nn.Conv(4, (3, 3), use_bias=False, name="conv")(x))
        h = nn.avg_pool(h, (2, 2), strides=(2, 2))
        h = h + nn.relu(h)
        return nn.Dense(3, use_bias=False, name="head")(h.reshape((h.shape[0], -1)))


def test_average_pooling_and_residual_sums_pass_relevance_proportionally():
    model = _PoolNet()
    x = np.random.default_rng(0).uniform(size=(4, 6, 6, 2)).astype(np.float32)
    variables = model.init(jax.random.key(1), x)
    selected = np.asarray(model.apply(variables, x))[np.arange(4), LABELS]

    @jax.jit
    def run(x):
        fn = lambda v: model.apply(variables, v)
        _, delta = lrp.relevance(fn, x, target=LABELS, rules="alpha1beta0", return_delta=True)
        hidden = lrp.layer_relevances(model, variables, x, target=LABELS, rules="alpha1beta0")
        return delta, hidden["conv"].reshape(4, -1).sum(1)

    delta, conv_total = run(x)
    np.testing.assert_allclose(delta, 0.0, atol=1e-5 * np.abs(selected).max())
    np.testing.assert_allclose(conv_total, selected, rtol=1e-5)


def test_weight_relevances_reduce_like_their_per_example_values():
    model, variables, x = _mlp(0.5)

    @jax.jit
    def run(x):
        def weights(**kwargs):
            return lrp.parameter_relevances(
                model, variables, x, target=LABELS, rules="alpha2beta1", **kwargs
            )

        return weights(), weights(reduce="mean"), weights(reduce="mean_abs", chunk_size=3)

    per_example, mean, mean_abs = run(x)
    for name in model.names:
        np.testing.assert_allclose(mean[name], per_example[name].mean(0), rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(
            mean_abs[name], np.abs(per_example[name]).mean(0), rtol=1e-4, atol=1e-7
        )


# ----------------------------------------------------------------------------------------------
# Errors.


@pytest.mark.parametrize(
    "fn, primitive",
    [
        (lambda v: jnp.sort(v, axis=1), "sort"),
        (lambda v: v * v[:, ::-1], "mul"),
        (lambda v: jax.nn.softmax(v, axis=1), "div"),
    ],
)
def test_unsupported_primitives_are_named(fn, primitive):
    with pytest.raises(lrp.UnsupportedOperationError, match=f"LRP cannot .*`{primitive}`"):
        lrp.relevance(fn, jnp.ones((2, 3)), target=0)


def test_bad_rules_raise_clear_errors():
    with pytest.raises(ValueError, match="alpha - beta = 1"):
        lrp.alpha_beta(1, 1)
    with pytest.raises(ValueError, match="beta >= 0"):
        lrp.alpha_beta(0.5, -0.5)
    with pytest.raises(ValueError, match="non-negative"):
        lrp.epsilon(-1.0)
    with pytest.raises(ValueError, match="unknown LRP rules 'gamma'"):
        lrp.relevance(jax.nn.relu, jnp.ones((2, 3)), target=0, rules="gamma")
    with pytest.raises(ValueError, match=r"missing \['conv'\]"):
        lrp.resolve({"dense": lrp.zplus()})
    with pytest.raises(ValueError, match="pass target"):
        lrp.relevance(jax.nn.relu, jnp.ones((2, 3)))


# ----------------------------------------------------------------------------------------------
# The ``lrp`` importance criterion.


def test_criterion_units_are_per_layer_normalised_layer_relevances():
    model, variables, x = _cnn(0.5)
    labels = jnp.asarray(LABELS)

    @jax.jit
    def run(x, labels):
        scores = importance.score_batch("lrp", model, variables, x, labels, rule="alpha2beta1")
        return scores, lrp.layer_relevances(model, variables, x, target=labels, rules="alpha2beta1")

    scores, relevances = run(x, labels)
    for name in model.names:
        r = np.asarray(relevances[name])
        per_unit = np.abs(r.sum(axis=tuple(range(1, r.ndim - 1))))
        expected = (per_unit / per_unit.sum(axis=1, keepdims=True)).sum(0)
        np.testing.assert_allclose(scores[name], expected, rtol=1e-5, atol=1e-7)
        assert np.isclose(float(scores[name].sum()), 4.0, rtol=1e-5)  # each example sums to 1


@pytest.mark.parametrize("granularity", ["unit", "weight"])
def test_criterion_batch_score_is_the_sum_of_example_scores(granularity):
    model, variables, x = _cnn(0.5)
    labels = jnp.asarray(LABELS)

    def batch_sum(images, labels):
        return importance.score_batch(
            "lrp", model, variables, images, labels, granularity=granularity
        )

    batch = jax.jit(batch_sum)(x, labels)
    singles = jax.jit(jax.vmap(lambda xi, li: batch_sum(xi[None], li[None])))(x, labels)
    total = jax.tree.map(lambda s: s.sum(0), singles)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), batch, total)
    if granularity == "unit":  # the engine's mean (batches of 3, padded) is the sum / count
        scored = importance.score("lrp", model, variables, (x, LABELS), batch_size=3)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b / 4, rtol=1e-4, atol=1e-7), scored, total
        )


def test_criterion_gives_zero_to_a_filter_without_outgoing_weights():
    model, variables, x = _cnn(0.5)
    params = jax.tree.map(jnp.asarray, variables["params"])
    params["conv2"]["kernel"] = params["conv2"]["kernel"].at[:, :, 1, :].set(0.0)  # conv1 filter 1
    params["fc2"]["kernel"] = params["fc2"]["kernel"].at[3, :].set(0.0)  # fc1 unit 3
    pruned = {"params": params}
    units = importance.score("lrp", model, pruned, (x, LABELS), num_examples=4)
    weights = importance.score("lrp", model, pruned, (x, LABELS), granularity="weight")
    assert float(units["conv1"][1]) == 0.0 and np.all(np.asarray(units["conv1"]) >= 0.0)
    assert float(units["fc1"][3]) == 0.0
    assert np.all(np.asarray(weights["conv2"]["kernel"][:, :, 1, :]) == 0.0)
    assert float(units["conv1"].sum()) == pytest.approx(1.0, rel=1e-5)


def test_criterion_rule_option():
    model, variables, x = _mlp(0.5)
    labels = jnp.asarray(LABELS)

    @jax.jit
    def run(x, labels):
        return [
            importance.score_batch("lrp", model, variables, x, labels, **rule)
            for rule in ({}, {"rule": "composite"}, {"rule": "alpha2beta1"})
        ]

    default, composite, other = run(x, labels)
    jax.tree.map(np.testing.assert_array_equal, default, composite)
    assert_far(default, other, margin=1e-3)
    with pytest.raises(ValueError, match="LRP presets"):
        importance.score_batch("lrp", model, variables, x, labels, rule="gamma")
