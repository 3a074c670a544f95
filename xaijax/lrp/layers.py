"""LRP for the Conv/Dense layers of Flax linen models: unit (layer) and weight relevances."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from xaijax.deeplift.attribution import _check_inputs, _check_target, _target_cotangent
from xaijax.deeplift.layers import (
    _calls_by_path,
    _check_reduce,
    _kernel_pullback,
    _layer_params,
    _LayerCall,
    _probed_model,
    _reduce_examples,
    _selected_layers,
)
from xaijax.lrp.attribution import Rules
from xaijax.lrp.interpreter import explain, trace
from xaijax.lrp.rules import evaluate_terms, resolve

Array = jax.Array


class _Explained(NamedTuple):
    calls: list[_LayerCall]
    rules: dict[str, Any]
    captured: dict[str, tuple[Array, Array]]  # key -> (layer input, layer output z)
    multipliers: dict[str, Array]  # key -> LRP multiplier of the layer's output


def _layer_kind(call: _LayerCall) -> str:
    return "conv" if isinstance(call.module, nn.Conv) else "dense"


def _explain_layers(model, variables, inputs, layers, target, rules, apply_kwargs) -> _Explained:
    rules = resolve(rules)
    inputs = _check_inputs(inputs)
    apply_kwargs = {"train": False} if apply_kwargs is None else dict(apply_kwargs)
    calls, keys = _selected_layers(model, variables, inputs, layers, apply_kwargs)
    eps = {c.key: jnp.zeros(c.out_spec.shape, c.out_spec.dtype) for c in calls}
    fn = _probed_model(model, variables, frozenset(keys), apply_kwargs)
    traced = trace(fn, (inputs, eps))
    out_spec, _ = traced.out_specs
    if not isinstance(out_spec, jax.ShapeDtypeStruct):
        raise ValueError(f"the model must return one array of outputs, got {out_spec}")
    target = _check_target(target, out_spec, inputs.shape[0])
    (_, captured), pullback = explain(traced, rules)
    _, multipliers = pullback(
        (_target_cotangent(out_spec, target), jax.tree.map(jnp.zeros_like, captured))
    )
    return _Explained(calls, rules, captured, multipliers)


def layer_relevances(
    model: nn.Module,
    variables: Any,
    inputs: Array,
    *,
    layers: Sequence[str] | None = None,
    target: int | Array | None = None,
    rules: Rules = "composite",
    apply_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Array]:
    """LRP relevances ``R = z * m`` of the output units ``z`` (bias included, before the
    activation, which passes relevance unchanged) of the Conv/Dense layers of a Flax linen model.

    ``m`` is the LRP multiplier of ``z`` for the target, found as the multiplier of a zero
    perturbation added to ``z``. Keys and options as ``xaijax.deeplift.layer_attributions``; rules
    as :func:`xaijax.lrp.relevance`. The classifier's relevance is ``f(x)[t]`` at the target and
    0 elsewhere; lower layers hold what the layers between did not absorb. A filter's
    per-example relevance is ``R[..., c]`` summed over positions.
    """
    explained = _explain_layers(model, variables, inputs, layers, target, rules, apply_kwargs)
    return {
        call.key: explained.captured[call.key][1] * explained.multipliers[call.key]
        for call in explained.calls
    }


def _linear(call: _LayerCall, params: Any) -> Any:
    """``(x, W) -> L(x; W)``: the layer without its bias."""
    zero_bias = {"bias": jnp.zeros_like(params["bias"])} if "bias" in params else {}

    def linear(x: Array, kernel: Array) -> Array:
        return call.module.apply({"params": {**params, **zero_bias, "kernel": kernel}}, x)

    return linear


def parameter_relevances(
    model: nn.Module,
    variables: Any,
    inputs: Array,
    *,
    target: int | Array | None = None,
    rules: Rules = "composite",
    layers: Sequence[str] | None = None,
    reduce: Literal["none", "mean", "mean_abs"] = "none",
    chunk_size: int = 32,
    apply_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Array]:
    """LRP relevance of each kernel weight: the relevance message through ``w_ij``, summed over
    positions, ``R(w_ij) = sum_k c_k * zeta_k[i, j] / d_k[j] * R_j`` (``xaijax.lrp.rules``).

    Written with the kernel gradient ``G(x, g) = sum over positions of x (x) g``:
    epsilon ``R(W) = W * G(a, s)``; z+ ``R(W) = W+ * G(a, s+)``; alpha-beta
    ``R(W) = alpha * (W+ * G(a+, s+) + W- * G(a-, s+)) - beta * (W- * G(a+, s-) + W+ * G(a-, s-))``,
    where ``s_k = R / d_k`` with ``R = z * m`` the layer's output relevance. Summed over the
    kernel, ``R(W)`` gives the relevance of the layer's input, ``sum_i R_i``. Reused modules add
    up their calls. Keys are module paths (``"conv1"``); ``reduce`` and ``chunk_size`` as
    ``xaijax.deeplift.parameter_contributions``.
    """
    _check_reduce(reduce, chunk_size)
    explained = _explain_layers(model, variables, inputs, layers, target, rules, apply_kwargs)
    batch = jnp.shape(inputs)[0]
    result: dict[str, Array] = {}
    for path, calls in _calls_by_path(explained.calls).items():
        params = _layer_params(variables, path)
        kernel = params["kernel"]
        terms = []  # (call, coefficient, weight part, input factor, output factor s_k)
        for call in calls:
            a, z = explained.captured[call.key]
            relevance = z * explained.multipliers[call.key]
            rule = explained.rules[_layer_kind(call)]
            bias = params.get("bias")
            for term, _, inverse in evaluate_terms(rule, _linear(call, params), a, kernel, bias, z):
                for part_a, part_w in term.pairs:
                    terms.append((call, term.coefficient, part_w, part_a(a), relevance * inverse))
        factors = [(x, s) for _, _, _, x, s in terms]

        def contribution(factors, terms=terms, params=params, kernel=kernel):
            """Sum of the terms for the examples in ``factors`` (a batch, or one example)."""
            total = jnp.zeros_like(kernel)
            for (call, coefficient, part_w, _, _), (x, s) in zip(terms, factors, strict=True):
                total = total + coefficient * part_w(kernel) * _kernel_pullback(call, params, x, s)
            return total

        result[path] = _reduce_examples(contribution, factors, batch, reduce, kernel, chunk_size)
    return result
