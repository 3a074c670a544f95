"""Shared pieces of the model zoo: layer metadata (``LayerSpec``), layer variables by module path,
widths, and the protocol a zoo model meets."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

import flax.linen as nn
import jax
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
      consumer_slices: where this layer's channels sit in each consumer's input, one
        ``(start, total)`` per consumer: its ``units`` channels are channels ``start`` to
        ``start + units - 1`` of the ``total`` channels the consumer reads (after a
        concatenation along the channels; through a flatten, row ``r`` is channel ``r % total``).
        Empty (the default): every consumer reads exactly this layer's channels, ``(0, units)``.
    """

    name: str
    kind: Literal["conv", "dense"]
    bn: str | None
    consumers: tuple[str, ...]
    tied_group: str | None
    is_classifier: bool
    consumer_slices: tuple[tuple[int, int], ...] = ()


def consumer_slice(spec: LayerSpec, index: int, units: int) -> tuple[int, int]:
    """``(start, total)`` of ``spec``'s ``units`` channels in the input of its consumer number
    ``index`` (see ``LayerSpec.consumer_slices``)."""
    if not spec.consumer_slices:
        return 0, units
    if len(spec.consumer_slices) != len(spec.consumers):
        raise ValueError(
            f"layer {spec.name!r} has {len(spec.consumer_slices)} consumer_slices for "
            f"{len(spec.consumers)} consumers"
        )
    start, total = spec.consumer_slices[index]
    if not 0 <= start <= total - units:
        raise ValueError(
            f"layer {spec.name!r}: its {units} channels do not fit at {start} of the {total} "
            f"channels consumer {spec.consumers[index]!r} reads"
        )
    return int(start), int(total)


def layer_variables(tree: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """The variables of layer ``name`` (a module path, ``"Block_0/Conv_1"``) in a collection:
    ``tree["Block_0"]["Conv_1"]`` in a model's nested variables, or ``tree[name]`` in a view
    keyed by layer name."""
    if name in tree:
        return tree[name]
    node: Any = tree
    for part in name.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            raise ValueError(f"no variables for layer {name!r} (looked for the path {name!r})")
        node = node[part]
    return node


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside pass-through wrappers: a wrapper class names the field holding the module
    it runs in a class attribute ``wrapped_field`` (``xaijax.pruning.Narrowed``,
    ``xaijax.quantization.InterceptQuantized``); ``model`` itself if it is no wrapper."""
    while (field := getattr(type(model), "wrapped_field", None)) is not None:
        model = getattr(model, field)
    return model


def inference_kwargs(model: nn.Module) -> dict[str, Any]:
    """``{"train": False}`` for a model whose ``__call__`` takes ``train`` (the zoo's convention),
    else ``{}``: the keyword arguments of an inference-mode ``model.apply``. Looks through
    pass-through wrappers (:func:`unwrap`), whose ``__call__(*args, **kwargs)`` hides the
    signature of the model they run."""
    try:
        parameters = inspect.signature(unwrap(model).__call__).parameters
    except (TypeError, ValueError):
        return {}
    return {"train": False} if "train" in parameters else {}


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
