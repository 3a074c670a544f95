"""Quantized ops of the AQT and qwix backends: numerics, forward error, straight-through
gradients, widths. Every backend test runs for both backends (``BACKENDS``)."""

from __future__ import annotations

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from xaijax.models import get_model, layer_specs
from xaijax.quantization import (
    REFERENCE_BACKEND,
    SUPPORTED_BITS,
    channel_scales,
    fake_quantize,
    fake_quantize_params,
    get_backend,
    quantize_kernel,
    quantized_layer_kwargs,
    quantized_model,
)

BACKENDS = ["aqt", "qwix"]
CONV_CASES = [  # (padding, strides, dilation)
    ("SAME", (1, 1), (1, 1)),
    ("VALID", (2, 1), (1, 1)),
    (((1, 2), (0, 1)), (1, 2), (2, 1)),
]


def dense_layer(
    bits: int, activation_bits: int | None = None, features: int = 6, backend: str = "aqt"
) -> nn.Dense:
    return nn.Dense(features, **get_backend(backend).layer_kwargs("dense", bits, activation_bits))


def conv_layer(
    bits: int,
    padding="SAME",
    strides=(1, 1),
    dilation=(1, 1),
    features=5,
    backend: str = "aqt",
    activation_bits: int | None = None,
) -> nn.Conv:
    return nn.Conv(
        features,
        (3, 3),
        strides=strides,
        padding=padding,
        kernel_dilation=dilation,
        **get_backend(backend).layer_kwargs("conv", bits, activation_bits),
    )


def float_conv(x, kernel, bias, padding, strides, dilation):
    dn = lax.conv_dimension_numbers(x.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))
    y = lax.conv_general_dilated(
        x,
        kernel,
        strides,
        padding,
        rhs_dilation=dilation,
        dimension_numbers=dn,
        precision=lax.Precision.HIGHEST,
    )
    return y + bias


def random_params(key, in_shape, kernel_shape):
    k1, k2, k3 = jax.random.split(key, 3)
    x = jax.random.normal(k1, in_shape)
    kernel = jax.random.normal(k2, kernel_shape)
    bias = jax.random.normal(k3, kernel_shape[-1:])
    return x, {"params": {"kernel": kernel, "bias": bias}}


@settings(max_examples=25, deadline=None)
@given(
    bits=st.sampled_from(SUPPORTED_BITS),
    seed=st.integers(0, 2**16),
    shape=st.sampled_from([(7, 3), (3, 3, 2, 4), (1, 5)]),
)
def test_quantize_kernel_numerics(bits, seed, shape):
    """Derived: scale = max|w_c| / (2^(b-1)-1); |w - q s| <= s/2; <= 2^b - 1 levels; max kept."""
    kernel = jax.random.normal(jax.random.key(seed), shape) * 3.0
    q, scales = quantize_kernel(kernel, bits)
    bound = 2 ** (bits - 1) - 1
    flat = np.asarray(kernel).reshape(-1, shape[-1])
    q_flat = np.asarray(q).reshape(-1, shape[-1])
    np.testing.assert_allclose(scales, np.abs(flat).max(axis=0) / bound, rtol=1e-6)
    assert q.dtype == jnp.int8 and np.abs(q_flat).max() <= bound
    error = np.abs(flat - q_flat * np.asarray(scales))
    assert np.all(error <= np.asarray(scales) / 2 * (1 + 1e-5))
    for c in range(shape[-1]):
        assert len(np.unique(q_flat[:, c])) <= 2**bits - 1
        i = np.argmax(np.abs(flat[:, c]))
        assert abs(int(q_flat[i, c])) == bound  # the channel maximum is represented exactly
    np.testing.assert_allclose(fake_quantize(kernel, bits), q.astype(jnp.float32) * scales)


def test_zero_channel_quantizes_to_zero():
    kernel = jnp.zeros((4, 2)).at[:, 1].set(jnp.arange(4.0) - 1.5)
    q, scales = quantize_kernel(kernel, 3)
    assert float(scales[0]) == pytest.approx(1 / 3) and not np.any(np.asarray(q[:, 0]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_dense_forward_is_fake_quantized_matmul_and_error_shrinks(backend):
    x, variables = random_params(jax.random.key(0), (32, 64), (64, 6))
    kernel, bias = variables["params"]["kernel"], variables["params"]["bias"]
    y_float = x @ kernel + bias
    errors = []
    for bits in SUPPORTED_BITS:
        y = dense_layer(bits, backend=backend).apply(variables, x)
        y_ref = jnp.dot(x, fake_quantize(kernel, bits), precision="highest") + bias
        np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-4)
        # |x (W - Q(W))| <= |x| @ (scale / 2) per output channel.
        bound = jnp.abs(x) @ jnp.ones_like(kernel) * channel_scales(kernel, bits) / 2
        assert np.all(np.abs(y - y_float) <= bound * (1 + 1e-5) + 1e-4)
        errors.append(float(jnp.mean(jnp.abs(y - y_float))))
    assert all(b < a for a, b in itertools.pairwise(errors)), errors


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("padding", "strides", "dilation"), CONV_CASES)
def test_conv_forward_is_fake_quantized_conv_and_error_shrinks(padding, strides, dilation, backend):
    x, variables = random_params(jax.random.key(1), (2, 11, 10, 4), (3, 3, 4, 5))
    kernel, bias = variables["params"]["kernel"], variables["params"]["bias"]
    y_float = float_conv(x, kernel, bias, padding, strides, dilation)
    errors = []
    for bits in SUPPORTED_BITS:
        y = conv_layer(bits, padding, strides, dilation, backend=backend).apply(variables, x)
        y_ref = float_conv(x, fake_quantize(kernel, bits), bias, padding, strides, dilation)
        np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-4)
        ones = jnp.ones_like(kernel)
        bound = float_conv(jnp.abs(x), ones, 0.0, padding, strides, dilation)
        bound = bound * channel_scales(kernel, bits) / 2
        assert np.all(np.abs(y - y_float) <= bound * (1 + 1e-5) + 1e-4)
        errors.append(float(jnp.mean(jnp.abs(y - y_float))))
    assert all(b < a for a, b in itertools.pairwise(errors)), errors


def _grads(layer_apply, variables, x):
    def loss(variables, x):  # cross-entropy of class 0 with the flattened outputs as logits
        logits = layer_apply(variables, x).reshape(x.shape[0], -1)
        return -jnp.mean(jax.nn.log_softmax(logits)[:, 0])

    return jax.grad(loss, argnums=(0, 1))(variables, x)


def _cosine(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_straight_through_gradients(kind, backend):
    """Gradients equal the float layer's gradients at the quantized kernel (straight-through)."""
    if kind == "dense":
        x, variables = random_params(jax.random.key(2), (16, 40), (40, 6))
        float_apply = nn.Dense(6).apply
        quant_apply = lambda bits: dense_layer(bits, backend=backend).apply
    else:
        x, variables = random_params(jax.random.key(3), (2, 9, 9, 3), (3, 3, 3, 5))
        float_apply = nn.Conv(5, (3, 3), padding="SAME").apply
        quant_apply = lambda bits: conv_layer(bits, backend=backend).apply
    kernel = variables["params"]["kernel"]
    float_grads = _grads(float_apply, variables, x)
    for bits in (2, 4, 8):
        grads = _grads(quant_apply(bits), variables, x)
        at_quantized = {"params": {**variables["params"], "kernel": fake_quantize(kernel, bits)}}
        oracle = _grads(float_apply, at_quantized, x)
        for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(oracle), strict=True):
            assert np.linalg.norm(got) > 0
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    grads8 = _grads(quant_apply(8), variables, x)
    for got, want in zip(jax.tree.leaves(grads8), jax.tree.leaves(float_grads), strict=True):
        assert _cosine(got, want) > 0.999
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.05


@pytest.mark.parametrize("backend", BACKENDS)
def test_activation_quantization_per_row(backend):
    """With activation bits, the input is quantized per row: scale = max|x_row| / (2^(a-1)-1)."""
    x, variables = random_params(jax.random.key(4), (8, 30), (30, 6))
    kernel, bias = variables["params"]["kernel"], variables["params"]["bias"]
    # qwix cannot multiply two int4-stored operands (qwix_backend.check_supported).
    cases = [(4, 8), (8, 4), (5, 3)] + ([(3, 3)] if backend == "aqt" else [])
    for bits, act_bits in cases:
        y = dense_layer(bits, act_bits, backend=backend).apply(variables, x)
        x_q = fake_quantize(x.T, act_bits).T  # rows of x are the "channels" of the lhs
        y_ref = jnp.dot(x_q, fake_quantize(kernel, bits), precision="highest") + bias
        np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-4)
        y_weights_only = dense_layer(bits, backend=backend).apply(variables, x)
        assert float(jnp.max(jnp.abs(y - y_weights_only))) > 1e-3


def _effective_kernel(layer: nn.Module, variables, kind: str) -> np.ndarray:
    """Read back the kernel a layer applies by probing it with one-hot inputs (bias removed)."""
    kernel = variables["params"]["kernel"]
    n_in = int(np.prod(kernel.shape[:-1]))
    probes = jnp.eye(n_in)
    if kind == "conv":
        probes = probes.reshape(n_in, *kernel.shape[:-1])  # VALID conv on a kernel-sized image
    out = layer.apply(variables, probes) - variables["params"]["bias"]
    return np.asarray(out).reshape(kernel.shape)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["dense", "conv"])
@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_layer_runs_at_its_width(kind, bits, backend):
    """The applied kernel has at most 2^b - 1 levels per channel, more than b-1 bits could hold."""
    key = jax.random.key(bits)
    if kind == "dense":
        kernel = jax.random.uniform(key, (1200, 3), minval=-1.0, maxval=1.0)
        layer = dense_layer(bits, features=3, backend=backend)
    else:
        kernel = jax.random.uniform(key, (5, 5, 48, 3), minval=-1.0, maxval=1.0)
        extra = get_backend(backend).layer_kwargs("conv", bits, None)
        layer = nn.Conv(3, (5, 5), padding="VALID", **extra)
    variables = {"params": {"kernel": kernel, "bias": jnp.arange(3.0)}}
    applied = _effective_kernel(layer, variables, kind).reshape(-1, 3)
    scales = np.asarray(channel_scales(kernel, bits))
    assert np.all(np.abs(applied - np.asarray(kernel).reshape(-1, 3)) <= scales / 2 + 1e-5)
    for c in range(3):
        levels = np.unique(np.round(applied[:, c] / scales[c]))
        assert 2 ** (bits - 1) - 1 < len(levels) <= 2**bits - 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_model_layer_runs_at_its_allocated_width(backend):
    model = get_model("lenet5")
    x = jax.random.normal(jax.random.key(5), (3, 28, 28, 1))
    variables = jax.jit(model.init)(jax.random.key(6), x)
    bits = {"conv1": 8, "conv2": 3, "fc1": 2, "fc2": 5, "fc3": 6}
    layer_kwargs = quantized_layer_kwargs(bits, layer_specs(model), backend=backend)
    qmodel = get_model("lenet5", layer_kwargs=layer_kwargs)

    @jax.jit
    def run(variables, x):
        records = {}

        def record(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            module = context.module
            if context.method_name == "__call__" and isinstance(module, nn.Conv | nn.Dense):
                records[module.name] = (args[0], out)
            return out

        with nn.intercept_methods(record):
            logits = qmodel.apply(variables, x)
        return logits, records

    logits, records = run(variables, x)
    params = variables["params"]
    for name, b in bits.items():
        inputs, out = records[name]
        layer = nn.Conv(out.shape[-1], (5, 5), padding="SAME" if name == "conv1" else "VALID")
        if name.startswith("fc"):
            layer = nn.Dense(out.shape[-1])

        def error_at(width, layer=layer, name=name, inputs=inputs, out=out):
            kernel = (
                params[name]["kernel"]
                if width is None
                else fake_quantize(params[name]["kernel"], width)
            )
            ref = layer.apply({"params": {**params[name], "kernel": kernel}}, inputs)
            return float(jnp.max(jnp.abs(ref - out)))

        assert error_at(b) < 1e-4, name
        for other in {b - 1, b + 1} & set(SUPPORTED_BITS):
            assert error_at(other) > 100 * max(error_at(b), 1e-6), (name, other)
    expected = model.apply({"params": fake_quantize_params(params, bits)}, x)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_model_gradients_are_straight_through(backend):
    model = get_model("lenet5")
    x = jax.random.normal(jax.random.key(7), (4, 28, 28, 1))
    params = jax.jit(model.init)(jax.random.key(8), x)["params"]
    bits = {"conv1": 4, "conv2": 2, "fc1": 3, "fc2": 8, "fc3": 5}
    layer_kwargs = quantized_layer_kwargs(bits, layer_specs(model), backend=backend)
    qmodel = get_model("lenet5", layer_kwargs=layer_kwargs)

    def loss(apply, p):
        return jnp.mean(jax.nn.log_softmax(apply({"params": p}, x))[:, 0])

    got = jax.jit(jax.grad(lambda p: loss(qmodel.apply, p)))(params)
    want = jax.jit(jax.grad(lambda p: loss(model.apply, p)))(fake_quantize_params(params, bits))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert np.linalg.norm(g) > 0
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("bad", [1, 9, 0, 4.0, "4", True, None])
def test_bad_weight_bits_raise(bad):
    specs = layer_specs(get_model("lenet5"))
    with pytest.raises(ValueError, match=rf"layer 'fc2'.*{bad!r}".replace("(", r"\(")):
        quantized_layer_kwargs({"conv1": 4, "fc2": bad}, specs)


def test_bad_layer_or_activation_bits_raise():
    specs = layer_specs(get_model("lenet5"))
    with pytest.raises(ValueError, match="unknown layers"):
        quantized_layer_kwargs({"conv9": 4}, specs)
    with pytest.raises(ValueError, match=r"activation_bits.*16"):
        quantized_layer_kwargs({"conv1": 4}, specs, activation_bits=16)
    with pytest.raises(ValueError, match="bit width 1 "):
        quantize_kernel(jnp.ones((2, 2)), 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_matches_reference_backend_in_training_mode(backend):
    """A BatchNorm VGG in train mode: the backend and the plain-JAX reference give the same loss,
    gradients and batch statistics."""
    model = get_model(
        "vgg_small", widths={"conv1": 4, "conv2": 4, "conv3": 8, "conv4": 8, "fc1": 16}
    )
    x = jax.random.normal(jax.random.key(9), (6, 8, 8, 1))
    variables = jax.jit(lambda k, x: model.init(k, x, train=False))(jax.random.key(10), x)
    bits = dict(zip([s.name for s in model.layer_specs()], [2, 3, 4, 5, 6, 8], strict=True))

    def loss_and_grads(backend):
        qmodel = quantized_model(model, bits, backend=backend)

        def loss(params):
            logits, updates = qmodel.apply(
                {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
            )
            return -jnp.mean(jax.nn.log_softmax(logits)[:, 1]), updates

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])

    (got_loss, got_stats), got_grads = loss_and_grads(backend)
    (ref_loss, ref_stats), ref_grads = loss_and_grads(REFERENCE_BACKEND)
    np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-5)
    for got, want in zip(jax.tree.leaves(got_grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    for got, want in zip(jax.tree.leaves(got_stats), jax.tree.leaves(ref_stats), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="weights only"):
        quantized_model(model, bits, activation_bits=8, backend=REFERENCE_BACKEND)


def test_backend_by_name():
    specs = layer_specs(get_model("lenet5"))
    with pytest.raises(ValueError, match=r"unknown quantization backend 'tflite'.*'aqt'"):
        quantized_layer_kwargs({"conv1": 4}, specs, backend="tflite")
    by_name = quantized_layer_kwargs({"conv1": 4, "fc1": 3}, specs, backend="qwix")
    assert set(by_name["conv1"]) == {"conv_general_dilated"} and set(by_name["fc1"]) == {
        "dot_general"
    }
    assert set(quantized_layer_kwargs({"conv1": 4}, specs)["conv1"]) == {"conv_general_dilated_cls"}
