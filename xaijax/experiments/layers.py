"""What the stages need of a model's layers: by the zoo's hooks where the model has them, else
without them, so every stage runs on a user's own, unmodified linen model.

* the layers (:func:`specs`): ``model.layer_specs()`` if written, else found by tracing the model
  on one example (``xaijax.models.layer_specs_of``);
* their parameters and FLOPs (:func:`costs`): ``xaijax.models.traced_layer_costs``;
* the physically narrower model (:func:`shrink`): ``xaijax.pruning.shrink`` for a model with a
  ``widths`` field, else ``xaijax.pruning.shrink_any`` (a :class:`xaijax.pruning.Narrowed`
  running the model's own code on sliced variables); :func:`shrunk_model` rebuilds it from the
  widths a pruning run recorded;
* the quantized model (:func:`quantized`): ``xaijax.quantization.quantized_model`` for a model
  with a ``layer_kwargs`` field, else ``xaijax.quantization.quantize_any`` (intercepted calls).

The model is applied in inference mode with ``xaijax.models.inference_kwargs`` (``train=False``
only for a model whose ``__call__`` takes ``train``, looking through the wrappers above to the
user's model).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from xaijax import models, pruning
from xaijax.quantization import quantize_any, quantized_model

Variables = Mapping[str, Any]


def has_field(model: nn.Module, name: str) -> bool:
    """Whether ``model`` is built with a dataclass field ``name`` (a zoo hook: ``widths``,
    ``layer_kwargs``)."""
    return any(field.name == name for field in dataclasses.fields(model))


def example_input(input_shape: Sequence[int]) -> jax.ShapeDtypeStruct:
    """One example of shape ``input_shape`` ``(H, W, C)`` as a batch of one (shapes only)."""
    return jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)


def specs(model: nn.Module, input_shape: Sequence[int]) -> tuple[models.LayerSpec, ...]:
    """The layers of ``model`` (``models.layer_specs_of`` on one example of ``input_shape``)."""
    return models.layer_specs_of(
        model, example_input(input_shape), **models.inference_kwargs(model)
    )


def costs(
    model: nn.Module,
    variables: Variables,
    input_shape: Sequence[int],
    layer_specs: Sequence[models.LayerSpec] | None = None,
) -> dict[str, dict[str, int]]:
    """``{layer: {"params", "flops"}}`` of the layers ``layer_specs`` (default: :func:`specs`)
    of ``model`` on one example of ``input_shape`` (``models.traced_layer_costs``)."""
    if layer_specs is None:
        layer_specs = specs(model, input_shape)
    x = example_input(input_shape)
    return models.traced_layer_costs(
        model, variables, layer_specs, x, **models.inference_kwargs(model)
    )


def shrink(
    model: nn.Module,
    variables: Variables,
    unit_masks: Mapping[str, Any],
    input_shape: Sequence[int],
    layer_specs: Sequence[models.LayerSpec],
) -> tuple[nn.Module, dict[str, Any]]:
    """The physically narrower model and its variables keeping the units of ``unit_masks``:
    ``pruning.shrink`` through the ``widths`` hook, else ``pruning.shrink_any``."""
    if has_field(model, "widths"):
        return pruning.shrink(model, variables, unit_masks)
    x = example_input(input_shape)
    return pruning.shrink_any(
        model, variables, unit_masks, x, specs=layer_specs, **models.inference_kwargs(model)
    )


def shrunk_model(model: nn.Module, widths: Mapping[str, int]) -> nn.Module:
    """The model :func:`shrink` built when it kept ``widths[layer]`` units of every layer (all of
    ``model``'s layers, in forward order, as a pruning run records them): ``model`` cloned with
    the widths (the classifier's left out) through the hook, else a ``pruning.Narrowed`` of the
    layers."""
    if has_field(model, "widths"):
        classifier = {spec.name for spec in model.layer_specs() if spec.is_classifier}
        return model.clone(widths={k: v for k, v in widths.items() if k not in classifier})
    full = model.full if isinstance(model, pruning.Narrowed) else model
    return pruning.Narrowed(full, tuple(widths), tuple(int(w) for w in widths.values()))


def quantized(
    model: nn.Module,
    bits_per_layer: Mapping[str, int],
    *,
    activation_bits: int | None = None,
    backend: Any = "aqt",
) -> nn.Module:
    """``model`` with each layer of ``bits_per_layer`` quantized by ``backend``:
    ``quantized_model`` through the ``layer_kwargs`` hook, else ``quantize_any``."""
    build = quantized_model if has_field(model, "layer_kwargs") else quantize_any
    return build(model, bits_per_layer, activation_bits=activation_bits, backend=backend)
