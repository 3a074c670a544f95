"""xaijax.models.ops: the fast pooling and convolution forms agree with the plain ops."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from xaijax import deeplift, models
from xaijax.models import ops


def _normal(seed, shape):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


@pytest.mark.parametrize(
    "shape, window, strides",
    [
        ((2, 28, 28, 3), (2, 2), None),  # tiles the input: reshape + max
        ((2, 7, 9, 4), (2, 2), (2, 2)),  # VALID drops the remainder rows / columns
        ((2, 12, 12, 2), (3, 2), None),
        ((2, 9, 9, 2), (3, 3), (2, 2)),  # overlapping windows: nn.max_pool itself
    ],
)
def test_max_pool_equals_nn_max_pool(shape, window, strides):
    x = _normal(0, shape)
    expected = nn.max_pool(x, window, strides or window)
    np.testing.assert_array_equal(ops.max_pool(x, window, strides), expected)
    cotangent = _normal(1, expected.shape)
    grad = jax.vjp(lambda v: ops.max_pool(v, window, strides), x)[1](cotangent)[0]
    expected_grad = jax.vjp(lambda v: nn.max_pool(v, window, strides or window), x)[1](cotangent)
    np.testing.assert_allclose(grad, expected_grad[0], rtol=1e-6)  # no ties in normal samples


def test_tiling_max_pool_is_a_reduce_max():
    primitives = {
        eqn.primitive.name
        for eqn in jax.make_jaxpr(lambda v: ops.max_pool(v, (2, 2)))(jnp.ones((1, 4, 4, 1))).eqns
    }
    assert "reduce_max" in primitives
    assert "reduce_window_max" not in primitives


def _conv_pair(x_shape, k_shape, padding):
    dimension_numbers = lax.conv_dimension_numbers(x_shape, k_shape, ("NHWC", "HWIO", "NHWC"))

    def fast(x, k):
        return ops.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=dimension_numbers)

    def plain(x, k):
        return lax.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=dimension_numbers)

    return fast, plain


CONV_CASES = [
    ((3, 28, 28, 1), (5, 5, 1, 6), "SAME"),
    ((3, 14, 14, 1), (5, 5, 1, 16), "VALID"),
    ((3, 10, 12, 1), (3, 2, 1, 8), ((1, 1), (2, 0))),
]


@pytest.mark.parametrize("x_shape, k_shape, padding", CONV_CASES)
def test_single_channel_conv_matches_lax_values_gradients_and_hvp(x_shape, k_shape, padding):
    fast, plain = _conv_pair(x_shape, k_shape, padding)
    x, k = _normal(0, x_shape), _normal(1, k_shape) * 0.2
    primitives = {eqn.primitive.name for eqn in jax.make_jaxpr(fast)(x, k).eqns}
    assert "custom_jvp_call" in primitives  # the one-channel form was taken
    np.testing.assert_allclose(fast(x, k), plain(x, k), rtol=1e-5, atol=1e-5)

    def loss(conv):
        return lambda x, k: jnp.sum(jnp.sin(conv(x, k)))

    grads = jax.grad(loss(fast), (0, 1))(x, k)
    expected = jax.grad(loss(plain), (0, 1))(x, k)
    for got, want in zip(grads, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # Forward-over-reverse (Hessian-vector products, as the Hessian sensitivity uses).
    v = _normal(2, k_shape)
    hvp = jax.jvp(jax.grad(loss(fast), 1), (x, k), (jnp.zeros_like(x), v))[1]
    expected_hvp = jax.jvp(jax.grad(loss(plain), 1), (x, k), (jnp.zeros_like(x), v))[1]
    np.testing.assert_allclose(hvp, expected_hvp, rtol=1e-4, atol=1e-4)
    # Forward mode with respect to both operands.
    tangents = (_normal(3, x_shape), v)
    jvp = jax.jvp(loss(fast), (x, k), tangents)[1]
    np.testing.assert_allclose(jvp, jax.jvp(loss(plain), (x, k), tangents)[1], rtol=1e-4)


def test_several_channels_and_strides_use_lax_conv():
    for x_shape, k_shape, padding in [
        ((2, 8, 8, 3), (3, 3, 3, 4), "SAME"),
        ((2, 14, 14, 6), (5, 5, 6, 16), "VALID"),
    ]:
        x, k = _normal(0, x_shape), _normal(1, k_shape)
        fast, _ = _conv_pair(x_shape, k_shape, padding)
        primitives = {e.primitive.name for e in jax.make_jaxpr(fast)(x, k).eqns}
        assert primitives == {"conv_general_dilated"}
    x1 = _normal(0, (2, 8, 8, 1))
    strided = ops.conv_general_dilated(
        x1, k[:, :, :1], (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    np.testing.assert_allclose(
        strided,
        lax.conv_general_dilated(
            x1, k[:, :, :1], (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        ),
        rtol=1e-6,
    )


def _old_lenet5(monkeypatch):
    """LeNet-5 as it was before the fast ops: ``nn.max_pool`` and XLA's own convolution."""
    monkeypatch.setattr(ops, "max_pool", lambda x, window: nn.max_pool(x, window, window))
    plain = {"conv_general_dilated": lax.conv_general_dilated}
    return models.get_model("lenet5", layer_kwargs={"conv1": plain, "conv2": plain})


def test_lenet5_deeplift_attributions_unchanged_by_the_fast_ops(monkeypatch):
    new = models.get_model("lenet5")
    variables = new.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), train=False)
    x = jax.random.uniform(jax.random.key(1), (8, 28, 28, 1))
    target = jnp.arange(8) % 10

    def explain(model, reference):
        fn = lambda v: model.apply(variables, v, train=False)
        return jax.jit(lambda v, r: deeplift.attribute(fn, v, r, target=target))(x, reference)

    zero, noise = jnp.zeros((28, 28, 1)), jax.random.uniform(jax.random.key(2), (28, 28, 1)) * 0.1
    got = {name: explain(new, r) for name, r in (("zero", zero), ("noise", noise))}
    old = _old_lenet5(monkeypatch)
    jaxprs = jax.make_jaxpr(lambda v: old.apply(variables, v, train=False))(x)
    assert "reduce_window_max" in str(jaxprs)
    for name, r in (("zero", zero), ("noise", noise)):
        np.testing.assert_allclose(got[name], explain(old, r), rtol=1e-4, atol=1e-6)
