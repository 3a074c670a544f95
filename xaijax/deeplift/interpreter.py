"""The interpreter of the input side: DeepLIFT multipliers through ``jax.vjp``, with the rules of
``xaijax.deeplift.carriers`` placed at nonlinearities and max pools."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from xaijax.deeplift.calls import linear_calls, run_call
from xaijax.deeplift.carriers import _cross_max, _secant, _with_multipliers
from xaijax.deeplift.program import (
    _BILINEAR,
    _FLIPPED_OPERAND,
    _POOLS,
    _bind,
    _Eqn,
    _evaluate,
    _is_float,
    _Plan,
    _plan,
    _read,
    _same_structure,
    _trace,
)

Array = jax.Array


# --------------------------------------------------------------------------------------------
# The input-side interpreter.


def _split_sign(delta: Array) -> tuple[Array, Array]:
    """RevealCancel parts of a source's delta: ``(delta if delta > 0, delta if delta < 0)``.

    Their derivatives with respect to ``delta`` route multipliers back: 1 to the part that holds
    the delta, and 1/2 to each part where ``delta == 0``, so a zero-delta input of a linear op
    takes ``(m+ + m-) / 2`` times its weights, as in the reference implementation (the parts'
    values stay 0 there).
    """
    zero, half = jnp.zeros_like(delta), 0.5 * delta
    at_zero = jnp.where(delta == 0, half, zero)
    return jnp.where(delta > 0, delta, at_zero), jnp.where(delta < 0, delta, at_zero)


def _positive_part(eqn: _Eqn, values: list[Any], positions: Sequence[int], parts: Mapping):
    """RevealCancel: the positive parts of a linear op's outputs from its operands' parts.

    A constant factor (weights, scales) is split by sign: ``(W x)+ = W+ x+ + W- x-``. The negative
    part is then ``delta - positive`` (the parts of every value sum to its delta).
    """
    name = eqn.primitive.name

    def apply(replacements: Mapping[int, Any]) -> tuple[Any, ...]:
        args = list(values)
        for j, v in replacements.items():
            args[j] = v
        return _bind(eqn, args)

    if name in _BILINEAR or name == "div":
        (j,) = positions
        pos, neg = parts[eqn.inputs[j]]
        c = 1 - j  # the input-independent operand
        if name in ("mul", "div"):  # elementwise: pick the part that the factor's sign keeps
            return apply({j: jnp.where(values[c] > 0, pos, neg)})
        with_positive = apply({j: pos, c: jnp.maximum(values[c], 0)})
        with_negative = apply({j: neg, c: jnp.minimum(values[c], 0)})
        return tuple(a + b for a, b in zip(with_positive, with_negative, strict=True))

    flipped = _FLIPPED_OPERAND.get(name)  # neg / sub: the operand's negative part turns positive
    tangents = tuple(parts[eqn.inputs[j]][1 if j == flipped else 0] for j in positions)

    def f(*operands):
        return apply(dict(zip(positions, operands, strict=True)))

    _, positive = jax.jvp(f, tuple(values[j] for j in positions), tangents)
    return positive


def _run_input_side(
    plan: _Plan,
    ref_env: Mapping[int, Any],
    rule: str,
    leaves: Sequence[Any],
    probe_parts: Mapping[int, tuple[Any, Any]],
) -> tuple[list[Any], list[Any]]:
    """Interpret the program on the input side; returns (output leaves, their RevealCancel parts).

    ``probe_parts`` maps input positions to explicit (positive, negative) parts (RevealCancel only):
    a zero perturbation given parts this way exposes the part multipliers of the value it is
    added to. The Rescale rule binds linear custom-derivative calls whole
    (``xaijax.deeplift.calls``); RevealCancel interprets their bodies.
    """
    program = plan.program
    reveal = rule == "reveal_cancel"
    whole_calls = {} if reveal else linear_calls(program, plan.kinds, plan.varying)
    resume = 0  # equations before this index were evaluated by a call bound whole
    env: dict[int, Any] = dict(program.consts)
    env.update(zip(program.inputs, leaves, strict=True))
    parts: dict[int, tuple[Any, Any]] = {program.inputs[i]: pn for i, pn in probe_parts.items()}
    # Inside a nonlinearity: slot -> (value, d value / d root, values at the RevealCancel lanes).
    inner: dict[int, tuple[Any, Any, tuple[Any, ...]]] = {}

    def parts_of(slot: int) -> tuple[Any, Any]:
        if slot not in parts:  # a source: the input, a nonlinearity's or a pool's output
            parts[slot] = _split_sign(env[slot] - ref_env[slot])
        return parts[slot]

    for index, (eqn, kind) in enumerate(zip(program.eqns, plan.kinds, strict=True)):
        if index < resume:
            continue
        if index in whole_calls:
            resume = run_call(whole_calls[index], env)
            continue
        if kind == "member":
            _run_member(eqn, plan.roots[index], env, ref_env, inner, parts_of, reveal, plan)
            continue
        values = [_read(env, a) for a in eqn.inputs]
        if kind in _POOLS:
            (slot,), (out,) = eqn.inputs, eqn.outputs
            env[out] = _cross_max(eqn, values[0], ref_env[slot], ref_env[out])
            continue
        env.update(zip(eqn.outputs, _bind(eqn, values), strict=True))
        if reveal and kind == "linear":
            positions = [
                j for j, a in enumerate(eqn.inputs) if isinstance(a, int) and a in plan.varying
            ]
            for j in positions:
                parts_of(eqn.inputs[j])
            positive = _positive_part(eqn, values, positions, parts)
            for slot, pos in zip(eqn.outputs, positive, strict=True):
                parts[slot] = (pos, env[slot] - ref_env[slot] - pos)

    outputs = [_read(env, a) for a in program.outputs]
    out_parts = [
        parts_of(a) if reveal and isinstance(a, int) and a in plan.varying else None
        for a in program.outputs
    ]
    return outputs, out_parts


def _run_member(
    eqn: _Eqn,
    root: int,
    env: dict[int, Any],
    ref_env: Mapping[int, Any],
    inner: dict[int, tuple[Any, Any, tuple[Any, ...]]],
    parts_of: Callable[[int], tuple[Any, Any]],
    reveal: bool,
    plan: _Plan,
) -> None:
    """Evaluate one equation of an elementwise nonlinearity (without gradient), then attach the
    DeepLIFT multiplier to each of its results that leaves the nonlinearity."""
    ones = None
    operands, tangents, lanes = [], [], []
    for a in eqn.inputs:
        if isinstance(a, int) and a == root:
            value = lax.stop_gradient(env[root])
            if ones is None:
                ones = jnp.ones_like(value)
                if reveal:
                    pos, neg = (lax.stop_gradient(p) for p in parts_of(root))
                    root_lanes = (ref_env[root] + pos, ref_env[root] + neg)
            operands.append(value)
            tangents.append(ones)
            lanes.append(root_lanes if reveal else ())
        elif isinstance(a, int) and a in inner:
            value, tangent, lane_values = inner[a]
            operands.append(value)
            tangents.append(tangent)
            lanes.append(lane_values)
        else:
            value = _read(env, a)
            operands.append(value)
            tangents.append(None)
            lanes.append(None)

    positions = [
        j
        for j, t in enumerate(tangents)
        if t is not None and _is_float(jnp.result_type(operands[j]))
    ]

    def f(*xs):
        args = list(operands)
        for j, v in zip(positions, xs, strict=True):
            args[j] = v
        return _bind(eqn, args)

    if positions:
        outs, out_tangents = jax.jvp(
            f, tuple(operands[j] for j in positions), tuple(tangents[j] for j in positions)
        )
    else:
        outs, out_tangents = f(), tuple(None for _ in eqn.outputs)
    lane_outs = [()] * len(eqn.outputs)
    if reveal:
        per_lane = []
        for lane in range(2):
            args = [
                ln[lane] if ln is not None else op for ln, op in zip(lanes, operands, strict=True)
            ]
            per_lane.append(_bind(eqn, args))
        lane_outs = list(zip(*per_lane, strict=True))

    for slot, out, tangent, lane_values in zip(
        eqn.outputs, outs, out_tangents, lane_outs, strict=True
    ):
        tangent = tangent if tangent is not None and _is_float(out.dtype) else None
        inner[slot] = (out, tangent, lane_values)
        if slot not in plan.group_outputs:
            continue
        derivative = jnp.zeros_like(out) if tangent is None else tangent
        out_ref = ref_env[slot]
        if not reveal:
            dx = lax.stop_gradient(env[root]) - ref_env[root]
            multiplier = _secant(out - out_ref, dx, derivative)
            env[slot] = _with_multipliers(out, (env[root],), (multiplier,))
            continue
        pos, neg = parts_of(root)
        out_pos, out_neg = lane_values
        dy_pos = 0.5 * (out_pos - out_ref) + 0.5 * (out - out_neg)
        dy_neg = 0.5 * (out_neg - out_ref) + 0.5 * (out - out_pos)
        m_pos = _secant(dy_pos, lax.stop_gradient(pos), derivative)
        m_neg = _secant(dy_neg, lax.stop_gradient(neg), derivative)
        env[slot] = _with_multipliers(out, (pos, neg), (m_pos, m_neg))


# --------------------------------------------------------------------------------------------
# Driver shared by the public functions.


class _Setup(NamedTuple):
    plan: _Plan
    ref_env: dict[int, Any]
    ref_outputs: Any  # pytree of reference-side outputs (leading axis 1 for a shared reference)
    out_specs: Any  # pytree of input-side output ShapeDtypeStructs


def _setup(fn: Callable[..., Any], args: tuple, ref_args: tuple) -> tuple[_Setup, list, Any]:
    """Trace ``fn`` on both sides, analyse it and evaluate the reference side."""
    leaves, in_tree = jax.tree.flatten(args)
    ref_leaves, ref_tree = jax.tree.flatten(ref_args)
    if ref_tree != in_tree:
        raise ValueError(f"reference structure {ref_tree} differs from input structure {in_tree}")

    specs = [jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)) for x in leaves]
    program = _trace(fn, in_tree, specs)
    ref_program = program
    ref_specs = [
        jax.ShapeDtypeStruct(np.shape(r), s.dtype) for r, s in zip(ref_leaves, specs, strict=True)
    ]
    if ref_specs != specs:
        try:
            ref_program = _trace(fn, in_tree, ref_specs)
        except (TypeError, ValueError, IndexError):
            ref_program = None
        if ref_program is None or not _same_structure(program, ref_program):
            # fn cannot run at the reference's batch size: broadcast the reference instead.
            ref_leaves = [
                jnp.broadcast_to(r, s.shape) for r, s in zip(ref_leaves, specs, strict=True)
            ]
            ref_program = program
    plan = _plan(program)
    ref_env = _evaluate(
        ref_program, [r.astype(s.dtype) for r, s in zip(ref_leaves, specs, strict=True)]
    )
    ref_outputs = jax.tree.unflatten(
        program.out_tree, [_read(ref_env, a) for a in ref_program.outputs]
    )
    out_specs = jax.tree.unflatten(
        program.out_tree,
        [
            program.avals[a]
            if isinstance(a, int)
            else jax.ShapeDtypeStruct(a.aval.shape, a.aval.dtype)
            for a in program.outputs
        ],
    )
    return _Setup(plan, ref_env, ref_outputs, out_specs), leaves, in_tree


class _Explanation(NamedTuple):
    outputs: Any  # pytree like fn's output, input side
    ref_outputs: Any  # pytree like fn's output, reference side
    output_parts: Any  # RevealCancel (positive, negative) parts per output leaf, else None
    pullback: Callable[[Any], tuple[Any, Any]]  # output cotangents -> (multipliers, probe parts)


def _explain(
    setup: _Setup, leaves: list, in_tree: Any, rule: str, probe_leaves: Sequence[int] = ()
) -> _Explanation:
    """Run the input side under ``jax.vjp``. ``pullback(cotangent)`` returns the DeepLIFT
    multipliers of every input (a pytree like the args) and, for RevealCancel, the
    (positive-part, negative-part) multipliers of each leaf listed in ``probe_leaves``."""
    reveal = rule == "reveal_cancel"
    probe_leaves = tuple(probe_leaves) if reveal else ()
    program = setup.plan.program

    def run(flat, probes):
        return _run_input_side(
            setup.plan, setup.ref_env, rule, flat, dict(zip(probe_leaves, probes, strict=True))
        )

    probe_primals = [(jnp.zeros_like(leaves[i]), jnp.zeros_like(leaves[i])) for i in probe_leaves]
    outputs, vjp_fn, out_parts = jax.vjp(run, list(leaves), probe_primals, has_aux=True)

    def pullback(cotangent: Any) -> tuple[Any, Any]:
        flat_ct = [
            jnp.asarray(c, o.dtype)
            for c, o in zip(jax.tree.leaves(cotangent), outputs, strict=True)
        ]
        multipliers, probe_multipliers = vjp_fn(flat_ct)
        return jax.tree.unflatten(in_tree, multipliers), probe_multipliers

    unflatten = functools.partial(jax.tree.unflatten, program.out_tree)
    return _Explanation(unflatten(outputs), setup.ref_outputs, unflatten(out_parts), pullback)
