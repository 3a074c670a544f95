"""LRP on the jaxpr interpreter of ``xaijax.deeplift``: layers found in the traced program, the
rules attached to them, and the input side run under ``jax.vjp``.

The program is traced and analysed by ``xaijax.deeplift.program`` (calls inlined, each maximal
elementwise sub-computation grouped as one nonlinearity, unsupported primitives rejected by
name). On top of that plan:

* A *layer* is a ``dot_general`` (kind ``"dense"``, or ``"conv"`` when its kernel is a reshaped
  convolution kernel: a convolution written as a matmul) or ``conv_general_dilated`` (kind
  ``"conv"``) with exactly one input-dependent operand, together with the bias addition that
  follows it when that addition (``add`` of an input-independent operand of the same result
  shape) is the only consumer of its result. The bias addition is a barrier of the plan, so an
  activation after it is rooted at the biased value ``z``. The layer's result is replaced by
  :func:`xaijax.lrp.rules.surrogate`: the same value, the rule's backward.
* An elementwise nonlinearity ``y = f(x)`` passes relevance unchanged, ``R_x = R_y``: its
  multiplier is ``f(x) / x`` (0 where ``x = 0``, where ``f(0) * m_y`` is absorbed; nothing for
  ReLU). For several results leaving one group, ``R_x`` is the sum of their relevances.
* Max pooling passes each window's relevance to its maximum (the gradient: winner takes all;
  ties share it).
* Every other linear operation (reshape, flatten, sums, average pooling, residual additions,
  inference BatchNorm) passes multipliers like a gradient, which is LRP-0: proportional
  redistribution, an additive constant absorbing its share ``c * m``.
* A ``custom_jvp`` / ``custom_vjp`` call that is linear and holds no layer is bound whole, so its
  own derivative rule passes the multipliers; a call whose body is one layer equation on its
  operands is that layer, and the rule's terms bind the call (``xaijax.deeplift.calls``).

Relevance of any value is ``R = value * m`` with ``m`` its multiplier (the cotangent of the
output relevance, a one-hot selecting the explained output, pulled back).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from xaijax.deeplift.calls import call_operands, layer_call, linear_calls, run_call
from xaijax.deeplift.carriers import _with_multipliers
from xaijax.deeplift.program import (
    _bind,
    _bind_call,
    _Call,
    _Eqn,
    _is_float,
    _Plan,
    _plan,
    _Program,
    _read,
    _trace,
)
from xaijax.lrp.rules import Rule, surrogate

Array = jax.Array
METHOD = "LRP"
_LAYER_PRIMITIVES = {"dot_general": "dense", "conv_general_dilated": "conv"}
_ADDS = frozenset({"add", "add_any"})


class _Layer(NamedTuple):
    kind: str  # "dense" | "conv"
    eqn: int  # index of the dot_general / conv_general_dilated equation
    position: int  # its input-dependent operand
    bias: tuple[int, int] | None  # (index of the bias addition, position of the bias operand)


class _LrpPlan(NamedTuple):
    plan: _Plan
    layers: Mapping[int, _Layer]  # keyed by the equation that completes the layer
    whole_calls: Mapping[int, _Call]  # linear calls without a layer, keyed by their first eqn
    layer_calls: Mapping[int, _Call]  # layer eqn -> the call whose body it is


def _varying_and_consumers(program: _Program) -> tuple[set[int], dict[int, list[int]]]:
    varying = set(program.inputs)
    consumers: dict[int, list[int]] = {}
    for index, eqn in enumerate(program.eqns):
        slots = [a for a in eqn.inputs if isinstance(a, int)]
        for slot in slots:
            consumers.setdefault(slot, []).append(index)
        if any(slot in varying for slot in slots):
            varying.update(eqn.outputs)
    return varying, consumers


def _bias_of(program: _Program, out: int, users: Sequence[int], varying: set[int]):
    """``(index, operand position)`` of the bias addition consuming ``out``, or None."""
    if len(users) != 1 or any(isinstance(a, int) and a == out for a in program.outputs):
        return None
    user = program.eqns[users[0]]
    if user.primitive.name not in _ADDS or len(user.inputs) != 2:
        return None
    if program.avals[user.outputs[0]].shape != program.avals[out].shape:
        return None
    others = [j for j, a in enumerate(user.inputs) if not (isinstance(a, int) and a == out)]
    if len(others) != 1:
        return None
    bias = user.inputs[others[0]]
    if isinstance(bias, int) and (bias in varying or not _is_float(program.avals[bias].dtype)):
        return None
    return users[0], others[0]


def _is_unfolded_conv_kernel(program: _Program, producers: Mapping[int, _Eqn], kernel: Any) -> bool:
    """Whether a ``dot_general``'s kernel is a reshape of an array of rank 3 or more: a
    convolution written as a matmul of stacked windows (``xaijax.models.ops``' one-channel
    convolution reshapes its HWIO kernel to ``[kh * kw, O]``), which is a ``"conv"`` layer."""
    producer = producers.get(kernel) if isinstance(kernel, int) else None
    if producer is None or producer.primitive.name != "reshape":
        return False
    source = producer.inputs[0]
    return isinstance(source, int) and len(program.avals[source].shape) >= 3


def _find_layers(program: _Program) -> dict[int, _Layer]:
    varying, consumers = _varying_and_consumers(program)
    producers = {slot: eqn for eqn in program.eqns for slot in eqn.outputs}
    layers: dict[int, _Layer] = {}
    for index, eqn in enumerate(program.eqns):
        kind = _LAYER_PRIMITIVES.get(eqn.primitive.name)
        if kind is None:
            continue
        positions = [j for j, a in enumerate(eqn.inputs) if isinstance(a, int) and a in varying]
        (out,) = eqn.outputs
        if len(positions) != 1 or not _is_float(program.avals[out].dtype):
            continue  # input-independent, or bilinear (the plan rejects it)
        if kind == "dense" and _is_unfolded_conv_kernel(
            program, producers, eqn.inputs[1 - positions[0]]
        ):
            kind = "conv"
        bias = _bias_of(program, out, consumers.get(out, []), varying)
        layers[index if bias is None else bias[0]] = _Layer(kind, index, positions[0], bias)
    return layers


def lrp_plan(program: _Program) -> _LrpPlan:
    """The shared plan with the layers' bias additions as barriers, the layers, and the
    custom-derivative calls bound whole or standing for a layer."""
    layers = _find_layers(program)
    barriers = frozenset(layer.bias[0] for layer in layers.values() if layer.bias is not None)
    plan = _plan(program, METHOD, barriers)
    layer_eqns = {layer.eqn for layer in layers.values()}
    whole_calls = linear_calls(program, plan.kinds, plan.varying, layer_eqns | barriers)
    layer_calls = {}
    for layer in layers.values():
        call = layer_call(program, layer.eqn, (layer.position, 1 - layer.position))
        if call is not None:
            layer_calls[layer.eqn] = call
    return _LrpPlan(plan, layers, whole_calls, layer_calls)


# --------------------------------------------------------------------------------------------
# The input side.


def _safe_ratio(numerator: Array, denominator: Array) -> Array:
    zero = denominator == 0
    return jnp.where(zero, jnp.zeros_like(numerator), numerator / jnp.where(zero, 1.0, denominator))


def _apply_rule(lplan: _LrpPlan, layer: _Layer, rule: Rule, env: Mapping, z: Array) -> Array:
    program = lplan.plan.program
    eqn = program.eqns[layer.eqn]
    values = [_read(env, a) for a in eqn.inputs]
    kernel_position = 1 - layer.position
    call = lplan.layer_calls.get(layer.eqn)

    def linear(x: Array, w: Array) -> Array:
        if call is not None:  # the layer's own derivative rule
            replace = {layer.position: x, kernel_position: w}
            (out,) = _bind_call(call, call_operands(call, eqn.inputs, env, replace))
            return out
        args = list(values)
        args[layer.position], args[kernel_position] = x, w
        (out,) = _bind(eqn, args)
        return out

    bias = None
    if layer.bias is not None:
        add_index, operand = layer.bias
        bias = _read(env, program.eqns[add_index].inputs[operand])
    return surrogate(rule, linear, values[layer.position], values[kernel_position], bias, z)


def _run_member(eqn: _Eqn, root: int, env: dict, inner: dict, group_outputs: frozenset) -> None:
    """Evaluate one equation of an elementwise nonlinearity without gradient; each result that
    leaves the nonlinearity passes its relevance to the root (multiplier ``f(x) / x``)."""
    args = []
    for a in eqn.inputs:
        if isinstance(a, int) and a == root:
            args.append(lax.stop_gradient(env[root]))
        elif isinstance(a, int) and a in inner:
            args.append(inner[a])
        else:
            args.append(_read(env, a))
    for slot, out in zip(eqn.outputs, _bind(eqn, args), strict=True):
        inner[slot] = out
        if slot in group_outputs:
            x = env[root]
            ratio = _safe_ratio(out, lax.stop_gradient(x))
            env[slot] = _with_multipliers(out, (x,), (ratio,))


def _run(lplan: _LrpPlan, rules: Mapping[str, Rule], leaves: Sequence[Any]) -> list[Any]:
    plan = lplan.plan
    program = plan.program
    env: dict[int, Any] = dict(program.consts)
    env.update(zip(program.inputs, leaves, strict=True))
    inner: dict[int, Any] = {}
    resume = 0  # equations before this index were evaluated by a call bound whole
    for index, (eqn, kind) in enumerate(zip(program.eqns, plan.kinds, strict=True)):
        if index < resume:
            continue
        if index in lplan.whole_calls:
            resume = run_call(lplan.whole_calls[index], env)
            continue
        if kind == "member":
            _run_member(eqn, plan.roots[index], env, inner, plan.group_outputs)
            continue
        outs = _bind(eqn, [_read(env, a) for a in eqn.inputs])
        layer = lplan.layers.get(index)
        if layer is not None:
            outs = (_apply_rule(lplan, layer, rules[layer.kind], env, outs[0]),)
        env.update(zip(eqn.outputs, outs, strict=True))
    return [_read(env, a) for a in program.outputs]


class Traced(NamedTuple):
    lplan: _LrpPlan
    leaves: list[Any]
    in_tree: Any
    out_specs: Any  # pytree of output ShapeDtypeStructs


def trace(fn: Callable[..., Any], args: tuple) -> Traced:
    """Trace ``fn(*args)`` and plan its LRP interpretation."""
    leaves, in_tree = jax.tree.flatten(args)
    specs = [jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)) for x in leaves]
    program = _trace(fn, in_tree, specs)
    out_specs = jax.tree.unflatten(
        program.out_tree,
        [
            program.avals[a]
            if isinstance(a, int)
            else jax.ShapeDtypeStruct(a.aval.shape, a.aval.dtype)
            for a in program.outputs
        ],
    )
    return Traced(lrp_plan(program), leaves, in_tree, out_specs)


def explain(traced: Traced, rules: Mapping[str, Rule]) -> tuple[Any, Callable[[Any], Any]]:
    """``(outputs, pullback)``: ``pullback(cotangent)`` gives the LRP multipliers of the inputs (a
    pytree like the args); an input's relevance is the input times its multiplier."""
    program = traced.lplan.plan.program
    outputs, vjp_fn = jax.vjp(functools.partial(_run, traced.lplan, rules), list(traced.leaves))

    def pullback(cotangent: Any) -> Any:
        flat = [
            jnp.asarray(c, o.dtype)
            for c, o in zip(jax.tree.leaves(cotangent), outputs, strict=True)
        ]
        (multipliers,) = vjp_fn(flat)
        return jax.tree.unflatten(traced.in_tree, multipliers)

    return jax.tree.unflatten(program.out_tree, outputs), pullback
