"""Tests of xaijax.deeplift. Every expected value is derived in the test; the oracles are
summation-to-delta, gradient x delta for linear functions, secant slopes, hand-worked networks,
a brute-force max-pool rule and sub-network identities."""

from __future__ import annotations

import functools
import itertools

import flax.linen as nn
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference_nets import draw_variables

from xaijax import deeplift
from xaijax.models import ResNet, get_model

RULES = deeplift.RULES
ATOL = 2e-5


def _keys(seed: int, n: int) -> list[np.random.Generator]:
    """Independent numpy generators (test data costs no XLA compilation)."""
    return [np.random.default_rng([seed, i]) for i in range(n)]


def _normal(generator: np.random.Generator, shape) -> jax.Array:
    return jnp.asarray(generator.standard_normal(shape), jnp.float32)


def _uniform(generator: np.random.Generator, shape) -> jax.Array:
    return jnp.asarray(generator.uniform(size=shape), jnp.float32)


def _init(model, shape, seed: int, scale: float = 0.1, **kwargs):
    """Random variables for ``model`` on inputs ``[1, *shape]`` (``reference_nets``)."""
    return draw_variables(model, shape, seed, scale, **kwargs)


def _selected(outputs: jax.Array, target) -> jax.Array:
    target = jnp.broadcast_to(jnp.asarray(target), (outputs.shape[0],))
    return jnp.take_along_axis(outputs, target[:, None], axis=1)[:, 0]


def _true_delta(fn, x, reference, target) -> jax.Array:
    ref = reference if reference.shape == x.shape else jnp.broadcast_to(reference, x.shape)
    return jax.jit(lambda a, b: _selected(fn(a), target) - _selected(fn(b), target))(x, ref)


def _jit(function, *static, **kwargs):
    """``function(*static, a, b, **kwargs)`` compiled over its two array arguments (one XLA program
    compiles much faster than the many small ones of an eager first call)."""
    return jax.jit(lambda a, b: function(*static, a, b, **kwargs))


def _assert_sums_to_delta(fn, x, reference, target, rule):
    contributions, error = _jit(
        deeplift.attribute, fn, target=target, rule=rule, return_delta=True
    )(x, reference)
    delta = _true_delta(fn, x, reference, target)
    total = contributions.reshape(x.shape[0], -1).sum(axis=1)
    scale = 1.0 + float(jnp.abs(delta).max())
    np.testing.assert_allclose(total, delta, atol=ATOL * scale)
    np.testing.assert_allclose(error, total - delta, atol=ATOL * scale)
    return contributions


# ----------------------------------------------------------------------------------------------
# Elementary oracles.


def test_linear_function_equals_gradient_times_delta():
    k = _keys(0, 4)
    w, b = _normal(k[0], (6, 4)), _normal(k[1], (4,))

    def fn(x):
        return x @ w + b

    x, ref = _normal(k[2], (5, 6)), _normal(k[3], (5, 6))
    grad = jax.grad(lambda v: fn(v)[:, 2].sum())(x)
    for rule in RULES:
        contributions = deeplift.attribute(fn, x, ref, target=2, rule=rule)
        np.testing.assert_allclose(contributions, grad * (x - ref), rtol=1e-5, atol=1e-6)


def test_linear_conv_network_equals_gradient_times_delta():
    class LinearCNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(3, (3, 3))(x)
            x = nn.avg_pool(x, (2, 2), (2, 2))
            x = jnp.concatenate([x, 2.0 * x[..., :1]], axis=-1)
            return nn.Dense(4)(x.reshape(x.shape[0], -1))

    k = _keys(1, 3)
    model = LinearCNN()
    variables = _init(model, (6, 6, 2), 1, scale=0.0)
    x, ref = _normal(k[1], (3, 6, 6, 2)), _normal(k[2], (6, 6, 2))

    def fn(v):
        return model.apply(variables, v)

    target = jnp.array([0, 3, 1])
    grad = jax.grad(lambda v: _selected(fn(v), target).sum())(x)
    for rule in RULES:
        contributions = _jit(deeplift.attribute, fn, target=target, rule=rule)(x, ref)
        np.testing.assert_allclose(contributions, grad * (x - ref), rtol=1e-4, atol=1e-5)


ACTIVATIONS = {
    "relu": jax.nn.relu,
    "leaky_relu": jax.nn.leaky_relu,
    "elu": jax.nn.elu,
    "softplus": jax.nn.softplus,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "gelu_tanh": lambda v: jax.nn.gelu(v, approximate=True),
    "gelu_erf": lambda v: jax.nn.gelu(v, approximate=False),
    "silu": jax.nn.silu,
    "where_relu": lambda v: jnp.where(v > 0, v, 0.0),
}


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_single_nonlinearity_gives_the_secant(name, rule):
    """For t(x) = sum_i f(x_i), each input's contribution is f(x_i) - f(r_i): the secant slope times
    the delta (both rules: a single input term is never cancelled). Equal inputs contribute 0."""
    f = ACTIVATIONS[name]
    x = jnp.array([[-2.0, -0.5, 0.0, 0.3, 1.7, 0.7], [3.0, -1.0, 0.2, 0.0, -0.2, 0.7]])
    ref = jnp.array([0.5, 0.5, -0.4, 0.0, 0.0, 0.7])  # last column: delta 0

    def fn(v):
        return f(v).sum(axis=1)

    contributions = deeplift.attribute(fn, x, ref, rule=rule)
    np.testing.assert_allclose(contributions, f(x) - f(ref), atol=2e-6)
    multipliers = contributions / jnp.where(x == ref, 1.0, x - ref)
    secant = (f(x) - f(ref)) / jnp.where(x == ref, 1.0, x - ref)
    np.testing.assert_allclose(multipliers[:, :-1], secant[:, :-1], rtol=1e-4, atol=1e-5)


def test_hand_worked_two_layer_network():
    """x = (3, 1), ref = 0. z1 = x1 - x2 = 2 (ref 0), z2 = x2 - x1 + 1 = -1 (ref 1).
    h = relu(z): secant 1 for unit 1, (0 - 1) / (-1 - 1) = 0.5 for unit 2. y = h1 + h2 (delta 1).
    m_x1 = 1 * 1 + 0.5 * (-1) = 0.5, m_x2 = 1 * (-1) + 0.5 * 1 = -0.5 => C = (1.5, -0.5)."""
    w = jnp.array([[1.0, -1.0], [-1.0, 1.0]])
    b = jnp.array([0.0, 1.0])

    def fn(x):
        return jax.nn.relu(x @ w + b).sum(axis=1)

    contributions = deeplift.attribute(fn, jnp.array([[3.0, 1.0]]), jnp.zeros(2))
    np.testing.assert_allclose(contributions, [[1.5, -0.5]], atol=1e-6)


def test_two_layer_network_matches_numpy_derivation():
    """m_x = W1 (s * w2) with s the secant slopes of the hidden relus, computed with numpy."""
    k = _keys(2, 5)
    w1, b1 = np.asarray(_normal(k[0], (5, 7))), np.asarray(_normal(k[1], (7,)))
    w2 = np.asarray(_normal(k[2], (7,)))
    x, ref = np.asarray(_normal(k[3], (4, 5))), np.asarray(_normal(k[4], (5,)))

    def fn(v):
        return jax.nn.relu(v @ w1 + b1) @ w2

    z, z_ref = x @ w1 + b1, ref @ w1 + b1
    secant = (np.maximum(z, 0) - np.maximum(z_ref, 0)) / (z - z_ref)
    expected = (x - ref) * ((secant * w2) @ w1.T)
    np.testing.assert_allclose(deeplift.attribute(fn, x, ref), expected, rtol=1e-4, atol=1e-5)


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
    i1=st.floats(0.05, 10.0, allow_nan=False), i2=st.floats(0.05, 10.0, allow_nan=False)
)
def test_reveal_cancel_min_example(i1, i2):
    """Shrikumar et al. (2017), Fig. 3: o = i1 - relu(i1 - i2) = min(i1, i2), reference 0.
    Rescale: dz = i1 - i2, secant 1 if i1 > i2 else 0, so the smaller input takes all of min.
    RevealCancel: dz+ = i1, dz- = -i2; if i1 > i2, dh+ = i1/2 + (i1 - i2)/2, dh- = -i2/2;
    if i2 > i1, dh+ = i1/2, dh- = -i1/2. Either way o's contributions are (min/2, min/2)."""
    hypothesis.assume(abs(i1 - i2) > 1e-3)

    def fn(x):
        return x[:, 0] - jax.nn.relu(x[:, 0] - x[:, 1])

    x, low = jnp.array([[i1, i2]]), min(i1, i2)
    rescale = deeplift.attribute(fn, x, jnp.zeros(2), rule="rescale")
    expected = [0.0, low] if i1 > i2 else [low, 0.0]
    np.testing.assert_allclose(rescale[0], expected, rtol=1e-5, atol=1e-5)
    reveal = deeplift.attribute(fn, x, jnp.zeros(2), rule="reveal_cancel")
    np.testing.assert_allclose(reveal[0], [low / 2, low / 2], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Summation-to-delta on random networks.


@hypothesis.settings(max_examples=6, deadline=None)
@hypothesis.given(
    seed=st.integers(0, 2**16),
    widths=st.lists(st.integers(1, 9), min_size=1, max_size=3),
    activation=st.sampled_from(sorted(ACTIVATIONS)),
    rule=st.sampled_from(RULES),
    shared=st.booleans(),
)
def test_random_mlps_sum_to_delta(seed, widths, activation, rule, shared):
    sizes = [4, *widths, 3]
    k = _keys(seed, 2 * len(sizes) + 2)
    layers = [
        (_normal(k[2 * i], (a, b)), _normal(k[2 * i + 1], (b,)))
        for i, (a, b) in enumerate(itertools.pairwise(sizes))
    ]

    def fn(x):
        for i, (w, b) in enumerate(layers):
            x = x @ w + b
            if i < len(layers) - 1:
                x = ACTIVATIONS[activation](x)
        return x

    x = _normal(k[-2], (3, 4))
    ref = _normal(k[-1], (4,) if shared else (3, 4))
    _assert_sums_to_delta(fn, x, ref, jnp.array([0, 2, 1]), rule)


class _CNN(nn.Module):
    """conv-BN-relu-maxpool, conv-gelu, residual block, avgpool, dense."""

    pool: str = "max"

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3), name="conv1")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn1")(x)
        x = nn.relu(x)
        pool = nn.max_pool if self.pool == "max" else nn.avg_pool
        x = pool(x, (2, 2), (2, 2))
        x = jax.nn.gelu(nn.Conv(4, (3, 3), name="conv2")(x))
        y = nn.relu(nn.Conv(4, (3, 3), name="res_a")(x))
        x = nn.relu(x + nn.Conv(4, (3, 3), name="res_b")(y))
        x = nn.avg_pool(x, (2, 2), (2, 2))
        return nn.Dense(3, name="fc")(x.reshape(x.shape[0], -1))


def _cnn(pool: str, seed: int = 3):
    model = _CNN(pool=pool)
    variables = _init(model, (8, 8, 2), seed)
    return model, variables


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("pool", ["max", "avg"])
def test_random_cnns_sum_to_delta(pool, rule):
    model, variables = _cnn(pool)
    k = _keys(4, 2)
    x = _normal(k[0], (3, 8, 8, 2))

    def fn(v):
        return model.apply(variables, v)

    target = jnp.array([2, 0, 1])
    _assert_sums_to_delta(fn, x, jnp.zeros((8, 8, 2)), target, rule)
    _assert_sums_to_delta(fn, x, _normal(k[1], x.shape), target, rule)


def test_relu_into_max_pool_sums_to_delta_where_gradient_routing_does_not():
    """Captum #1104: relu -> max-pool. Routing the pool like its gradient (to the input's argmax)
    breaks summation-to-delta when the reference's maximum sits elsewhere; the cross-max rule
    does not. Window (x = [1, 3], ref = [4, 0]): relu keeps both; y = 3, y_ref = 4."""

    def fn(x):
        h = jax.nn.relu(x)[:, None, :, None]
        return nn.max_pool(h, (1, 2), (1, 2)).reshape(x.shape[0], -1).sum(axis=1)

    x, ref = jnp.array([[1.0, 3.0]]), jnp.array([4.0, 0.0])
    delta = fn(x) - fn(ref[None])  # 3 - 4 = -1
    gradient_routing = (jax.grad(lambda v: fn(v).sum())(x) * (x - ref)).sum()  # 1 * 3 = 3
    assert abs(float(gradient_routing - delta[0])) > 1.0
    contributions = deeplift.attribute(fn, x, ref)
    # max(y, y_ref) = 4 sits at position 0: it takes the whole delta, multiplier -1 / (1 - 4).
    np.testing.assert_allclose(contributions, [[-1.0, 0.0]], atol=1e-6)


def _numpy_cross_max_contributions(x, ref, weights):
    """Brute-force cross-max rule for t = sum(weights * maxpool2x2(x)), x: [B, H, W]."""
    out = np.zeros_like(x)
    batch, height, width = x.shape
    for b in range(batch):
        for i in range(0, height, 2):
            for j in range(0, width, 2):
                xs = x[b, i : i + 2, j : j + 2].ravel()
                rs = ref[i : i + 2, j : j + 2].ravel()
                c = int(np.argmax(np.maximum(xs, rs)))
                dy = xs.max() - rs.max()
                dx = xs[c] - rs[c]
                scale = 1.0 if dx == 0 else dy / dx
                out[b, i + c // 2, j + c % 2] = dx * scale * weights[i // 2, j // 2]
    return out


def test_max_pool_matches_brute_force_cross_max():
    k = _keys(5, 3)
    x = np.asarray(_normal(k[0], (2, 6, 6)))
    ref = np.asarray(_normal(k[1], (6, 6)))
    weights = np.asarray(_normal(k[2], (3, 3)))

    def fn(v):
        pooled = nn.max_pool(v[..., None], (2, 2), (2, 2))[..., 0]
        return (pooled * weights).reshape(v.shape[0], -1).sum(axis=1)

    expected = _numpy_cross_max_contributions(x, ref, weights)
    np.testing.assert_allclose(_jit(deeplift.attribute, fn)(x, ref), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule", RULES)
def test_overlapping_padded_max_pool_and_global_max_sum_to_delta(rule):
    def fn(v):
        h = jax.nn.relu(v)
        h = nn.max_pool(h, (3, 3), (2, 2), padding="SAME")
        return jnp.max(jnp.tanh(h), axis=(1, 2)) @ jnp.array([[1.0, -2.0], [0.5, 1.0]])

    k = _keys(6, 2)
    x = _normal(k[0], (3, 7, 7, 2))
    _assert_sums_to_delta(fn, x, jnp.zeros((7, 7, 2)), 1, rule)
    _assert_sums_to_delta(fn, x, _normal(k[1], x.shape), 0, rule)


# ----------------------------------------------------------------------------------------------
# Functional nonlinearities, reused modules, transformations.


def test_functional_nonlinearities_in_nested_jit_match_explicit_secants():
    """Captum #1085: nonlinearities applied as functions (custom_jvp jax.nn.relu inside nested jit)
    are explained like modules: same result as the primitive-level spelling."""
    k = _keys(7, 3)
    w1, w2 = _normal(k[0], (5, 6)), _normal(k[1], (6, 2))

    @jax.jit
    def hidden(x):
        return jax.jit(jax.nn.relu)(x @ w1)

    def functional(x):
        return hidden(x) @ w2

    def primitive(x):
        return jnp.maximum(x @ w1, 0.0) @ w2

    x = _normal(k[2], (4, 5))
    for rule in RULES:
        a = _jit(deeplift.attribute, functional, target=1, rule=rule)(x, jnp.zeros(5))
        b = _jit(deeplift.attribute, primitive, target=1, rule=rule)(x, jnp.zeros(5))
        np.testing.assert_allclose(a, b, atol=1e-6)
        _assert_sums_to_delta(functional, x, jnp.zeros(5), 1, rule)


class _Reused(nn.Module):
    """One Dense applied twice (Captum #578 / #934)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        dense = nn.Dense(4, name="shared")
        x = nn.relu(dense(nn.relu(dense(x))))
        return nn.Dense(2, name="fc")(x)


@pytest.mark.parametrize("rule", RULES)
def test_reused_module(rule):
    model = _Reused()
    k = _keys(8, 3)
    variables = _init(model, (4,), 8, scale=0.5)
    x, ref = _normal(k[1], (3, 4)), _normal(k[2], (4,))

    def fn(v):
        return model.apply(variables, v)

    _assert_sums_to_delta(fn, x, ref, 1, rule)
    delta = _true_delta(fn, x, ref, 1)
    layers = _jit(deeplift.layer_attributions, model, variables, target=1, rule=rule)(x, ref)
    assert set(layers) == {"shared", "shared@1", "fc"}
    for contributions in layers.values():  # every call is a complete cut
        np.testing.assert_allclose(contributions.sum(axis=1), delta, atol=ATOL)
    # The shared kernel's contributions add both calls: 2 * delta in total.
    params = _jit(deeplift.parameter_contributions, model, variables, target=1, rule=rule)(x, ref)
    np.testing.assert_allclose(params["shared"].sum(axis=(1, 2)), 2 * delta, atol=ATOL)


def test_jit_vmap_and_nested_jit_give_identical_results():
    model, variables = _cnn("max")
    k = _keys(9, 2)
    x = _normal(k[0], (2, 3, 8, 8, 2))
    ref = _normal(k[1], (8, 8, 2))

    def fn(v):
        return model.apply(variables, v)

    def explain(v):
        return deeplift.attribute(fn, v, ref, target=1)

    eager = explain(x[0])  # op by op
    jitted = jax.jit(explain)
    np.testing.assert_allclose(jitted(x[0]), eager, atol=1e-6)
    np.testing.assert_allclose(
        jax.jit(jax.vmap(explain))(x), jnp.stack([eager, jitted(x[1])]), atol=1e-6
    )
    nested = jax.jit(lambda v: deeplift.attribute(jax.jit(jax.jit(fn)), v, ref, target=1))
    np.testing.assert_allclose(nested(x[0]), eager, atol=1e-6)
    # Explaining a function whose weights are jit arguments (tracers closed over by fn).
    with_params = jax.jit(
        lambda params, v: deeplift.attribute(lambda u: model.apply(params, u), v, ref, target=1)
    )
    np.testing.assert_allclose(with_params(variables, x[0]), eager, atol=1e-6)


def test_shared_reference_equals_tiled_reference():
    model, variables = _cnn("max")
    k = _keys(10, 2)
    x, ref = _normal(k[0], (3, 8, 8, 2)), _normal(k[1], (8, 8, 2))

    def fn(v):
        return model.apply(variables, v)

    for rule in RULES:
        explain = _jit(deeplift.attribute, fn, target=2, rule=rule)
        shared, tiled = explain(x, ref), explain(x, jnp.broadcast_to(ref, x.shape))
        np.testing.assert_allclose(shared, tiled, atol=1e-5)


def test_batch_size_dependent_function_falls_back_to_a_broadcast_reference():
    """A function that hard-codes the batch size cannot run at batch 1: the reference is then
    broadcast to the batch instead, with the same result."""
    w = jnp.arange(12.0).reshape(6, 2) / 10 - 0.5

    def fn(v):
        return jax.nn.relu(v.reshape(4, 6) @ w)  # batch 4 hard-coded

    x, ref = jnp.linspace(-1, 1, 24).reshape(4, 6), jnp.full((6,), 0.3)
    shared = deeplift.attribute(fn, x, ref, target=0)
    tiled = deeplift.attribute(fn, x, jnp.broadcast_to(ref, x.shape), target=0)
    np.testing.assert_allclose(shared, tiled, atol=1e-6)


def test_attribute_shap_averages_over_references():
    model, variables = _cnn("avg")
    k = _keys(11, 2)
    x, refs = _normal(k[0], (2, 8, 8, 2)), _normal(k[1], (3, 8, 8, 2))

    def fn(v):
        return model.apply(variables, v)

    @functools.partial(jax.jit, static_argnames="rule")
    def explain(rule):
        averaged, error = deeplift.attribute_shap(
            fn, x, refs, target=0, rule=rule, return_delta=True
        )
        each = jnp.stack([deeplift.attribute(fn, x, r, target=0, rule=rule) for r in refs])
        return averaged, error, each

    mean_delta = jnp.mean(jnp.stack([_true_delta(fn, x, r, 0) for r in refs]), axis=0)
    for rule in RULES:
        averaged, error, each = explain(rule)
        np.testing.assert_allclose(averaged, each.mean(axis=0), atol=1e-5)
        total = averaged.reshape(2, -1).sum(axis=1)
        np.testing.assert_allclose(total, mean_delta, atol=ATOL)
        np.testing.assert_allclose(error, total - mean_delta, atol=ATOL)


# ----------------------------------------------------------------------------------------------
# Layers and parameters.


@pytest.mark.parametrize("rule", RULES)
def test_layer_attributions_conserve_and_match_the_sub_network(rule):
    """Layers every path crosses (conv1, conv2, fc) sum to the delta. conv1's contributions equal
    explaining the rest of the network from conv1's output with the reference's conv1 output."""
    model, variables = _cnn("max")
    k = _keys(12, 2)
    x, ref = _normal(k[0], (3, 8, 8, 2)), _normal(k[1], (8, 8, 2))

    def fn(v):
        return model.apply(variables, v)

    target = jnp.array([1, 0, 2])
    layers = _jit(deeplift.layer_attributions, model, variables, target=target, rule=rule)(x, ref)
    assert set(layers) == {"conv1", "conv2", "res_a", "res_b", "fc"}
    delta = _true_delta(fn, x, ref, target)
    for name in ("conv1", "conv2", "fc"):
        assert layers[name].shape[0] == 3
        np.testing.assert_allclose(layers[name].reshape(3, -1).sum(axis=1), delta, atol=ATOL)

    def rest(h):  # the model after conv1 (same modules, conv1 replaced by its output)
        def interceptor(next_fun, args, kwargs, context):
            if context.module.name == "conv1" and context.method_name == "__call__":
                return h
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(interceptor):
            return model.apply(variables, jnp.zeros((h.shape[0], 8, 8, 2)))

    conv1 = nn.Conv(4, (3, 3))
    h = conv1.apply({"params": variables["params"]["conv1"]}, x)
    h_ref = conv1.apply({"params": variables["params"]["conv1"]}, ref[None])[0]
    expected = _jit(deeplift.attribute, rest, target=target, rule=rule)(h, h_ref)
    np.testing.assert_allclose(layers["conv1"], expected, atol=1e-5)


def test_layer_attributions_selected_layers_and_errors():
    model, variables = _cnn("avg")
    x = jnp.ones((2, 8, 8, 2))
    only = _jit(deeplift.layer_attributions, model, variables, layers=["fc"], target=0)(
        x, jnp.zeros((8, 8, 2))
    )
    assert set(only) == {"fc"} and only["fc"].shape == (2, 3)
    with pytest.raises(ValueError, match="unknown layers"):
        deeplift.layer_attributions(model, variables, x, jnp.zeros((8, 8, 2)), layers=["nope"])
    with pytest.raises(TypeError, match="sequence"):
        deeplift.layer_attributions(model, variables, x, jnp.zeros((8, 8, 2)), layers="fc")


@pytest.mark.parametrize("rule", RULES)
def test_parameter_contributions_conserve_and_reduce(rule):
    model, variables = _cnn("max")
    k = _keys(13, 2)
    x, ref = _normal(k[0], (5, 8, 8, 2)), _normal(k[1], (8, 8, 2))

    def fn(v):
        return model.apply(variables, v)

    @jax.jit
    def explain(v, r):
        def contributions(**kwargs):
            return deeplift.parameter_contributions(
                model, variables, v, r, target=0, rule=rule, **kwargs
            )

        return (
            contributions(),
            contributions(reduce="mean"),
            contributions(reduce="mean_abs", chunk_size=2),
        )

    per_example, mean, mean_abs = explain(x, ref)
    delta = _true_delta(fn, x, ref, 0)
    for name, kernel_shape in [("conv1", (3, 3, 2, 4)), ("conv2", (3, 3, 4, 4)), ("fc", (16, 3))]:
        assert per_example[name].shape == (5, *kernel_shape)
        np.testing.assert_allclose(per_example[name].reshape(5, -1).sum(1), delta, atol=ATOL)
    for name, values in per_example.items():
        np.testing.assert_allclose(mean[name], values.mean(axis=0), atol=1e-6)
        np.testing.assert_allclose(mean_abs[name], jnp.abs(values).mean(axis=0), atol=1e-6)


def test_parameter_contributions_of_a_linear_network_are_weight_times_gradient():
    """For linear networks m is the gradient, so C(W) = W * d(t(x) - t(ref))/dW per example."""

    class Linear(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.avg_pool(nn.Conv(3, (3, 3), name="conv")(x), (2, 2), (2, 2))
            return nn.Dense(2, name="fc")(x.reshape(x.shape[0], -1))

    model = Linear()
    k = _keys(14, 3)
    variables = _init(model, (4, 4, 1), 14, scale=0.0)
    x, ref = _normal(k[1], (3, 4, 4, 1)), _normal(k[2], (4, 4, 1))

    def delta(params, v):
        out = model.apply({"params": params}, jnp.stack([v, ref]))
        return out[0, 1] - out[1, 1]

    grads = jax.vmap(jax.grad(delta), in_axes=(None, 0))(variables["params"], x)
    contributions = _jit(deeplift.parameter_contributions, model, variables, target=1)(x, ref)
    for name in ("conv", "fc"):
        expected = variables["params"][name]["kernel"] * grads[name]["kernel"]
        np.testing.assert_allclose(contributions[name], expected, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# The models of this repository.


@pytest.mark.parametrize(
    "name, model, shape, layers",
    [
        ("lenet5", get_model("lenet5"), (28, 28, 1), ("conv1", "conv2", "fc1", "fc3")),
        (
            "vgg_small",
            get_model("vgg_small", widths=dict(conv1=4, conv2=4, conv3=8, conv4=8, fc1=16)),
            (28, 28, 1),
            ("conv1", "conv3", "fc1"),
        ),
        (
            "resnet",
            ResNet(blocks_per_stage=1, stage_widths=(4, 8, 8)),
            (16, 16, 3),
            ("conv1", "fc"),
        ),
    ],
)
def test_repository_models_sum_to_delta_at_input_and_layers(name, model, shape, layers):
    k = _keys(15, 3)
    variables = _init(model, shape, 15, scale=0.05, train=False)
    x, ref = _uniform(k[1], (2, *shape)), _uniform(k[2], shape) * 0.2

    def fn(v):
        return model.apply(variables, v, train=False)

    target = jnp.array([3, 7])
    delta = _true_delta(fn, x, ref, target)

    @jax.jit
    def explain(v, r):
        _, error = deeplift.attribute(fn, v, r, target=target, return_delta=True)
        by_layer = deeplift.layer_attributions(model, variables, v, r, layers=layers, target=target)
        return error, by_layer

    error, contributions = explain(x, ref)
    scale = 1 + float(jnp.abs(delta).max())
    np.testing.assert_allclose(error, 0.0, atol=ATOL * scale)
    for layer in layers:  # complete cuts: every path from input to output crosses them
        total = contributions[layer].reshape(2, -1).sum(axis=1)
        np.testing.assert_allclose(total, delta, atol=ATOL * scale)


# ----------------------------------------------------------------------------------------------
# Errors.


def _mlp(x):
    return jax.nn.relu(x @ jnp.ones((3, 2)))


def test_bad_rule_shapes_and_targets_raise_clear_errors():
    x = jnp.ones((4, 3))
    with pytest.raises(ValueError, match="unknown DeepLIFT rule"):
        deeplift.attribute(_mlp, x, jnp.zeros(3), target=0, rule="gradient")
    with pytest.raises(ValueError, match="reference shape"):
        deeplift.attribute(_mlp, x, jnp.zeros(4), target=0)
    with pytest.raises(ValueError, match="attribute_shap"):
        deeplift.attribute(_mlp, x, jnp.zeros((2, 4, 3)), target=0)
    with pytest.raises(ValueError, match="pass target"):
        deeplift.attribute(_mlp, x, jnp.zeros(3))
    with pytest.raises(ValueError, match="target must be None"):
        deeplift.attribute(lambda v: _mlp(v).sum(1), x, jnp.zeros(3), target=0)
    with pytest.raises(ValueError, match="out of range"):
        deeplift.attribute(_mlp, x, jnp.zeros(3), target=2)
    with pytest.raises(ValueError, match="out of range"):
        deeplift.attribute(_mlp, x, jnp.zeros(3), target=jnp.array([0, 1, -1, 0]))
    with pytest.raises(ValueError, match="shaped"):
        deeplift.attribute(_mlp, x, jnp.zeros(3), target=jnp.array([0, 1]))
    with pytest.raises(TypeError, match="integers"):
        deeplift.attribute(_mlp, x, jnp.zeros(3), target=0.0)
    with pytest.raises(TypeError, match="floating"):
        deeplift.attribute(_mlp, jnp.ones((4, 3), jnp.int32), jnp.zeros(3), target=0)
    with pytest.raises(ValueError, match="references must be"):
        deeplift.attribute_shap(_mlp, x, jnp.zeros(3), target=0)
    with pytest.raises(ValueError, match="B, K"):
        deeplift.attribute(lambda v: v[:, :, None], x, jnp.zeros(3), target=0)


@pytest.mark.parametrize(
    "fn, primitive",
    [
        (lambda v: jnp.sort(v, axis=1), "sort"),
        (lambda v: v * v[:, ::-1], "mul"),
        (lambda v: jax.nn.softmax(v, axis=1), "div"),
        (lambda v: jnp.minimum(v, v[:, ::-1]), "min"),
        (lambda v: jax.lax.cond(True, jnp.sin, jnp.cos, v), "cond"),
        (lambda v: jnp.cumprod(v, axis=1), "cumprod"),
    ],
)
def test_unsupported_primitives_are_named(fn, primitive):
    with pytest.raises(deeplift.UnsupportedOperationError, match=f"`{primitive}`"):
        deeplift.attribute(fn, jnp.ones((2, 3)), jnp.zeros(3), target=0)
