"""Tracing ``fn`` into a flat program and deciding how DeepLIFT treats each equation.

The tracing (:func:`_trace`) and the analysis (:func:`_plan`) are shared with ``xaijax.lrp``, which
interprets the same plan with the LRP rules (``method`` names the method in error messages).
Every call is inlined; the program also records where the body of each ``custom_jvp`` /
``custom_vjp`` call landed (:class:`_Call`), so an interpreter can bind a linear one whole and use
its derivative rule (``xaijax.deeplift.calls``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore


class UnsupportedOperationError(NotImplementedError):
    """Raised when an input-dependent value meets an operation DeepLIFT (or LRP) has no rule for."""


# --------------------------------------------------------------------------------------------
# Primitive tables.

# Call-like primitives whose body is inlined (their custom derivative rules are replaced by ours).
_CALL_PRIMITIVES = frozenset(
    {
        "jit",
        "pjit",
        "closed_call",
        "core_call",
        "custom_jvp_call",
        "custom_vjp_call",
        "custom_vjp_call_jaxpr",
        "remat2",
        "checkpoint",
        "remat",
    }
)
# Calls with a custom derivative rule: inlined like the others, and recorded as a `_Call`.
_CUSTOM_CALLS = frozenset({"custom_jvp_call", "custom_vjp_call"})
# Elementwise primitives that are always linear (affine) in their operands.
_LINEAR_ELEMENTWISE = frozenset(
    {"add", "add_any", "sub", "neg", "copy", "copy_p", "stop_gradient", "reduce_precision"}
)
# Elementwise primitives that are linear only for some operands (see `_nonlinearity_reason`).
_CONDITIONAL_ELEMENTWISE = frozenset({"mul", "div", "select_n", "convert_element_type"})
_NONLINEAR_ELEMENTWISE = frozenset(
    {
        "abs", "acos", "acosh", "and", "asin", "asinh", "atan", "atan2", "atanh", "cbrt", "ceil",
        "clamp", "cos", "cosh", "digamma", "eq", "erf", "erf_inv", "erfc", "exp", "exp2",
        "expm1", "floor", "ge", "gt", "integer_pow", "is_finite", "le", "lgamma", "log",
        "log1p", "logistic", "lt", "max", "min", "ne", "nextafter", "not", "or", "pow", "rem",
        "round", "rsqrt", "sign", "sin", "sinh", "sqrt", "square", "tan", "tanh", "xor",
    }
)  # fmt: skip
_ELEMENTWISE = _LINEAR_ELEMENTWISE | _CONDITIONAL_ELEMENTWISE | _NONLINEAR_ELEMENTWISE
# Non-elementwise primitives that are linear in their data operands.
_LINEAR_STRUCTURAL = frozenset(
    {
        "broadcast_in_dim", "concatenate", "conv_general_dilated", "cumsum", "dot_general",
        "dynamic_slice", "dynamic_update_slice", "expand_dims", "gather", "optimization_barrier",
        "pad", "reduce_sum", "reduce_window_sum", "reshape", "rev", "scatter-add", "scatter_add",
        "sharding_constraint", "slice", "split", "squeeze", "transpose",
    }
)  # fmt: skip
# Bilinear primitives: linear when exactly one of their two operands depends on the input.
_BILINEAR = frozenset({"mul", "dot_general", "conv_general_dilated"})
# Operands that must not depend on the input (indices, predicates, divisors).
_STATIC_OPERANDS: dict[str, Callable[[int], bool]] = {
    "div": lambda j: j == 1,
    "select_n": lambda j: j == 0,
    "gather": lambda j: j == 1,
    "dynamic_slice": lambda j: j >= 1,
    "dynamic_update_slice": lambda j: j >= 2,
    "scatter-add": lambda j: j == 1,
    "scatter_add": lambda j: j == 1,
}
# RevealCancel: operands whose sign flips through the op (positive part <-> negative part).
_FLIPPED_OPERAND = {"neg": 0, "sub": 1}
_POOLS = frozenset({"reduce_window_max", "reduce_max"})


def _is_float(dtype: Any) -> bool:
    return jnp.issubdtype(dtype, jnp.floating)


# --------------------------------------------------------------------------------------------
# Flat programs: a jaxpr with every call inlined, values addressed by integer slots.


@dataclasses.dataclass(frozen=True)
class _Eqn:
    primitive: Any
    params: dict[str, Any]
    inputs: tuple[Any, ...]  # slot (int) or jcore.Literal
    outputs: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class _Call:
    """A ``custom_jvp_call`` / ``custom_vjp_call`` whose body was inlined as ``eqns[start:stop]``:
    binding ``primitive`` with ``params`` on ``inputs`` gives ``outputs`` (the body's value) and
    applies the call's own derivative rule under differentiation."""

    primitive: Any
    params: dict[str, Any]
    inputs: tuple[Any, ...]  # slot (int) or jcore.Literal, the call's operands in order
    outputs: tuple[Any, ...]  # what the body's results were bound to
    start: int
    stop: int


@dataclasses.dataclass(frozen=True)
class _Program:
    eqns: tuple[_Eqn, ...]
    consts: tuple[tuple[int, Any], ...]
    inputs: tuple[int, ...]
    outputs: tuple[Any, ...]
    avals: tuple[jax.ShapeDtypeStruct, ...]
    out_tree: Any
    calls: tuple[_Call, ...] = ()  # custom-derivative calls, inner ones before outer ones


def _callee(eqn: Any) -> tuple[Any, Sequence[Any]] | None:
    """The body (jaxpr, consts) of a call-like equation, or None for other primitives."""
    if eqn.primitive.name not in _CALL_PRIMITIVES:
        return None
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        body = eqn.params.get(key)
        if isinstance(body, jcore.ClosedJaxpr):
            return body.jaxpr, body.consts
        if isinstance(body, jcore.Jaxpr):
            return body, ()
    raise UnsupportedOperationError(f"cannot inline call primitive `{eqn.primitive.name}`")


def _trace(fn: Callable[..., Any], in_tree: Any, in_specs: Sequence[Any]) -> _Program:
    """Trace ``fn`` (called on the unflattened leaves) and inline every call into one program."""
    trees = []

    def flat_fn(*leaves):
        out = fn(*jax.tree.unflatten(in_tree, leaves))
        leaves_out, tree = jax.tree.flatten(out)
        trees.append(tree)
        return leaves_out

    closed = jax.make_jaxpr(flat_fn)(*in_specs)
    out_tree = trees[-1]
    avals: list[jax.ShapeDtypeStruct] = []
    consts: list[tuple[int, Any]] = []
    eqns: list[_Eqn] = []
    calls: list[_Call] = []

    def new_slot(shape: Sequence[int], dtype: Any) -> int:
        avals.append(jax.ShapeDtypeStruct(tuple(shape), dtype))
        return len(avals) - 1

    def const_slot(value: Any) -> int:
        slot = new_slot(np.shape(value), jax.typeof(value).dtype)
        consts.append((slot, value))
        return slot

    def inline(jaxpr: Any, const_atoms: Sequence[Any], in_atoms: Sequence[Any]) -> tuple:
        env: dict[Any, Any] = dict(zip(jaxpr.constvars, const_atoms, strict=True))
        env.update(zip(jaxpr.invars, in_atoms, strict=True))

        def read(atom: Any) -> Any:
            return atom if isinstance(atom, jcore.Literal) else env[atom]

        for eqn in jaxpr.eqns:
            ins = tuple(read(atom) for atom in eqn.invars)
            callee = _callee(eqn)
            if callee is None:
                outs = tuple(new_slot(v.aval.shape, v.aval.dtype) for v in eqn.outvars)
                eqns.append(_Eqn(eqn.primitive, dict(eqn.params), ins, outs))
            else:
                body, body_consts = callee
                start = len(eqns)
                outs = inline(body, [const_slot(c) for c in body_consts], ins)
                if eqn.primitive.name in _CUSTOM_CALLS:
                    params = dict(eqn.params)
                    calls.append(_Call(eqn.primitive, params, ins, outs, start, len(eqns)))
            for var, atom in zip(eqn.outvars, outs, strict=True):
                if not isinstance(var, jcore.DropVar):
                    env[var] = atom
        return tuple(read(atom) for atom in jaxpr.outvars)

    top_consts = [const_slot(c) for c in closed.consts]
    inputs = tuple(new_slot(s.shape, s.dtype) for s in in_specs)
    outputs = inline(closed.jaxpr, top_consts, inputs)
    return _Program(
        tuple(eqns), tuple(consts), inputs, outputs, tuple(avals), out_tree, tuple(calls)
    )


def _signature(atoms: Sequence[Any]) -> tuple:
    return tuple(a if isinstance(a, int) else "literal" for a in atoms)


def _same_structure(a: _Program, b: _Program) -> bool:
    """Whether two traces of one function differ only in shapes (equation for equation)."""
    if (len(a.eqns), a.inputs, a.out_tree) != (len(b.eqns), b.inputs, b.out_tree):
        return False
    if [s for s, _ in a.consts] != [s for s, _ in b.consts]:
        return False
    if _signature(a.outputs) != _signature(b.outputs):
        return False
    return all(
        ea.primitive is eb.primitive
        and ea.outputs == eb.outputs
        and _signature(ea.inputs) == _signature(eb.inputs)
        for ea, eb in zip(a.eqns, b.eqns, strict=True)
    )


def _bind(eqn: _Eqn, args: Sequence[Any]) -> tuple[Any, ...]:
    out = eqn.primitive.bind(*args, **eqn.params)
    return tuple(out) if eqn.primitive.multiple_results else (out,)


def _bind_call(call: _Call, args: Sequence[Any]) -> tuple[Any, ...]:
    """The call's results on ``args``, under its own derivative rule."""
    return tuple(call.primitive.bind(*args, **call.primitive.get_bind_params(call.params)))


def _read(env: Mapping[int, Any], atom: Any) -> Any:
    return atom.val if isinstance(atom, jcore.Literal) else env[atom]


def _evaluate(program: _Program, leaves: Sequence[Any]) -> dict[int, Any]:
    """Plain evaluation keeping every slot's value (the reference side)."""
    env: dict[int, Any] = dict(program.consts)
    env.update(zip(program.inputs, leaves, strict=True))
    for eqn in program.eqns:
        env.update(zip(eqn.outputs, _bind(eqn, [_read(env, a) for a in eqn.inputs]), strict=True))
    return env


# --------------------------------------------------------------------------------------------
# Analysis: which values depend on the input, and how each equation is treated.


@dataclasses.dataclass(frozen=True)
class _Plan:
    program: _Program
    kinds: tuple[str, ...]  # per equation: const | linear | member | reduce_window_max | reduce_max
    roots: Mapping[int, int]  # member equation -> input slot of its nonlinearity
    group_outputs: frozenset[int]  # slots leaving a nonlinearity (carry the DeepLIFT multiplier)
    varying: frozenset[int]


def _nonlinearity_reason(
    eqn: _Eqn, varying_positions: Sequence[int], avals: Sequence, method: str = "DeepLIFT"
) -> str:
    """Why ``eqn`` is not linear in its input-dependent operands ('' when it is linear)."""
    name = eqn.primitive.name
    if name in _NONLINEAR_ELEMENTWISE:
        return "it is nonlinear"
    if name in _BILINEAR and len(varying_positions) > 1:
        return "it multiplies two input-dependent operands"
    static = _STATIC_OPERANDS.get(name)
    if static is not None and any(static(j) for j in varying_positions):
        return "an input-dependent operand enters nonlinearly (divisor, index or predicate)"
    if name == "convert_element_type":
        source = avals[eqn.inputs[varying_positions[0]]].dtype
        if not (_is_float(source) and _is_float(eqn.params["new_dtype"])):
            return "it converts to or from a non-floating dtype"
        return ""
    if name in _ELEMENTWISE or name in _LINEAR_STRUCTURAL:
        return ""
    return f"{method} has no rule for it"


def _unsupported(
    eqn: _Eqn, reason: str, method: str = "DeepLIFT", within: _Call | None = None
) -> UnsupportedOperationError:
    where = "" if within is None else f" (in the body of a `{within.primitive.name}`)"
    return UnsupportedOperationError(
        f"{method} cannot propagate through primitive `{eqn.primitive.name}`{where} applied to "
        f"input-dependent values: {reason}."
    )


def _innermost_call(program: _Program, index: int) -> _Call | None:
    """The innermost custom-derivative call whose body holds equation ``index``, if any."""
    holding = [c for c in program.calls if c.start <= index < c.stop]
    return min(holding, key=lambda c: c.stop - c.start, default=None)


def _plan(
    program: _Program, method: str = "DeepLIFT", barriers: frozenset[int] = frozenset()
) -> _Plan:
    """Classify every equation. ``barriers``: indices of linear elementwise equations that never
    join an elementwise group (their output starts a new one); LRP passes the bias additions of
    its dense and convolution layers, so a following activation sees the biased value."""
    avals = program.avals
    varying = set(program.inputs)
    root_of: dict[int, int] = {}  # slot produced inside an elementwise group -> the group's input
    producer: dict[int, _Eqn] = {}
    roots: dict[int, int] = {}
    nonlinear_roots: set[int] = set()
    kinds: list[str] = []
    for index, eqn in enumerate(program.eqns):
        positions = [j for j, a in enumerate(eqn.inputs) if isinstance(a, int) and a in varying]
        if not positions:
            kinds.append("const")
            continue
        varying.update(eqn.outputs)
        name = eqn.primitive.name
        reason = _nonlinearity_reason(eqn, positions, avals, method)
        if name in _ELEMENTWISE and index not in barriers:
            group_roots = {root_of.get(eqn.inputs[j], eqn.inputs[j]) for j in positions}
            root = next(iter(group_roots))
            shape = avals[root].shape
            same_shape = all(avals[eqn.inputs[j]].shape == shape for j in positions) and all(
                avals[o].shape == shape for o in eqn.outputs
            )
            if len(group_roots) == 1 and same_shape and _is_float(avals[root].dtype):
                kinds.append("member")
                roots[index] = root
                root_of.update((o, root) for o in eqn.outputs)
                producer.update((o, eqn) for o in eqn.outputs)
                if reason:
                    nonlinear_roots.add(root)
                continue
        if name in _POOLS:
            if not _is_float(avals[eqn.inputs[0]].dtype):
                raise _unsupported(
                    eqn,
                    "max pooling needs a floating operand",
                    method,
                    _innermost_call(program, index),
                )
            kinds.append(name)
            continue
        if reason:
            if name in _ELEMENTWISE and len(positions) > 1:
                reason += " and its input-dependent operands come from different values"
            raise _unsupported(eqn, reason, method, _innermost_call(program, index))
        kinds.append("linear")

    # Groups made only of linear ops (a bias add, a scale) are evaluated like any linear op.
    for index, root in list(roots.items()):
        if root not in nonlinear_roots:
            kinds[index] = "linear"
            del roots[index]
    group_slots = {s: r for s, r in root_of.items() if r in nonlinear_roots}
    outputs = {a for a in program.outputs if isinstance(a, int) and a in group_slots}
    for index, eqn in enumerate(program.eqns):
        for a in eqn.inputs:
            if isinstance(a, int) and a in group_slots and roots.get(index) != group_slots[a]:
                outputs.add(a)
    for slot in outputs:
        if not _is_float(avals[slot].dtype):
            raise _unsupported(
                producer[slot],
                "its non-floating result is used outside the elementwise function",
                method,
            )
    return _Plan(program, tuple(kinds), roots, frozenset(outputs), frozenset(varying))
