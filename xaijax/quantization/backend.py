"""Quantized layer ops behind a small interface: layer name -> weight bits -> op kwargs.

Numerics (shared by every backend, by the sensitivity models and by the integer export): symmetric
integer quantization of a kernel per output channel (the last axis of an HWIO conv kernel or of an
``[in, out]`` Dense kernel). For ``b`` bits and channel ``c``

    scale_c = max_i |w_ic| / (2^(b-1) - 1),    q_ic = round(clip(w_ic / scale_c, +-(2^(b-1) - 1))),

so ``q`` takes at most ``2^b - 1`` values, the channel's largest weight is represented exactly and
``|w - q * scale| <= scale / 2``. An all-zero channel is scaled as if its maximum were 1 (as AQT
does), so it quantizes to zeros. Activations, when quantized, use the same numerics per row of the
contraction (per example, and per position for a conv).

The AQT backend runs Dense layers through ``AqtDotGeneral`` and convolutions as that same quantized
dot_general over ``lax.conv_general_dilated_patches``: AQT's ``DotGeneral`` passes straight-through
gradients, whereas AQT's own ``AqtConvGeneralDilated`` gives a zero kernel gradient (and a zero
input gradient too when activations are quantized), so QAT through it would train no convolution
(docs/design.md, "Quantized convolutions"). The backward dot_generals run in float on the
forward's quantized operands, so every gradient equals the float layer's gradient evaluated at the
quantized kernel (the textbook straight-through estimator).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from aqt.jax.v2 import config as aqt_config
from aqt.jax.v2.flax import aqt_flax
from aqt.jax.v2.numerics import utils as aqt_numerics
from jax import lax

from xaijax.models.common import LayerSpec

SUPPORTED_BITS = (2, 3, 4, 5, 6, 7, 8)
LayerKind = Literal["conv", "dense"]


def check_bits(bits: Any, what: str) -> int:
    """Return ``bits`` as an int if it is a supported weight width, else raise naming ``what``."""
    if (
        isinstance(bits, bool)
        or not isinstance(bits, int | np.integer)
        or bits not in SUPPORTED_BITS
    ):
        raise ValueError(
            f"{what}: bit width {bits!r} is not supported; choose one of {SUPPORTED_BITS}"
        )
    return int(bits)


def quant_bound(bits: int) -> int:
    """Largest integer magnitude at ``bits`` bits: ``2^(bits-1) - 1``."""
    return 2 ** (bits - 1) - 1


def channel_scales(kernel: jax.Array, bits: int) -> jax.Array:
    """Per-output-channel ``max|w| / (2^(b-1) - 1)``, shape ``[out]`` (zero channel: max 1)."""
    abs_max = jnp.max(jnp.abs(kernel), axis=tuple(range(kernel.ndim - 1)))
    abs_max = jnp.where(abs_max == 0.0, 1.0, abs_max)
    return (abs_max / quant_bound(bits)).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames="bits")
def _quantize(kernel: jax.Array, bits: int) -> tuple[jax.Array, jax.Array]:
    scales = channel_scales(kernel, bits)
    bound = quant_bound(bits)
    # Multiply by the reciprocal, as AQT does, so both round the same ties the same way.
    q = jnp.round(jnp.clip(kernel * (1.0 / scales), -bound, bound))
    return q.astype(jnp.int8), scales


def quantize_kernel(kernel: jax.Array, bits: int) -> tuple[jax.Array, jax.Array]:
    """Integers ``q`` (int8, same shape as ``kernel``) and per-channel float32 scales."""
    return _quantize(jnp.asarray(kernel, jnp.float32), check_bits(bits, "quantize_kernel"))


def fake_quantize(kernel: jax.Array, bits: int) -> jax.Array:
    """``q * scale``: the kernel as the quantized layer sees it."""
    q, scales = quantize_kernel(kernel, bits)
    return q.astype(jnp.float32) * scales


class QuantizationBackend(Protocol):
    """Turns a layer kind and bit widths into extra constructor kwargs of its nn.Conv / nn.Dense."""

    name: str

    def layer_kwargs(
        self, kind: LayerKind, weight_bits: int, activation_bits: int | None
    ) -> dict[str, Any]: ...


def aqt_dot_general_config(weight_bits: int, activation_bits: int | None = None):
    """AQT ``DotGeneral`` config: rhs (weights) at ``weight_bits``, lhs at ``activation_bits``.

    Built from ``config_v4(fwd_bits=b, dlhs_bits=None, drhs_bits=None)``: forward quantized, both
    backward dot_generals in float, so gradients are straight-through. Scales are abs-max over the
    contracting axes with the channel maximum mapped onto the largest integer
    (``preserve_max_val``).
    """
    cfg = aqt_config.config_v4(fwd_bits=weight_bits, dlhs_bits=None, drhs_bits=None)
    aqt_config.set_bits(
        cfg,
        fwd_lhs_bit=activation_bits,
        fwd_rhs_bit=weight_bits,
        dlhs_lhs_bit=None,
        dlhs_rhs_bit=None,
        drhs_lhs_bit=None,
        drhs_rhs_bit=None,
    )
    aqt_config.set_numerics(
        cfg.fwd,
        aqt_numerics.get_numerics(activation_bits, preserve_max_val=True),
        aqt_numerics.get_numerics(weight_bits, preserve_max_val=True),
    )
    # Backward dot_generals reuse the forward's quantized operands: the textbook straight-through
    # estimator, i.e. the float model's gradient evaluated at the quantized weights/activations.
    aqt_config.set_use_fwd_quant(
        cfg, dlhs_use_fwd_quant=True, drhs_use_fwd_quant=activation_bits is not None
    )
    return cfg


def _check_channels_last(dimension_numbers: lax.ConvDimensionNumbers | None, ndim: int) -> None:
    spatial = tuple(range(1, ndim - 1))
    want_lhs = (0, ndim - 1, *spatial)
    want_rhs = (ndim - 1, ndim - 2, *range(ndim - 2))
    if dimension_numbers is None or (
        tuple(dimension_numbers.lhs_spec) != want_lhs
        or tuple(dimension_numbers.rhs_spec) != want_rhs
        or tuple(dimension_numbers.out_spec) != want_lhs
    ):
        raise ValueError(
            "the patch convolution supports channels-last inputs/outputs and "
            f"[*spatial, in, out] kernels only, got dimension_numbers={dimension_numbers}"
        )


class PatchConv(nn.Module):
    """``lax.conv_general_dilated`` as a (quantized) dot_general over image patches.

    Patches ``[N, *out_spatial, C * prod(window)]`` are ordered channel-major, so the kernel
    ``[*window, C, O]`` becomes ``[C * prod(window), O]`` by moving C to the front. Contracting that
    axis keeps the per-output-channel scales of the kernel.
    """

    dot_general_cls: Any

    @nn.compact
    def __call__(
        self,
        lhs: jax.Array,
        rhs: jax.Array,
        window_strides: Sequence[int],
        padding: str | Sequence[tuple[int, int]],
        lhs_dilation: Sequence[int] | None = None,
        rhs_dilation: Sequence[int] | None = None,
        dimension_numbers: lax.ConvDimensionNumbers | None = None,
        feature_group_count: int = 1,
        precision: Any = None,
    ) -> jax.Array:
        if feature_group_count != 1:
            raise ValueError(
                f"the patch convolution needs feature_group_count=1, got {feature_group_count}"
            )
        _check_channels_last(dimension_numbers, lhs.ndim)
        window = rhs.shape[:-2]
        patches = lax.conv_general_dilated_patches(
            lhs,
            window,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            precision=precision,
        )
        n_spatial = rhs.ndim - 2
        matrix = jnp.moveaxis(rhs, n_spatial, 0).reshape(-1, rhs.shape[-1])
        contraction = (((patches.ndim - 1,), (0,)), ((), ()))
        return self.dot_general_cls()(patches, matrix, contraction, precision=None)


class AqtBackend:
    """AQT implementation of ``QuantizationBackend``."""

    name = "aqt"

    def layer_kwargs(
        self, kind: LayerKind, weight_bits: int, activation_bits: int | None
    ) -> dict[str, Any]:
        cfg = aqt_dot_general_config(weight_bits, activation_bits)
        dot_general_cls = functools.partial(aqt_flax.AqtDotGeneral, cfg, prng_name=None)
        if kind == "dense":
            return {"dot_general_cls": dot_general_cls}
        if kind == "conv":
            return {"conv_general_dilated_cls": functools.partial(PatchConv, dot_general_cls)}
        raise ValueError(f"unknown layer kind {kind!r}; expected 'conv' or 'dense'")


AQT_BACKEND = AqtBackend()


def straight_through(kernel: jax.Array, bits: int) -> jax.Array:
    """``fake_quantize(kernel, bits)`` forward, identity backward (straight-through estimator)."""
    return kernel + lax.stop_gradient(fake_quantize(kernel, bits) - kernel)


class ReferenceBackend:
    """Weights-only fake quantization in plain JAX: the float op applied to
    ``straight_through(kernel, bits)``. A second implementation of ``QuantizationBackend`` that
    checks the AQT one (same numerics, same straight-through gradients)."""

    name = "reference"

    def layer_kwargs(
        self, kind: LayerKind, weight_bits: int, activation_bits: int | None
    ) -> dict[str, Any]:
        if activation_bits is not None:
            raise ValueError(
                "the reference backend quantizes weights only; use activation_bits=None"
            )

        def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
            rhs = straight_through(rhs, weight_bits)
            return lax.dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type)

        def conv_general_dilated(lhs, rhs, *args, **kwargs):
            return lax.conv_general_dilated(
                lhs, straight_through(rhs, weight_bits), *args, **kwargs
            )

        if kind == "dense":
            return {"dot_general": dot_general}
        if kind == "conv":
            return {"conv_general_dilated": conv_general_dilated}
        raise ValueError(f"unknown layer kind {kind!r}; expected 'conv' or 'dense'")


REFERENCE_BACKEND = ReferenceBackend()


def quantized_layer_kwargs(
    bits_per_layer: Mapping[str, int],
    specs: Sequence[LayerSpec],
    *,
    activation_bits: int | None = None,
    backend: QuantizationBackend = AQT_BACKEND,
) -> dict[str, dict[str, Any]]:
    """``layer_kwargs`` for ``get_model`` running each named layer at its weight width.

    Layers absent from ``bits_per_layer`` stay in float. ``activation_bits`` (None: float) quantizes
    the inputs of every quantized layer at one fixed width.
    """
    kinds = {spec.name: spec.kind for spec in specs}
    unknown = sorted(set(bits_per_layer) - set(kinds))
    if unknown:
        raise ValueError(f"bits_per_layer names unknown layers {unknown}; layers are {list(kinds)}")
    if activation_bits is not None:
        activation_bits = check_bits(activation_bits, "activation_bits")
    checked = {name: check_bits(b, f"layer {name!r}") for name, b in bits_per_layer.items()}
    return {
        name: backend.layer_kwargs(kinds[name], bits, activation_bits)
        for name, bits in checked.items()
    }


def quantized_model(
    model: nn.Module,
    bits_per_layer: Mapping[str, int],
    *,
    activation_bits: int | None = None,
    backend: QuantizationBackend = AQT_BACKEND,
) -> nn.Module:
    """A copy of a model-zoo ``model`` whose listed layers run quantized (same variables)."""
    kwargs = quantized_layer_kwargs(
        bits_per_layer, model.layer_specs(), activation_bits=activation_bits, backend=backend
    )
    existing = {name: dict(extra) for name, extra in (model.layer_kwargs or {}).items()}
    for name, extra in kwargs.items():
        existing[name] = {**existing.get(name, {}), **extra}
    return model.clone(layer_kwargs=existing)


def fake_quantize_params(params: Any, bits_per_layer: Mapping[str, int]) -> Any:
    """``params`` with each listed layer's kernel replaced by its fake-quantized value."""
    missing = sorted(name for name in bits_per_layer if name not in params)
    if missing:
        raise ValueError(f"bits_per_layer names layers {missing} absent from params")
    out = dict(params)
    for name, bits in bits_per_layer.items():
        chex.assert_rank(params[name]["kernel"], {2, 3, 4, 5})
        out[name] = {**params[name], "kernel": fake_quantize(params[name]["kernel"], bits)}
    return out
