"""xaijax.deeplift against the independent plain-numpy DeepLIFT of ``deeplift_oracle``.

Each test also shows that it can fail: the oracle under a wrong rule (or the wrong multiplier)
gives values that differ from the expected ones by far more than the tolerance.
"""

from __future__ import annotations

import deeplift_oracle as oracle
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference_nets import (
    MARGIN,
    MLP,
    SmallCNN,
    assert_close,
    assert_far,
    draw_variables,
    numpy_params,
    one_hot,
)

from xaijax import deeplift

# ----------------------------------------------------------------------------------------------
# RevealCancel with exact zero deltas.


def _zero_delta_mlp(hidden: tuple[int, ...], seed: int):
    """An MLP with about a quarter of its weights exactly zero, and inputs equal to the shared
    reference in the first two coordinates and in some random entries. Large input deltas and
    first-layer biases shifted by -1 leave many hidden units off on both sides (delta exactly 0)
    with large positive and negative parts, the case where the zero-delta rule matters."""
    model = MLP((*hidden, 3))
    variables = draw_variables(model, (6,), seed)
    generator = np.random.default_rng([seed, 1])
    params = {
        name: {
            "kernel": jnp.where(generator.random(p["kernel"].shape) < 0.25, 0.0, p["kernel"]),
            "bias": p["bias"] + (-1.0 if name == "dense0" else 0.5),
        }
        for name, p in variables["params"].items()
    }
    ref = generator.standard_normal(6).astype(np.float32)
    x = (3.0 * generator.standard_normal((8, 6))).astype(np.float32)
    same = generator.random(x.shape) < 0.2
    same[:, :2] = True
    x = np.where(same, ref, x)
    labels = generator.integers(0, 3, 8)
    return model, {"params": params}, x, ref, labels


@pytest.mark.parametrize(
    ("hidden", "seed"), [((8, 8), 5), ((8, 7, 6), 5)], ids=["2hidden", "3hidden"]
)
def test_reveal_cancel_matches_numpy_with_zero_deltas(hidden, seed):
    """Inputs and hidden units whose delta is exactly zero pass (M+ + M-) / 2 times the weights,
    as in the reference implementation; input and layer contributions match the oracle."""
    model, variables, x, ref, labels = _zero_delta_mlp(hidden, seed)
    layers = model.oracle_layers(numpy_params(variables))
    dense = [layers[i] for i in oracle.parametrized(layers)]
    cotangent = one_hot(labels, 3)
    expected = oracle.reveal_cancel_mlp(dense, x, ref, cotangent)

    @jax.jit
    def explain(x, ref):
        inputs = deeplift.attribute(
            lambda v: model.apply(variables, v), x, ref, target=labels, rule="reveal_cancel"
        )
        per_layer = deeplift.layer_attributions(
            model, variables, x, ref, target=labels, rule="reveal_cancel"
        )
        return inputs, per_layer

    inputs, per_layer = explain(x, ref)
    assert_close(inputs, expected.contributions)
    for name, contributions in zip(model.names, expected.layer_contributions, strict=True):
        assert_close(per_layer[name], contributions)
    # Summation-to-delta still holds.
    logits, ref_logits = oracle.forward(layers, x)[-1], oracle.forward(layers, ref[None])[-1]
    delta = ((logits - ref_logits) * cotangent).sum(axis=1)
    assert_close(np.asarray(inputs).sum(axis=1), delta)
    # The case is discriminative: giving zero-delta units M- only (xaijax before the fix) moves
    # the contributions far beyond the tolerance.
    negative = oracle.reveal_cancel_mlp(dense, x, ref, cotangent, zero_delta="negative")
    assert_far(negative.contributions, expected.contributions)


# ----------------------------------------------------------------------------------------------
# The near-zero-delta fallback to the derivative.


def _cancelling_mlp(activation: str):
    """Inputs 0 and 1 are hidden unit 0's only inputs and feed nothing else, with weights 0.7 and
    -0.7, and both move by 0.35 from the reference: unit 0's delta is 0 in exact arithmetic
    (example 0; float32 rounding leaves a few 1e-9) or about one float32 spacing (example 1),
    below ``SECANT_EPS``, while the input deltas are not small."""
    model = MLP((3, 3, 2), activation)
    variables = draw_variables(model, (4,), seed=5)
    kernel = np.array(variables["params"]["dense0"]["kernel"])
    kernel[:2], kernel[:, 0] = 0.0, 0.0
    kernel[0, 0], kernel[1, 0] = 0.7, -0.7
    bias = np.array(variables["params"]["dense0"]["bias"])
    bias[0] = 0.4
    params = dict(variables["params"])
    params["dense0"] = {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(bias)}
    params["dense1"] = {**params["dense1"], "bias": params["dense1"]["bias"] + 1.0}  # all on
    ref = np.array([0.25, 0.25, -0.3, 0.1], np.float32)
    x = np.array([[0.6, 0.6, 0.5, -0.2], [0.6, 0.6, 0.5, -0.2]], np.float32)
    x[1, 1] = np.nextafter(x[1, 1], np.float32(1.0))
    return model, {"params": params}, x, ref


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_near_zero_delta_unit_gets_the_derivative(activation):
    model, variables, x, ref = _cancelling_mlp(activation)
    layers = model.oracle_layers(numpy_params(variables))
    values, ref_values = oracle.forward(layers, x), oracle.forward(layers, ref[None])
    assert np.all(np.abs(values[1][:, 0] - ref_values[1][:, 0]) <= deeplift.SECANT_EPS)
    assert np.all(np.abs(x[:, :2] - ref[:2]) > 0.3)
    cotangent = one_hot([1, 0], 2)
    expected = oracle.attributions(layers, x, ref[None], cotangent)

    contributions = jax.jit(
        lambda x, ref: deeplift.attribute(
            lambda v: model.apply(variables, v), x, ref, target=jnp.array([1, 0])
        )
    )(x, ref)
    assert_close(contributions, expected)
    # Discriminative: inputs 0 and 1 reach the output only through unit 0, so their (opposite)
    # contributions are 0.35 * 0.7 * f'(z) * (downstream multiplier); a zero multiplier at the
    # unit (a guarded 0/0) would make both vanish.
    np.testing.assert_allclose(expected[:, 0], -expected[:, 1], rtol=1e-6)
    assert np.all(np.abs(expected[:, 0]) > MARGIN)


# ----------------------------------------------------------------------------------------------
# Rescale on a conv net with max pooling.


def test_rescale_conv_net_input_and_layer_contributions_match_numpy():
    model = SmallCNN(pool=True)
    variables = draw_variables(model, (8, 8, 2), seed=7)
    generator = np.random.default_rng(7)
    x = generator.uniform(size=(4, 8, 8, 2)).astype(np.float32)
    ref = (0.3 * generator.standard_normal((8, 8, 2))).astype(np.float32)
    labels = np.array([0, 2, 1, 2])
    layers = model.oracle_layers(numpy_params(variables))
    explained = oracle.explain(layers, x, ref[None], one_hot(labels, 3))

    @jax.jit
    def explain(x, ref):
        inputs = deeplift.attribute(lambda v: model.apply(variables, v), x, ref, target=labels)
        hidden = deeplift.layer_attributions(model, variables, x, ref, target=labels)
        return inputs, hidden

    inputs, hidden = explain(x, ref)
    assert_close(inputs, (explained.values[0] - explained.ref_values[0]) * explained.multipliers[0])
    for name, index in zip(model.names, oracle.parametrized(layers), strict=True):
        assert_close(hidden[name], oracle.unit_contributions(explained, index))
    gradient = oracle.explain(layers, x, ref[None], one_hot(labels, 3), rule="gradient")
    assert_far(gradient.multipliers[0], explained.multipliers[0])
