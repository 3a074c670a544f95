"""What is specific to the qwix backend: its calibration reproduces the shared numerics, qwix's
default numerics differ (the reason for it), conv activations per example, unsupported widths."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import qwix
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from xaijax.quantization import QWIX_BACKEND, SUPPORTED_BITS, fake_quantize, quantize_kernel
from xaijax.quantization.qwix_backend import qwix_calibration, qwix_qtype


def qwix_quantize(kernel: jax.Array, bits: int, calibration: str) -> tuple[np.ndarray, np.ndarray]:
    """qwix's own per-output-channel quantization: (integers, scales per channel)."""
    q = qwix.quantize(
        kernel,
        qwix_qtype(bits),
        channelwise_axes=(kernel.ndim - 1,),
        calibration_method=calibration,
    )
    return np.asarray(q.qvalue).astype(np.int32), np.asarray(q.scale).reshape(-1)


@settings(max_examples=15, deadline=None)
@given(
    bits=st.sampled_from(SUPPORTED_BITS),
    seed=st.integers(0, 2**16),
    shape=st.sampled_from([(40, 3), (3, 3, 4, 5), (1, 7)]),
)
def test_calibration_gives_the_shared_numerics(bits, seed, shape):
    """With ``qwix_calibration``, qwix's integers are ``quantize_kernel``'s and its scales agree
    within two float32 ulps."""
    kernel = jax.random.normal(jax.random.key(seed), shape) * 2.0
    got_q, got_scales = qwix_quantize(kernel, bits, qwix_calibration(bits))
    want_q, want_scales = quantize_kernel(kernel, bits)
    np.testing.assert_array_equal(got_q, np.asarray(want_q))
    np.testing.assert_allclose(got_scales, want_scales, rtol=2.5e-7, atol=0)


def test_qwix_default_calibration_differs():
    """qwix's plain ``absmax``: scale = max|w| / (qmax + 1/2), round, clip to [-2^(b-1), qmax].
    At 3 bits (qmax 3): 0.45 -> round(1.575) = 2 where the shared numerics give round(1.35) = 1,
    and the maximum 1.0 -> 3 (3 / 3.5 after dequantization, not 1.0)."""
    kernel = jnp.array([[-1.0, 1.0], [0.45, -0.25], [0.0, 0.45]])
    q, scales = qwix_quantize(kernel, 3, "absmax")
    np.testing.assert_allclose(scales, [1 / 3.5, 1 / 3.5], rtol=1e-6)
    assert q[0, 0] in (-3, -4)  # -3.5 up to float rounding: either side of the tie
    np.testing.assert_array_equal(q[1:], [[2, -1], [0, 2]])
    assert q[0, 1] == 3 and abs(q[0, 1] * scales[1] - 1.0) > 0.1
    shared_q, shared_scales = quantize_kernel(kernel, 3)
    np.testing.assert_array_equal(shared_q, [[-3, 3], [1, -1], [0, 1]])
    np.testing.assert_allclose(shared_q[0] * shared_scales, [-1.0, 1.0], rtol=1e-6)
    assert qwix_calibration(3) == f"absmax,{3.5 / 3!r}"


def test_zero_channel_stays_zero():
    kernel = jnp.zeros((5, 2)).at[:, 1].set(jnp.arange(5.0) - 2.0)
    variables = {"params": {"kernel": kernel, "bias": jnp.array([0.25, 0.0])}}
    x = jax.random.normal(jax.random.key(0), (4, 5))
    y = nn.Dense(2, **QWIX_BACKEND.layer_kwargs("dense", 3, None)).apply(variables, x)
    np.testing.assert_array_equal(y[:, 0], jnp.full(4, 0.25))
    np.testing.assert_allclose(y[:, 1], x @ fake_quantize(kernel, 3)[:, 1], rtol=1e-5, atol=1e-6)


def test_conv_activations_are_quantized_per_example():
    """qwix scales a conv input once per example (over H, W, C), unlike AQT's per patch."""
    x = (
        jax.random.normal(jax.random.key(1), (3, 9, 8, 4))
        * jnp.array([1.0, 4.0, 0.25])[:, None, None, None]
    )
    kernel = jax.random.normal(jax.random.key(2), (3, 3, 4, 5))
    variables = {"params": {"kernel": kernel, "bias": jnp.zeros(5)}}
    dn = lax.conv_dimension_numbers(x.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))
    for bits, act_bits in [(8, 5), (6, 8)]:
        layer = nn.Conv(5, (3, 3), **QWIX_BACKEND.layer_kwargs("conv", bits, act_bits))
        y = layer.apply(variables, x)
        x_q = fake_quantize(x.reshape(3, -1).T, act_bits).T.reshape(x.shape)
        y_ref = lax.conv_general_dilated(
            x_q,
            fake_quantize(kernel, bits),
            (1, 1),
            "SAME",
            dimension_numbers=dn,
            precision="highest",
        )
        np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-4)
        weights_only = nn.Conv(5, (3, 3), **QWIX_BACKEND.layer_kwargs("conv", bits, None))
        assert float(jnp.max(jnp.abs(y - weights_only.apply(variables, x)))) > 1e-3


@pytest.mark.parametrize(
    ("kind", "bits", "act_bits"), [("dense", 4, 4), ("dense", 2, 3), ("conv", 8, 4), ("conv", 4, 8)]
)
def test_unsupported_integer_products_raise(kind, bits, act_bits):
    with pytest.raises(ValueError, match=rf"qwix backend cannot run a {kind} layer at {bits}-bit"):
        QWIX_BACKEND.layer_kwargs(kind, bits, act_bits)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="unknown layer kind 'lstm'"):
        QWIX_BACKEND.layer_kwargs("lstm", 4, None)
    with pytest.raises(ValueError, match=r"weight_bits: bit width 9"):
        QWIX_BACKEND.layer_kwargs("dense", 9, None)
    with pytest.raises(ValueError, match=r"activation_bits: bit width 1 "):
        QWIX_BACKEND.layer_kwargs("conv", 8, 1)


def test_experiment_backend_field():
    """``config.quantize.backend``: "aqt" by default, validated before any work."""
    from xaijax.experiments import quantize

    q = quantize.defaults()
    assert q.backend == "aqt"
    quantize.validate(q)
    q.backend = "qwix"
    quantize.validate(q)
    q.backend = "tflite"
    with pytest.raises(ValueError, match=r"config.quantize.backend='tflite'.*unknown"):
        quantize.validate(q)
    q.backend, q.activation_bits = "qwix", 8
    with pytest.raises(ValueError, match=r"config.quantize.backend='qwix'.*cannot run a conv"):
        quantize.validate(q)  # the default bit choices include widths below 5
    q.bit_choices, q.budgets = (5, 6, 8), (6.0,)
    quantize.validate(q)
