"""Quantization of any linen model by layer name: intercepted Conv / Dense calls.

:func:`quantize_any` wraps an unmodified model (no ``layer_kwargs`` field) in
:class:`InterceptQuantized`, a module that shares the model's scope (same variables, same layer
names) and applies it under ``nn.intercept_methods``. Every call of an ``nn.Conv`` / ``nn.Dense``
whose module path (``"conv1"``, ``"Block_0/Conv_1"``: the names
``xaijax.models.discover_layer_specs`` gives) has a bit width runs as a copy of that very module
(``module.clone``: its padding, strides, dilation, bias, dtypes kept) whose op is the backend's
quantized one (``backend.layer_kwargs``), on the layer's own kernel and bias. So for weight bits
``b_l`` the layer computes ``op(x, fake_quantize(W_l, b_l)) + bias_l`` with straight-through
gradients (the float layer's gradient at the quantized kernel), exactly as
``quantized_model`` does for a zoo model through its ``layer_kwargs``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
from flax.core import FrozenDict

from xaijax.models.discovery import layer_kind, scope_path
from xaijax.quantization.backend import QuantizationBackend, get_backend
from xaijax.quantization.numerics import check_bits

__all__ = ["InterceptQuantized", "quantize_any"]

#: The op fields of each layer kind; a backend sets some of them, the others are cleared so the
#: backend's op is the one that runs whatever the model set.
_OP_FIELDS = {
    "conv": ("conv_general_dilated", "conv_general_dilated_cls"),
    "dense": ("dot_general", "dot_general_cls"),
}


def _quantized_call(
    module: nn.Module, name: str, kind: str, layer_kwargs: Mapping[str, Any], args, kwargs
) -> Any:
    """The layer ``module`` applied to its own kernel and bias with the backend's op."""
    if kind == "conv" and module.feature_group_count != 1:
        raise ValueError(
            f"layer {name!r} is a grouped convolution (feature_group_count="
            f"{module.feature_group_count}); quantize_any supports feature_group_count=1 only"
        )
    fields = dict.fromkeys(_OP_FIELDS[kind])
    fields.update(layer_kwargs)
    params = module.variables["params"]
    # The width of its kernel: under xaijax.pruning.Narrowed the kernel is narrower than the
    # module's field (for any other layer the two are equal).
    fields["features"] = int(params["kernel"].shape[-1])
    return module.clone(parent=None, **fields).apply({"params": params}, *args, **kwargs)


def _interceptor(
    layer_kwargs: Callable[[str, str], Mapping[str, Any]],
    bits: Mapping[str, int],
    seen: set[str],
) -> Callable:
    def intercept(next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
        module = context.module
        kind = layer_kind(module)
        name = scope_path(module)
        if context.method_name != "__call__" or kind is None or name not in bits:
            return next_fun(*args, **kwargs)
        seen.add(name)
        if module.is_initializing():
            return next_fun(*args, **kwargs)  # init creates the float variables, as written.
        return _quantized_call(module, name, kind, layer_kwargs(name, kind), args, kwargs)

    return intercept


class InterceptQuantized(nn.Module):
    """``model`` with the layers of ``bits_per_layer`` quantized by ``backend`` (same variables).

    Built by :func:`quantize_any`; hashable when its fields are, so equal wrappers share compiled
    training steps.
    """

    model: nn.Module
    bits_per_layer: FrozenDict
    activation_bits: int | None = None
    backend: QuantizationBackend | str = "aqt"

    wrapped_field = "model"  # for ``xaijax.models.unwrap``: calls pass through to ``model``.

    def setup(self) -> None:
        nn.share_scope(self, self.model)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        backend = get_backend(self.backend)
        cache: dict[str, Mapping[str, Any]] = {}

        def layer_kwargs(name: str, kind: str) -> Mapping[str, Any]:
            if name not in cache:
                cache[name] = backend.layer_kwargs(
                    kind, self.bits_per_layer[name], self.activation_bits
                )
            return cache[name]

        seen: set[str] = set()
        with nn.intercept_methods(_interceptor(layer_kwargs, self.bits_per_layer, seen)):
            out = self.model(*args, **kwargs)
        missing = sorted(set(self.bits_per_layer) - seen)
        if missing:
            raise ValueError(
                f"bits_per_layer names layers {missing} that the model never calls as an "
                "nn.Conv or nn.Dense (names are module paths, e.g. 'Block_0/Conv_1')"
            )
        return out


def quantize_any(
    model: nn.Module,
    bits_per_layer: Mapping[str, int],
    *,
    activation_bits: int | None = None,
    backend: QuantizationBackend | str = "aqt",
) -> InterceptQuantized:
    """A module running ``model`` with each named Conv / Dense layer quantized at its bit width.

    ``bits_per_layer`` maps module paths (``xaijax.models.discover_layer_specs`` names) to weight
    bits; other layers stay in float. ``activation_bits`` (None: float) quantizes the inputs of
    every quantized layer; ``backend`` is a backend or a registered name (``"aqt"``, ``"qwix"``,
    ``"reference"``). The result's variables are ``model``'s: ``quantize_any(m, b).apply(
    variables, x, **kw)`` is ``m.apply(variables, x, **kw)`` with those layers quantized, and its
    gradients are straight-through.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a flax.linen Module, got {type(model).__name__}")
    get_backend(backend)
    if activation_bits is not None:
        activation_bits = check_bits(activation_bits, "activation_bits")
    checked = {str(name): check_bits(b, f"layer {name!r}") for name, b in bits_per_layer.items()}
    return InterceptQuantized(
        model, FrozenDict(checked), activation_bits=activation_bits, backend=backend
    )
