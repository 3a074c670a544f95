"""The accounting, sensitivity, joint and export functions on a user's nested variables (layers
named by module path, ``"Stage_0/ShapeComparingBlock_1/Conv_0"``).

References: the same functions on a view keyed by module path (``{"Stage_0/.../Conv_0":
{"kernel": ...}}``, the top-level layout they were written for), counts by hand, the exact
second derivative for Hutchinson's estimate of a one-weight layer, and ``fake_quantize`` for the
export round trip.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import user_models
from flax import traverse_util
from test_user_models_compression import by_layer

from xaijax import models, pruning
from xaijax.quantization import (
    deeplift_damage,
    deeplift_sensitivity,
    dequantize,
    export_integer_model,
    fake_quantize,
    hessian_damage,
    hessian_sensitivity,
    hutchinson_traces,
    joint,
    layer_sizes,
    magnitude_scores,
    model_size_bytes,
)

WIDTH = 4


@pytest.fixture(scope="module")
def nested():
    """NestedResNet's specs and numpy variables (random, with some exact zeros in kernels)."""
    model = user_models.NestedResNet(width=WIDTH)
    x = jnp.zeros((1, 8, 8, 1))
    specs = models.discover_layer_specs(model, x, train=False)
    variables = jax.device_get(model.init(jax.random.key(0), x, train=False))
    rng = np.random.default_rng(0)

    def perturb(path, leaf):
        leaf = np.asarray(leaf) + rng.normal(0, 0.1, np.shape(leaf)).astype(np.float32)
        if path[-1].key == "kernel":
            leaf = np.where(rng.random(leaf.shape) < 0.2, 0.0, leaf).astype(np.float32)
        return leaf

    variables = jax.tree_util.tree_map_with_path(perturb, variables)
    return model, specs, variables


def test_kernel_sparsity_and_sensitivities_read_nested_params(nested):
    _, specs, variables = nested
    params, view = variables["params"], by_layer(variables["params"])
    names = [spec.name for spec in specs]
    assert pruning.kernel_sparsity(specs, params) == pruning.kernel_sparsity(specs, view)
    assert all(0 < s < 1 for s in pruning.kernel_sparsity(specs, params).values())
    assert layer_sizes(params, names) == layer_sizes(view, names)
    assert layer_sizes(params, ["stem"]) == {"stem": 3 * 3 * 1 * WIDTH}
    scores = {n: {"kernel": np.abs(view[n]["kernel"]) + 0.5} for n in names}
    assert deeplift_sensitivity(params, scores) == deeplift_sensitivity(view, scores)
    traces = {n: float(i + 1) for i, n in enumerate(names)}
    assert hessian_sensitivity(params, traces) == hessian_sensitivity(view, traces)
    with pytest.raises(ValueError, match="no kernel for layer 'Stage_0/nope'"):
        layer_sizes(params, ["Stage_0/nope"])


class Inner(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1, use_bias=False)(x)  # Inner_0/Dense_0: one weight


class Outer(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(jnp.tanh(Inner()(x)))  # Dense_0: left out of the estimate


def test_hutchinson_trace_of_a_nested_one_weight_layer_is_its_second_derivative():
    """For one named layer with one weight ``v^T H v = h`` for ``v = +-1``: the estimate is the
    exact second derivative, whatever the probes (a probe placed elsewhere would give 0)."""
    model = Outer()
    x = jnp.linspace(-2.0, 2.0, 16).reshape(16, 1)
    y = jnp.sin(3 * x)
    params = model.init(jax.random.key(1), x)["params"]

    def loss(p):
        return jnp.mean((model.apply({"params": p}, x) - y) ** 2)

    def as_weight(w):
        return {**params, "Inner_0": {"Dense_0": {"kernel": w.reshape(1, 1)}}}

    exact = jax.hessian(lambda w: loss(as_weight(w)))(params["Inner_0"]["Dense_0"]["kernel"][0, 0])
    traces = hutchinson_traces(loss, params, ["Inner_0/Dense_0"], jax.random.key(2), 4)
    assert abs(float(exact)) > 1e-3
    np.testing.assert_allclose(traces["Inner_0/Dense_0"], float(exact), rtol=1e-4)


def test_joint_geometry_sizes_and_damage_read_nested_params(nested):
    _, specs, variables = nested
    params, view = variables["params"], by_layer(variables["params"])
    geometry = joint.layer_geometry(specs, params)
    assert geometry == joint.layer_geometry(specs, view)
    block = "Stage_1/ShapeComparingBlock_0"
    # The projection: a 1x1 conv with bias and a BatchNorm (scale, offset) per unit.
    assert geometry[f"{block}/proj"].floats_per_unit == 3
    assert geometry[f"{block}/proj"].weights == WIDTH * 2 * WIDTH
    # What no spec owns is stored in float32: leave the head out and it is its kernel and bias.
    head = 2 * WIDTH * 10 + 10
    assert joint.fixed_bits(specs[:-1], params) == 32 * head == joint.fixed_bits(specs[:-1], view)
    assert joint.fixed_bits(specs, params) == 0
    levels = (0.0, 0.5)
    weights = {n: {"kernel": np.abs(view[n]["kernel"]) + 0.1} for n in geometry}
    traces = {n: 1.0 for n in geometry}
    damage = deeplift_damage(params, geometry, weights, levels, (2, 8))
    assert damage == deeplift_damage(view, geometry, weights, levels, (2, 8))
    assert hessian_damage(params, geometry, traces, levels, (2, 8)) == hessian_damage(
        view, geometry, traces, levels, (2, 8)
    )
    units, weight_scores = magnitude_scores(params, geometry)
    view_units, view_weights = magnitude_scores(view, geometry)
    assert all(np.array_equal(units[n], view_units[n]) for n in units)
    assert all(np.array_equal(weight_scores[n]["kernel"], view_weights[n]["kernel"]) for n in units)
    choices = {n: joint.Choice(0.5 if g.granularity else 0.0, 4) for n, g in geometry.items()}
    unit_masks, weight_masks = joint.choice_masks(specs, geometry, choices, units, weight_scores)
    bits = {n: 4 for n in geometry}
    size = joint.size_bits(specs, params, bits, unit_masks, weight_masks)
    assert size == joint.size_bits(specs, view, bits, unit_masks, weight_masks)
    assert size["total"] < joint.float_model_bytes(params) * 8


def test_export_round_trip_and_size_on_nested_params(nested):
    _, specs, variables = nested
    bits = {spec.name: 3 + i % 4 for i, spec in enumerate(specs)}
    params = variables["params"]
    before = jax.tree.map(np.copy, variables)
    for pack in (False, True):
        exported = export_integer_model(variables, bits, pack=pack)
        assert set(exported["quantized"]) == set(bits)  # Entries keyed by module path.
        restored = dequantize(exported)
        assert jax.tree.structure(restored) == jax.tree.structure(variables)
        for path, leaf in traverse_util.flatten_dict(restored["params"], sep="/").items():
            module, name = path.rsplit("/", 1)
            original = models.layer_variables(params, module)[name]
            if name == "kernel" and module in bits:
                expected = np.asarray(fake_quantize(jnp.asarray(original), bits[module]))
                np.testing.assert_allclose(leaf, expected, rtol=1e-6, atol=1e-7)
            else:
                np.testing.assert_array_equal(leaf, original)
    jax.tree.map(np.testing.assert_array_equal, variables, before)  # Not changed in place.
    size = model_size_bytes(params, bits)
    kernels = {n: models.layer_variables(params, n)["kernel"] for n in bits}
    assert size["kernels"] == sum(np.size(k) * bits[n] / 8 for n, k in kernels.items())
    assert size["scales"] == 4 * sum(np.shape(k)[-1] for k in kernels.values())
    assert size == model_size_bytes(by_layer(params), bits)
    with pytest.raises(ValueError, match="absent from params"):
        export_integer_model(variables, {"Stage_0/nope": 4})


def test_masked_costs_of_nested_params_are_the_shrunk_models(nested):
    """Parameters and FLOPs counted from the mask equal those read from the shapes of the
    model ``shrink_any`` builds, which ``init`` recreates at its narrow shapes (so it trains),
    and which the stages rebuild from the recorded widths."""
    from xaijax.experiments import layers

    model, specs, variables = nested
    rng = np.random.default_rng(1)
    params = variables["params"]
    scores = {
        s.name: rng.random(np.shape(models.layer_variables(params, s.name)["kernel"])[-1])
        for s in specs
    }
    masks = pruning.unit_masks(scores, 0.5, specs=specs)
    mask = pruning.params_mask(specs, params, masks)
    masked_variables = pruning.mask_variables(specs, variables, masks)
    masked = pruning.masked_costs(model, masked_variables, mask, (8, 8, 1))
    x = jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32)
    narrow, narrow_variables = pruning.shrink_any(
        model, variables, masks, x, specs=specs, train=False
    )
    assert masked == pruning.traced_layer_costs(narrow, narrow_variables, specs, x, train=False)
    assert sum(c["params"] for c in masked.values()) < models.count_params(params)

    shapes = jax.eval_shape(lambda x: narrow.init(jax.random.key(0), x, train=False), x)
    assert jax.tree.map(np.shape, shapes) == jax.tree.map(np.shape, narrow_variables)
    widths = {s.name: int(masks[s.name].sum()) for s in specs}
    assert layers.shrunk_model(model, widths) == narrow
    assert layers.specs(narrow, (8, 8, 1)) == specs
