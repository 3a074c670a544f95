"""The AQT backend: Dense layers through ``AqtDotGeneral``, convolutions as a patch dot_general.

Numerics: ``xaijax.quantization.numerics`` (symmetric, per output channel, the channel maximum
kept exactly via AQT's ``preserve_max_val``; activations per row of the contraction, i.e. per
example for a Dense layer and per image patch for a conv).

Convolutions run as the same quantized dot_general over ``lax.conv_general_dilated_patches``:
AQT's ``DotGeneral`` passes straight-through gradients, whereas AQT's own
``AqtConvGeneralDilated`` gives a zero kernel gradient (and a zero input gradient too when
activations are quantized), so QAT through it would train no convolution (docs/design.md,
"Quantized convolutions"). The backward dot_generals run in float on the forward's quantized
operands, so every gradient equals the float layer's gradient evaluated at the quantized kernel
(the textbook straight-through estimator).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from aqt.jax.v2 import config as aqt_config
from aqt.jax.v2.flax import aqt_flax
from aqt.jax.v2.numerics import utils as aqt_numerics
from jax import lax

from xaijax.quantization.numerics import LayerKind, check_kind, check_layer_bits


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
    """AQT implementation of ``xaijax.quantization.backend.QuantizationBackend``."""

    name = "aqt"

    def layer_kwargs(
        self, kind: LayerKind, weight_bits: int, activation_bits: int | None
    ) -> dict[str, Any]:
        weight_bits, activation_bits = check_layer_bits(weight_bits, activation_bits)
        cfg = aqt_dot_general_config(weight_bits, activation_bits)
        dot_general_cls = functools.partial(aqt_flax.AqtDotGeneral, cfg, prng_name=None)
        if check_kind(kind) == "dense":
            return {"dot_general_cls": dot_general_cls}
        return {"conv_general_dilated_cls": functools.partial(PatchConv, dot_general_cls)}


AQT_BACKEND = AqtBackend()
