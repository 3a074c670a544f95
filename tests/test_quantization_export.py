"""Integer export: bit packing, orbax round trip, integer model == fake-quantized model, sizes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xaijax.models import get_model, layer_specs
from xaijax.quantization import (
    SUPPORTED_BITS,
    dequantize,
    export_integer_model,
    fake_quantize,
    integer_kernel,
    load_integer_model,
    model_size_bytes,
    pack_bits,
    quantize_kernel,
    quantized_layer_kwargs,
    save_integer_model,
    unpack_bits,
)

BITS = {"conv1": 8, "conv2": 3, "fc1": 2, "fc2": 5, "fc3": 6}


@settings(max_examples=30, deadline=None)
@given(bits=st.sampled_from(SUPPORTED_BITS), seed=st.integers(0, 2**16), n=st.integers(1, 300))
def test_pack_unpack_round_trip(bits, seed, n):
    bound = 2 ** (bits - 1) - 1
    values = np.random.default_rng(seed).integers(-bound, bound + 1, size=(n,)).astype(np.int8)
    packed = pack_bits(values, bits)
    assert packed.dtype == np.uint8 and packed.size == -(-n * bits // 8)
    np.testing.assert_array_equal(unpack_bits(packed, bits, (n,)), values)


def test_pack_rejects_out_of_range():
    with pytest.raises(ValueError, match="cannot be packed at 2 bits"):
        pack_bits(np.array([2], np.int8), 2)


@pytest.fixture(scope="module")
def lenet():
    model = get_model("lenet5")
    x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
    variables = jax.jit(model.init)(jax.random.key(1), x)
    return model, variables, x


@pytest.mark.parametrize("pack", [False, True])
def test_integer_model_round_trip(lenet, tmp_path, pack):
    model, variables, x = lenet
    exported = export_integer_model(variables, BITS, pack=pack)
    for name, bits in BITS.items():
        entry = exported["quantized"][name]
        q, scales = quantize_kernel(variables["params"][name]["kernel"], bits)
        np.testing.assert_array_equal(integer_kernel(entry), q)
        np.testing.assert_array_equal(entry["scales"], scales)
        assert entry["scales"].dtype == np.float32 and "kernel" not in exported["params"][name]
        assert ("packed" if pack else "values") in entry

    size = save_integer_model(tmp_path / "int_model", exported)
    restored = load_integer_model(tmp_path / "int_model")
    assert jax.tree.structure(restored) == jax.tree.structure(exported)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(exported), strict=True):
        np.testing.assert_array_equal(a, b)
        assert np.asarray(a).dtype == np.asarray(b).dtype
    assert size > 0

    integer_variables = dequantize(restored)
    from_integers = jax.jit(model.apply)(integer_variables, x)
    for backend in ("aqt", "qwix"):  # the export agrees with the model of every backend
        layer_kwargs = quantized_layer_kwargs(BITS, layer_specs(model), backend=backend)
        fake_quantized = jax.jit(get_model("lenet5", layer_kwargs=layer_kwargs).apply)(variables, x)
        np.testing.assert_allclose(from_integers, fake_quantized, rtol=1e-5, atol=1e-5)
    for name, bits in BITS.items():
        np.testing.assert_allclose(
            integer_variables["params"][name]["kernel"],
            fake_quantize(variables["params"][name]["kernel"], bits),
            rtol=1e-6,
        )


def test_packed_file_is_smaller_and_sizes_add_up(lenet, tmp_path):
    _, variables, _ = lenet
    params = variables["params"]
    two_bits = dict.fromkeys(BITS, 2)
    unpacked = save_integer_model(tmp_path / "a", export_integer_model(variables, two_bits))
    packed = save_integer_model(
        tmp_path / "b", export_integer_model(variables, two_bits, pack=True)
    )
    assert packed < unpacked
    sizes = model_size_bytes(params, BITS)
    n_weights = {name: int(np.prod(params[name]["kernel"].shape)) for name in BITS}
    assert sizes["kernels"] == sum(n_weights[n] * BITS[n] / 8 for n in BITS)
    n_params = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))
    assert sizes["float32_model"] == 4 * n_params
    assert sizes["float_params"] == 4 * (n_params - sum(n_weights.values()))
    assert sizes["scales"] == 4 * sum(params[n]["kernel"].shape[-1] for n in BITS)
    assert sizes["total"] == sizes["kernels"] + sizes["scales"] + sizes["float_params"]


def test_export_errors(lenet):
    _, variables, _ = lenet
    with pytest.raises(ValueError, match="absent from params"):
        export_integer_model(variables, {"conv7": 4})
    with pytest.raises(ValueError, match=r"layer 'fc1'.*9"):
        export_integer_model(variables, {"fc1": 9})
    with pytest.raises(ValueError, match="not an exported integer model"):
        dequantize({"params": jnp.zeros(1)})
