"""Shared pieces of the model zoo: layer metadata and per-layer cost accounting."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import FrozenDict

from xaijax.models import ops

LayerKwargs = Mapping[str, Mapping[str, Any]]


class LayerSpec(NamedTuple):
    """Static description of one prunable layer (an ``nn.Conv`` or ``nn.Dense`` submodule).

    Attributes:
      name: the submodule name; ``params[name]`` holds its ``kernel`` and ``bias``.
      kind: ``"conv"`` (kernel HWIO) or ``"dense"`` (kernel ``[in, out]``).
      bn: name of the BatchNorm applied to this layer's output, or None.
      consumers: layers whose input channels are this layer's output channels. A Dense layer that
        follows a flatten sees ``H * W * C`` rows in NHWC order: row ``r`` is channel ``r % C``.
      tied_group: layers sharing a group are summed by residual additions, so their output
        channels are the same channels and must be pruned together (None: not tied).
      is_classifier: the final layer producing the logits (its units are never pruned).
    """

    name: str
    kind: Literal["conv", "dense"]
    bn: str | None
    consumers: tuple[str, ...]
    tied_group: str | None
    is_classifier: bool


def freeze_mapping(mapping: Mapping[str, Any] | None) -> FrozenDict | None:
    """``mapping`` (and mappings nested in it) as a hashable ``FrozenDict``; None stays None."""
    if mapping is None:
        return None
    return FrozenDict(
        {k: freeze_mapping(v) if isinstance(v, Mapping) else v for k, v in mapping.items()}
    )


def resolve_width(widths: Mapping[str, int] | None, name: str, default: int) -> int:
    """The number of output units of layer ``name``: ``widths[name]`` if given, else ``default``."""
    if widths is None or name not in widths:
        return default
    width = widths[name]
    if not isinstance(width, int | np.integer) or width < 1:
        raise ValueError(f"widths[{name!r}] must be a positive integer, got {width!r}")
    return int(width)


def check_layer_names(mapping: Mapping[str, Any] | None, known: tuple[str, ...], what: str) -> None:
    """Raise if ``mapping`` names a layer the model does not have."""
    if not mapping:
        return
    unknown = sorted(set(mapping) - set(known))
    if unknown:
        raise ValueError(
            f"{what} names unknown layers {unknown}; the model's layers are {list(known)}"
        )


def layer_extra_kwargs(layer_kwargs: LayerKwargs | None, name: str) -> dict[str, Any]:
    """Extra constructor kwargs for layer ``name`` (e.g. a quantized ``dot_general``)."""
    if layer_kwargs is None or name not in layer_kwargs:
        return {}
    return dict(layer_kwargs[name])


def conv_extra_kwargs(layer_kwargs: LayerKwargs | None, name: str) -> dict[str, Any]:
    """``layer_extra_kwargs`` of a conv layer; unless they bring their own convolution, the layer
    uses :func:`xaijax.models.ops.conv_general_dilated` (the same numerics, faster on the CPU)."""
    extra = layer_extra_kwargs(layer_kwargs, name)
    if "conv_general_dilated" not in extra and "conv_general_dilated_cls" not in extra:
        extra["conv_general_dilated"] = ops.conv_general_dilated
    return extra


def layer_costs(
    model: nn.Module, variables: Mapping[str, Any], input_shape: tuple[int, ...]
) -> dict[str, dict[str, int]]:
    """Parameters and FLOPs per example of every ``nn.Conv`` / ``nn.Dense`` layer.

    ``params`` counts the kernel, the bias and the BatchNorm scale/offset that follow the layer.
    ``flops`` is ``2 * MACs`` for one example: a conv with output ``[Ho, Wo, O]`` and kernel
    ``[kh, kw, I, O]`` costs ``2 * Ho * Wo * kh * kw * I * O``; a Dense ``[I, O]`` costs
    ``2 * I * O``.
    ``input_shape`` is one example's shape ``(H, W, C)``.
    """
    specs = {spec.name: spec for spec in model.layer_specs()}

    def is_layer(module: nn.Module, method_name: str) -> bool:
        return method_name == "__call__" and isinstance(module, nn.Conv | nn.Dense)

    def run(x):
        return model.apply(variables, x, train=False, capture_intermediates=is_layer)

    _, state = jax.eval_shape(run, jnp.zeros((1, *input_shape), jnp.float32))
    intermediates = state["intermediates"]
    params = variables["params"]
    costs = {}
    for name, spec in specs.items():
        kernel = params[name]["kernel"]
        out_shape = intermediates[name]["__call__"][0].shape
        n_params = int(np.prod(kernel.shape)) + int(np.prod(params[name]["bias"].shape))
        if spec.bn is not None:
            n_params += sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params[spec.bn]))
        positions = int(np.prod(out_shape[1:-1])) if spec.kind == "conv" else 1
        flops = 2 * positions * int(np.prod(kernel.shape))
        costs[name] = {"params": n_params, "flops": flops}
    return costs


def count_params(params: Any) -> int:
    """Total number of scalars in a parameter pytree."""
    return int(sum(np.prod(np.shape(leaf)) for leaf in jax.tree.leaves(params)))


@runtime_checkable
class PrunableModel(Protocol):
    """The contract a model meets for every xaijax transform (the zoo's models meet it).

    * ``layer_specs()``: the prunable Conv / Dense layers in forward order (:class:`LayerSpec`:
      name, kind, BatchNorm, consumers, tied residual group, classifier);
    * ``widths``: layer name -> output units, so that ``model.clone(widths=...)`` builds the
      physically narrower model ``xaijax.pruning.shrink`` returns;
    * ``layer_kwargs``: layer name -> extra keyword arguments of that layer (e.g. a quantized
      ``dot_general``), how ``xaijax.quantization.quantized_model`` injects quantized ops;
    * ``__call__(x, train=...)``: logits.
    """

    widths: Mapping[str, int] | None
    layer_kwargs: LayerKwargs | None

    def layer_specs(self) -> tuple[LayerSpec, ...]: ...

    def __call__(self, x: Any, train: bool = False) -> Any: ...
