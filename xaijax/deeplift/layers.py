"""DeepLIFT for the Conv/Dense layers of Flax linen models: unit and weight contributions."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from xaijax.deeplift.attribution import (
    Rule,
    _check_inputs,
    _check_rule,
    _check_target,
    _shared_reference,
    _target_cotangent,
)
from xaijax.deeplift.interpreter import _explain, _setup

Array = jax.Array


# --------------------------------------------------------------------------------------------
# Public API: Flax layers.


class _LayerCall(NamedTuple):
    key: str  # module path joined by '/', plus '@k' for the k-th reuse (k >= 1)
    path: str  # module path joined by '/'
    module: nn.Module  # unbound clone of the Conv/Dense module
    out_spec: jax.ShapeDtypeStruct


def _module_path(module: nn.Module) -> str:
    return "/".join(module.path)


def _discover_layers(model: nn.Module, variables: Any, x_spec: Any, apply_kwargs: Mapping):
    """Every nn.Conv / nn.Dense call of ``model``, in call order."""
    calls: list[_LayerCall] = []
    counts: dict[str, int] = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name == "__call__" and isinstance(module, nn.Conv | nn.Dense):
            path = _module_path(module)
            k = counts.get(path, 0)
            counts[path] = k + 1
            key = path if k == 0 else f"{path}@{k}"
            spec = jax.ShapeDtypeStruct(out.shape, out.dtype)
            # features from the output: a wrapper may run the layer narrower than its field
            # (xaijax.pruning.Narrowed runs a copy at its sliced kernel's width).
            clone = module.clone(parent=None, features=out.shape[-1])
            calls.append(_LayerCall(key, path, clone, spec))
        return out

    def run(x):
        with nn.intercept_methods(interceptor):
            return model.apply(variables, x, **apply_kwargs)

    jax.eval_shape(run, x_spec)
    return calls


def _selected_layers(
    model: nn.Module,
    variables: Any,
    inputs: Array,
    layers: Sequence[str] | None,
    apply_kwargs: Mapping,
) -> tuple[list, list[str]]:
    """The Conv/Dense calls of ``model`` on ``inputs`` named in ``layers`` (None: all), in
    forward order, and their keys; ``ValueError`` naming unknown layers."""
    x_spec = jax.ShapeDtypeStruct(inputs.shape, inputs.dtype)
    calls = _discover_layers(model, variables, x_spec, apply_kwargs)
    available = [c.key for c in calls]
    if layers is None:
        keys = available
    else:
        if isinstance(layers, str):
            raise TypeError("layers must be a sequence of layer names, not a string")
        keys = list(layers)
        unknown = sorted(set(keys) - set(available))
        if unknown:
            raise ValueError(f"unknown layers {unknown}; Conv/Dense layers are {available}")
    return [c for c in calls if c.key in keys], keys


def _probed_model(model: nn.Module, variables: Any, keys: frozenset, apply_kwargs: Mapping):
    """``fn(x, eps) -> (outputs, {key: (layer input, layer output + eps[key])})``."""

    def fn(x, eps):
        counts: dict[str, int] = {}
        captured = {}

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            module = context.module
            if context.method_name != "__call__" or not isinstance(module, nn.Conv | nn.Dense):
                return out
            path = _module_path(module)
            k = counts.get(path, 0)
            counts[path] = k + 1
            key = path if k == 0 else f"{path}@{k}"
            if key not in keys:
                return out
            out = out + eps[key]
            captured[key] = (args[0], out)
            return out

        with nn.intercept_methods(interceptor):
            outputs = model.apply(variables, x, **apply_kwargs)
        return outputs, captured

    return fn


class _LayerExplanation(NamedTuple):
    calls: list[_LayerCall]
    captured: dict[str, tuple[Array, Array]]  # key -> (input, output), input side
    ref_captured: dict[str, tuple[Array, Array]]
    captured_parts: dict[str, Any]  # key -> (input parts, output parts) for RevealCancel
    multipliers: dict[str, Array]  # key -> value-path multiplier of the layer's output
    part_multipliers: dict[str, tuple[Array, Array]] | None  # RevealCancel only


def _explain_layers(model, variables, inputs, reference, layers, target, rule, apply_kwargs):
    _check_rule(rule)
    inputs = _check_inputs(inputs)
    reference, _ = _shared_reference(inputs, reference)
    apply_kwargs = {"train": False} if apply_kwargs is None else dict(apply_kwargs)
    calls, keys = _selected_layers(model, variables, inputs, layers, apply_kwargs)
    batch_ref = reference.shape[0]
    eps = {c.key: jnp.zeros(c.out_spec.shape, c.out_spec.dtype) for c in calls}
    ref_eps = {
        c.key: jnp.zeros((batch_ref, *c.out_spec.shape[1:]), c.out_spec.dtype) for c in calls
    }
    fn = _probed_model(model, variables, frozenset(keys), apply_kwargs)
    setup, leaves, in_tree = _setup(fn, (inputs, eps), (reference, ref_eps))
    out_spec, _ = setup.out_specs
    if not isinstance(out_spec, jax.ShapeDtypeStruct):
        raise ValueError(f"the model must return one array of outputs, got {out_spec}")
    target = _check_target(target, out_spec, inputs.shape[0])
    eps_leaves = tuple(range(1, len(leaves)))  # leaf 0 is the input, the rest are eps (by key)
    explanation = _explain(setup, leaves, in_tree, rule, probe_leaves=eps_leaves)
    _, captured = explanation.outputs
    _, ref_captured = explanation.ref_outputs
    cotangent = (
        _target_cotangent(out_spec, target),
        jax.tree.map(jnp.zeros_like, captured),
    )
    (_, multipliers), probe_multipliers = explanation.pullback(cotangent)
    part_multipliers = None
    if rule == "reveal_cancel":
        eps_keys = jax.tree.unflatten(jax.tree.structure(eps), list(range(len(eps_leaves))))
        part_multipliers = {k: probe_multipliers[i] for k, i in eps_keys.items()}
    _, captured_parts = explanation.output_parts
    return _LayerExplanation(
        calls, captured, ref_captured, captured_parts, multipliers, part_multipliers
    )


def _contribution(delta, multiplier, parts=None, part_multipliers=None) -> Array:
    """``delta * m`` plus, for RevealCancel, ``pos * m+ + neg * m-``."""
    total = delta * multiplier
    if part_multipliers is not None:
        (pos, neg), (m_pos, m_neg) = parts, part_multipliers
        total = total + pos * m_pos + neg * m_neg
    return total


def layer_attributions(
    model: nn.Module,
    variables: Any,
    inputs: Array,
    reference: Array,
    *,
    layers: Sequence[str] | None = None,
    target: int | Array | None = None,
    rule: Rule = "rescale",
    apply_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Array]:
    """DeepLIFT contributions of the output units of the Conv/Dense layers of a Flax linen model.

    For each selected layer call, ``C = (h - h_ref) * m_h`` (plus the RevealCancel part terms),
    where ``h`` is the layer's output ``[B, ..., C]`` and ``m_h`` its DeepLIFT multiplier for the
    target (found as the multiplier of a zero perturbation added to ``h``). The model runs as
    ``model.apply(variables, x, **apply_kwargs)`` (default ``train=False``). Keys are module paths
    joined by '/' (``"conv1"``); the k-th reuse (k >= 1) of a module gets ``"name@k"``. For a layer
    that every path crosses, ``sum(C) = f(x)[t] - f(ref)[t]`` per example. A filter's per-example
    contribution is ``C[..., c]`` summed over positions.
    """
    explained = _explain_layers(
        model, variables, inputs, reference, layers, target, rule, apply_kwargs
    )
    result = {}
    for call in explained.calls:
        out, ref_out = explained.captured[call.key][1], explained.ref_captured[call.key][1]
        part_m = explained.part_multipliers
        result[call.key] = _contribution(
            out - ref_out,
            explained.multipliers[call.key],
            explained.captured_parts[call.key][1] if part_m else None,
            part_m[call.key] if part_m else None,
        )
    return result


def _kernel_pullback(call: _LayerCall, params: Any, inputs: Array, cotangent: Array) -> Array:
    """``d/dW <cotangent, layer(inputs; W)>``: the sum over the batch and positions of
    ``inputs (x) cotangent`` in the kernel's shape."""

    def apply(kernel):
        return call.module.apply({"params": {**params, "kernel": kernel}}, inputs)

    _, vjp = jax.vjp(apply, params["kernel"])
    return vjp(cotangent)[0]


def _layer_params(variables: Any, path: str) -> Any:
    node = variables["params"]
    for name in path.split("/"):
        node = node[name]
    return node


def parameter_contributions(
    model: nn.Module,
    variables: Any,
    inputs: Array,
    reference: Array,
    *,
    target: int | Array | None = None,
    rule: Rule = "rescale",
    layers: Sequence[str] | None = None,
    reduce: Literal["none", "mean", "mean_abs"] = "none",
    chunk_size: int = 32,
    apply_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Array]:
    """DeepLIFT contributions of each kernel weight: ``C(W_ij) = da_i * W_ij * m_j`` summed over
    positions, where ``da`` is the delta of the layer's input and ``m`` the multiplier of its
    output.

    With RevealCancel the weight's term is routed like the rule routes it:
    ``C = W * G(da, m) + W+ * (G(da+, m+) + G(da-, m-)) + W- * (G(da-, m+) + G(da+, m-))`` where
    ``G(a, g) = sum over positions of a (x) g`` and ``+``/``-`` are positive/negative parts.
    Summed over a layer's kernel, ``C`` gives the layer's total contribution (the bias has no
    delta).
    Reused modules add up the contributions of their calls. Keys are module paths (``"conv1"``).

    ``reduce``: ``"none"`` returns per-example ``[B, *kernel.shape]`` arrays, costing
    ``B * |W|`` floats per layer (e.g. 128 x 2.4M weights = 1.2 GB for a 3x3x512x512 conv);
    ``"mean"`` returns the batch mean of ``C`` (kernel-shaped, one batched pass, no per-example
    memory);
    ``"mean_abs"`` returns the batch mean of ``|C|`` (kernel-shaped), computing per-example values
    ``chunk_size`` examples at a time (memory ``chunk_size * |W|``).
    """
    _check_reduce(reduce, chunk_size)
    explained = _explain_layers(
        model, variables, inputs, reference, layers, target, rule, apply_kwargs
    )
    batch = jnp.shape(inputs)[0]
    result: dict[str, Array] = {}
    for path, calls in _calls_by_path(explained.calls).items():
        params = _layer_params(variables, path)
        kernel = params["kernel"]
        weights = {None: kernel, "+": jnp.maximum(kernel, 0), "-": jnp.minimum(kernel, 0)}
        terms = []  # (call, weight sign, layer-input factor, output-multiplier factor)
        for call in calls:
            a, a_ref = explained.captured[call.key][0], explained.ref_captured[call.key][0]
            terms.append((call, None, a - a_ref, explained.multipliers[call.key]))
            if explained.part_multipliers is not None:
                pos, neg = explained.captured_parts[call.key][0]
                m_pos, m_neg = explained.part_multipliers[call.key]
                terms += [
                    (call, "+", pos, m_pos),
                    (call, "+", neg, m_neg),
                    (call, "-", neg, m_pos),
                    (call, "-", pos, m_neg),
                ]
        factors = [(a, m) for _, _, a, m in terms]

        def contribution(factors, terms=terms, params=params, weights=weights):
            """Sum of the terms for the examples in ``factors`` (a batch, or one example)."""
            total = jnp.zeros_like(params["kernel"])
            for (call, sign, _, _), (a, m) in zip(terms, factors, strict=True):
                total = total + weights[sign] * _kernel_pullback(call, params, a, m)
            return total

        result[path] = _reduce_examples(contribution, factors, batch, reduce, kernel, chunk_size)
    return result


def _check_reduce(reduce: str, chunk_size: int) -> None:
    """Raise unless ``reduce`` is a known reduction and ``chunk_size`` a positive int."""
    if reduce not in ("none", "mean", "mean_abs"):
        raise ValueError(f"reduce must be 'none', 'mean' or 'mean_abs', got {reduce!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def _calls_by_path(calls: Sequence[_LayerCall]) -> dict[str, list[_LayerCall]]:
    """The calls of each module path (a reused module has several), in forward order."""
    grouped: dict[str, list[_LayerCall]] = {}
    for call in calls:
        grouped.setdefault(call.path, []).append(call)
    return grouped


def _reduce_examples(
    contribution: Callable, factors: Any, batch: int, reduce: str, like: Array, chunk: int
) -> Array:
    """A kernel's per-example terms reduced over the batch: ``contribution(factors)`` sums the
    terms of the examples in ``factors`` (leading axis ``batch``). ``"mean"``: one batched pass
    divided by ``batch``; ``"none"``: ``[B, *like.shape]``, one example at a time (vmapped);
    ``"mean_abs"``: the mean of ``|per-example|``, ``chunk`` examples at a time."""

    def one_example(factors):
        return contribution(jax.tree.map(lambda v: v[None], factors))

    if reduce == "mean":
        return contribution(factors) / batch
    if reduce == "none":
        return jax.vmap(one_example)(factors)
    return _sum_abs_in_chunks(one_example, factors, like, chunk) / batch


def _sum_abs_in_chunks(per_example: Callable, xs: Any, like: Array, chunk: int) -> Array:
    """``sum_b |per_example(xs[b])|`` (shaped like ``like``), ``chunk`` examples at a time."""
    batch = jax.tree.leaves(xs)[0].shape[0]
    chunk = min(chunk, batch)
    full = (batch // chunk) * chunk
    head = jax.tree.map(lambda a: a[:full].reshape((batch // chunk, chunk, *a.shape[1:])), xs)

    def body(total, chunk_xs):
        return total + jnp.abs(jax.vmap(per_example)(chunk_xs)).sum(axis=0), None

    total, _ = lax.scan(body, jnp.zeros_like(like), head)
    if full < batch:
        tail = jax.tree.map(lambda a: a[full:], xs)
        total = total + jnp.abs(jax.vmap(per_example)(tail)).sum(axis=0)
    return total
