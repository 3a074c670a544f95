"""Quantized layer ops behind a small interface: layer name -> weight bits -> op kwargs.

A backend turns a layer kind (``"conv"``/``"dense"``) and bit widths into extra constructor
kwargs of the layer's ``nn.Conv`` / ``nn.Dense``. Every backend implements the numerics of
``xaijax.quantization.numerics`` (symmetric, per output channel, the channel maximum kept exactly)
with straight-through gradients:

* ``"aqt"`` (default, ``aqt_backend``): AQT's ``DotGeneral``, convolutions as a patch dot_general;
* ``"qwix"`` (``qwix_backend``): qwix's quantized-training ops, calibrated to the same numerics;
* ``"reference"`` (here): weights-only fake quantization in plain JAX, the oracle of the others.

``quantized_layer_kwargs`` feeds ``xaijax.models.get_model(layer_kwargs=...)`` and
``quantized_model`` clones a model with them; both take a backend or its registered name.
The numerics and the AQT names are re-exported here for existing imports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import chex
import flax.linen as nn
from jax import lax

from xaijax.models.common import LayerSpec
from xaijax.quantization.aqt_backend import (
    AQT_BACKEND,
    AqtBackend,
    PatchConv,
    aqt_dot_general_config,
)
from xaijax.quantization.numerics import (
    SUPPORTED_BITS,
    LayerKind,
    channel_scales,
    check_bits,
    check_kind,
    fake_quantize,
    quant_bound,
    quantize_kernel,
    straight_through,
)
from xaijax.quantization.qwix_backend import QWIX_BACKEND, QwixBackend

__all__ = [
    "AQT_BACKEND",
    "BACKENDS",
    "QWIX_BACKEND",
    "REFERENCE_BACKEND",
    "SUPPORTED_BITS",
    "AqtBackend",
    "LayerKind",
    "PatchConv",
    "QuantizationBackend",
    "QwixBackend",
    "ReferenceBackend",
    "aqt_dot_general_config",
    "channel_scales",
    "check_bits",
    "fake_quantize",
    "fake_quantize_params",
    "get_backend",
    "quant_bound",
    "quantize_kernel",
    "quantized_layer_kwargs",
    "quantized_model",
    "straight_through",
]


class QuantizationBackend(Protocol):
    """Turns a layer kind and bit widths into extra constructor kwargs of its nn.Conv / nn.Dense."""

    name: str

    def layer_kwargs(
        self, kind: LayerKind, weight_bits: int, activation_bits: int | None
    ) -> dict[str, Any]: ...


class ReferenceBackend:
    """Weights-only fake quantization in plain JAX: the float op applied to
    ``straight_through(kernel, bits)``. A second implementation of ``QuantizationBackend`` that
    checks the AQT and qwix ones (same numerics, same straight-through gradients)."""

    name = "reference"

    def layer_kwargs(
        self, kind: LayerKind, weight_bits: int, activation_bits: int | None
    ) -> dict[str, Any]:
        if activation_bits is not None:
            raise ValueError(
                "the reference backend quantizes weights only; use activation_bits=None"
            )
        weight_bits = check_bits(weight_bits, "weight_bits")

        def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
            rhs = straight_through(rhs, weight_bits)
            return lax.dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type)

        def conv_general_dilated(lhs, rhs, *args, **kwargs):
            return lax.conv_general_dilated(
                lhs, straight_through(rhs, weight_bits), *args, **kwargs
            )

        if check_kind(kind) == "dense":
            return {"dot_general": dot_general}
        return {"conv_general_dilated": conv_general_dilated}


REFERENCE_BACKEND = ReferenceBackend()

#: Registered backends by name (``config.quantize.backend``).
BACKENDS: dict[str, QuantizationBackend] = {
    AQT_BACKEND.name: AQT_BACKEND,
    QWIX_BACKEND.name: QWIX_BACKEND,
    REFERENCE_BACKEND.name: REFERENCE_BACKEND,
}


def get_backend(backend: QuantizationBackend | str) -> QuantizationBackend:
    """The backend registered as ``backend`` (a name), or ``backend`` itself (an object)."""
    if not isinstance(backend, str):
        return backend
    if backend not in BACKENDS:
        raise ValueError(
            f"unknown quantization backend {backend!r}; choose one of {sorted(BACKENDS)}"
        )
    return BACKENDS[backend]


def quantized_layer_kwargs(
    bits_per_layer: Mapping[str, int],
    specs: Sequence[LayerSpec],
    *,
    activation_bits: int | None = None,
    backend: QuantizationBackend | str = "aqt",
) -> dict[str, dict[str, Any]]:
    """``layer_kwargs`` for ``get_model`` running each named layer at its weight width.

    Layers absent from ``bits_per_layer`` stay in float. ``activation_bits`` (None: float) quantizes
    the inputs of every quantized layer at one fixed width; ``backend`` is a backend or the name
    of a registered one (:data:`BACKENDS`).
    """
    backend = get_backend(backend)
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
    backend: QuantizationBackend | str = "aqt",
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
