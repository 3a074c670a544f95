"""The qwix backend: qwix's quantized-training (QT) ops as the ``dot_general`` of ``nn.Dense`` and
the ``conv_general_dilated`` of ``nn.Conv``.

qwix (``google/qwix``, AQT's successor; pinned ``qwix==0.1.8``) quantizes a model either by
intercepting every op of a whole model (``qwix.quantize_model`` with ``QtProvider`` rules that
match module paths) or by calling the provider's ops explicitly. Neither fits a per-layer backend
well: the provider decides which operand is the weight by looking the array up among the module's
params, and with a float backward it differentiates a Dense input with the float kernel. This
backend therefore calls the ops ``QtProvider`` calls, ``dot_general_qt`` and ``conv_general_qt``,
with configs it builds itself: the kernel is always the rhs, the lhs (input) is quantized only at
``activation_bits``.

Numerics. qwix's symmetric ``absmax`` calibration maps a channel's ``max|w|`` onto the continuous
bound ``qmax + 1/2`` (``qmax = 2^(b-1) - 1``): ``scale = max|w| / (qmax + 1/2)``, then it rounds
half to even and clips to ``[-2^(b-1), qmax]``. The channel maximum thus lands on ``qmax`` (so it
comes back as ``qmax / (qmax + 1/2)`` of itself) or, when negative and the division rounds onto
the tie, on ``-2^(b-1)`` (``2^b`` levels); its step is ``qmax / (qmax + 1/2)`` of the shared one.
Calibrating with the factor ``(qmax + 1/2) / qmax`` (``"absmax,<factor>"``,
:func:`qwix_calibration`) gives ``scale = max|w| / qmax``, the shared numerics of
``xaijax.quantization.numerics``: the integers are those of ``quantize_kernel`` and the scales
agree within two float32 ulps (qwix rounds ``max|w| * factor`` and then the division; it also
divides by the scale where AQT multiplies by its reciprocal). An all-zero channel gets scale 1 and
quantizes to zeros, as in the shared numerics.

Activations (``activation_bits``) use the same calibration: per row for a Dense layer (per example,
as AQT), but per example over the whole ``H x W x C`` input for a conv (qwix's conv keeps only the
batch axis channelwise), where AQT's patch convolution scales every image patch separately.

qwix 0.1.8 multiplies two quantized operands in their integer storage (int4 up to 4 bits, int8
above), which XLA's CPU and GPU backends reject for int4 x int4 products and ``lax.conv`` rejects
for mixed int4/int8 operands. With activation quantization this backend therefore needs, for a
Dense layer, one of the two widths above 4 bits and, for a conv, both (:func:`check_supported`).

Gradients are straight-through: both backward products run in float on the forward's quantized
operands (``use_original_residuals=False``), unclipped, so every gradient equals the float layer's
gradient at the quantized kernel (and quantized input), as with AQT. The ops ignore ``precision``
(qwix runs the default precision: exact float32 on the CPU).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from qwix._src.core import conv_general_qt, dot_general_qt

from xaijax.quantization.numerics import (
    LayerKind,
    check_bits,
    check_kind,
    check_layer_bits,
    quant_bound,
)

#: qwix's qtype per width: its native int4/int8 dtypes, else its synthetic ``"int<b>"`` types
#: (stored in int4 up to 4 bits, int8 above).
QWIX_QTYPES: dict[int, Any] = {
    2: "int2",
    3: "int3",
    4: jnp.int4,
    5: "int5",
    6: "int6",
    7: "int7",
    8: jnp.int8,
}


def qwix_qtype(bits: int) -> Any:
    """The qwix qtype of a ``bits``-bit signed integer."""
    return QWIX_QTYPES[check_bits(bits, "qwix_qtype")]


def qwix_calibration(bits: int) -> str:
    """qwix calibration ``"absmax,(qmax + 1/2) / qmax"``: ``scale = max|w| / qmax`` (module doc)."""
    qmax = quant_bound(check_bits(bits, "qwix_calibration"))
    return f"absmax,{(qmax + 0.5) / qmax!r}"


def check_supported(kind: LayerKind, weight_bits: int, activation_bits: int | None) -> None:
    """Raise if qwix cannot run ``kind`` at these widths (module docstring: integer storage)."""
    if activation_bits is None:
        return
    narrow = (weight_bits <= 4, activation_bits <= 4)
    if kind == "dense" and all(narrow):
        raise ValueError(
            f"the qwix backend cannot run a dense layer at {weight_bits}-bit weights and "
            f"{activation_bits}-bit activations: qwix 0.1.8 multiplies both in int4, which XLA "
            "rejects; use more than 4 bits for the weights or the activations"
        )
    if kind == "conv" and any(narrow):
        raise ValueError(
            f"the qwix backend cannot run a conv layer at {weight_bits}-bit weights and "
            f"{activation_bits}-bit activations: qwix 0.1.8 convolves the integer operands, "
            "which XLA rejects in int4; use more than 4 bits for both"
        )


def _operand_fields(weight_bits: int, activation_bits: int | None) -> dict[str, Any]:
    """The qtypes and calibrations of a QT config: rhs (kernel) at ``weight_bits``, lhs (input)
    at ``activation_bits`` (None: float)."""
    return {
        "lhs_qtype": None if activation_bits is None else qwix_qtype(activation_bits),
        "rhs_qtype": qwix_qtype(weight_bits),
        "lhs_calibration_method": (
            "absmax" if activation_bits is None else qwix_calibration(activation_bits)
        ),
        "rhs_calibration_method": qwix_calibration(weight_bits),
    }


def dot_general_config(
    weight_bits: int, activation_bits: int | None = None
) -> dot_general_qt.DotGeneralQtConfig:
    """qwix QT config of a Dense layer: rhs (kernel) at ``weight_bits``, lhs at
    ``activation_bits`` (None: float), straight-through float backward on quantized operands."""
    return dot_general_qt.DotGeneralQtConfig(
        **_operand_fields(weight_bits, activation_bits),
        use_original_residuals=False,
        disable_gradient_clipping=True,
    )


def conv_config(
    weight_bits: int, activation_bits: int | None = None
) -> conv_general_qt.ConvGeneralQtConfig:
    """qwix QT config of a conv layer (kernel per output channel, input per example)."""
    return conv_general_qt.ConvGeneralQtConfig(**_operand_fields(weight_bits, activation_bits))


def qwix_dot_general(
    config: dot_general_qt.DotGeneralQtConfig,
    lhs: jax.Array,
    rhs: jax.Array,
    dimension_numbers: Any,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """``lax.dot_general`` signature over qwix's ``dot_general_qt`` (``precision`` ignored)."""
    del precision
    out = dot_general_qt.dot_general_qt(lhs, rhs, dimension_numbers, config)
    return out if preferred_element_type is None else out.astype(preferred_element_type)


def _hashable_padding(padding: str | Sequence[Sequence[int]]) -> str | tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        return padding
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _optional_tuple(values: Sequence[int] | None) -> tuple[int, ...] | None:
    return None if values is None else tuple(int(v) for v in values)


_CONV_SIGNATURE = inspect.signature(lax.conv_general_dilated)


def qwix_conv_general_dilated(
    config: conv_general_qt.ConvGeneralQtConfig, *args: Any, **kwargs: Any
) -> jax.Array:
    """``lax.conv_general_dilated(*args, **kwargs)`` (its signature, bound by name) over qwix's
    ``conv_general_qt`` (``precision`` ignored; the static arguments are made hashable, as its
    custom VJP needs)."""
    call = _CONV_SIGNATURE.bind(*args, **kwargs)
    call.apply_defaults()
    bound = call.arguments
    if bound.get("out_sharding") is not None:
        raise ValueError(f"the qwix convolution takes no out_sharding, got {bound['out_sharding']}")
    out = conv_general_qt.conv_general_qt(
        bound["lhs"],
        bound["rhs"],
        config,
        tuple(int(s) for s in bound["window_strides"]),
        _hashable_padding(bound["padding"]),
        _optional_tuple(bound["lhs_dilation"]),
        _optional_tuple(bound["rhs_dilation"]),
        bound["dimension_numbers"],
        bound["feature_group_count"],
        bound["batch_group_count"],
    )
    preferred = bound["preferred_element_type"]
    return out if preferred is None else out.astype(preferred)


class QwixBackend:
    """qwix implementation of ``xaijax.quantization.backend.QuantizationBackend``."""

    name = "qwix"

    def layer_kwargs(
        self, kind: LayerKind, weight_bits: int, activation_bits: int | None
    ) -> dict[str, Any]:
        weight_bits, activation_bits = check_layer_bits(weight_bits, activation_bits)
        check_supported(check_kind(kind), weight_bits, activation_bits)
        if kind == "dense":
            config = dot_general_config(weight_bits, activation_bits)
            return {"dot_general": functools.partial(qwix_dot_general, config)}
        config = conv_config(weight_bits, activation_bits)
        return {"conv_general_dilated": functools.partial(qwix_conv_general_dilated, config)}


QWIX_BACKEND = QwixBackend()
