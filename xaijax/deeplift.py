"""DeepLIFT as a JAX transform: Rescale and RevealCancel multipliers for any traceable function.

DeepLIFT (Shrikumar et al., ICML 2017) explains ``t(x) - t(x_ref)`` for a scalar target ``t`` by
*multipliers* ``m`` that follow the chain rule like gradients, except at nonlinearities:

* Rescale: an elementwise nonlinearity ``y = f(z)`` passes the secant slope
  ``m = (f(z) - f(z_ref)) / (z - z_ref)``, or ``f'(z)`` where ``|z - z_ref| <= SECANT_EPS``.
* RevealCancel: ``dz`` is split into the sums of its positive and its negative terms, ``dz+`` and
  ``dz-``, propagated separately through linear operations (a term ``w * da`` counts as positive
  when ``w * da > 0``, where ``da`` is the delta of an input, a nonlinearity's or a pool's output).
  With ``z0 = z_ref``::

      dy+ = (f(z0 + dz+) - f(z0)) / 2 + (f(z0 + dz+ + dz-) - f(z0 + dz-)) / 2,   m+ = dy+ / dz+
      dy- = (f(z0 + dz-) - f(z0)) / 2 + (f(z0 + dz+ + dz-) - f(z0 + dz+)) / 2,   m- = dy- / dz-

* Max pooling (windowed or a ``max`` over axes) uses the cross-max rule: in each window the
  position ``c`` holding ``max(y, y_ref)`` (the first maximum of ``max(x, x_ref)``) receives the
  whole delta with multiplier ``(y - y_ref) / (x_c - x_ref_c)``, which lies in ``[0, 1]``.
* Linear operations (dense, convolution, sums, average pooling, inference-mode BatchNorm, reshapes,
  concatenations, residual additions, ...) pass multipliers exactly like gradients.

Contributions are ``C_i = (x_i - x_ref_i) * m_i`` and sum to ``t(x) - t(x_ref)``
(summation-to-delta); the same conservation holds for the units of any layer that every path from
input to output crosses.

How it works: ``fn`` is traced to a jaxpr, calls (``jit``, ``custom_jvp``/``custom_vjp``
functions such as ``jax.nn.relu``, ``checkpoint``) are inlined, and each maximal elementwise
sub-computation of one input-dependent value (``relu``, ``gelu``, ``leaky_relu``,
``x * sigmoid(x)`` ...) is treated as ONE nonlinearity. The reference side is evaluated first
(once, at batch 1, when the batch shares one reference); the input side is then interpreted under
``jax.vjp`` with every nonlinearity carried by a ``jax.custom_vjp`` op whose backward multiplies by
its DeepLIFT multiplier. A nonlinear operation with no rule raises ``UnsupportedOperationError``
naming the primitive; nothing silently falls back to the gradient. The examples of a batch must
not interact (inference mode).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jcore

Array = jax.Array
Rule = Literal["rescale", "reveal_cancel"]

RULES: tuple[str, ...] = ("rescale", "reveal_cancel")
# Below this |delta| at a nonlinearity's input the multiplier is the derivative f'(z) instead of
# the secant; the summation-to-delta error this causes is O(f'' * SECANT_EPS**2) per unit.
SECANT_EPS = 1e-6

__all__ = [
    "RULES",
    "SECANT_EPS",
    "UnsupportedOperationError",
    "attribute",
    "attribute_shap",
    "layer_attributions",
    "parameter_contributions",
]


class UnsupportedOperationError(NotImplementedError):
    """Raised when an input-dependent value meets an operation DeepLIFT has no rule for."""


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
class _Program:
    eqns: tuple[_Eqn, ...]
    consts: tuple[tuple[int, Any], ...]
    inputs: tuple[int, ...]
    outputs: tuple[Any, ...]
    avals: tuple[jax.ShapeDtypeStruct, ...]
    out_tree: Any


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
                outs = inline(body, [const_slot(c) for c in body_consts], ins)
            for var, atom in zip(eqn.outvars, outs, strict=True):
                if not isinstance(var, jcore.DropVar):
                    env[var] = atom
        return tuple(read(atom) for atom in jaxpr.outvars)

    top_consts = [const_slot(c) for c in closed.consts]
    inputs = tuple(new_slot(s.shape, s.dtype) for s in in_specs)
    outputs = inline(closed.jaxpr, top_consts, inputs)
    return _Program(tuple(eqns), tuple(consts), inputs, outputs, tuple(avals), out_tree)


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


def _nonlinearity_reason(eqn: _Eqn, varying_positions: Sequence[int], avals: Sequence) -> str:
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
    return "DeepLIFT has no rule for it"


def _unsupported(eqn: _Eqn, reason: str) -> UnsupportedOperationError:
    return UnsupportedOperationError(
        f"DeepLIFT cannot propagate through primitive `{eqn.primitive.name}` applied to "
        f"input-dependent values: {reason}."
    )


def _plan(program: _Program) -> _Plan:
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
        reason = _nonlinearity_reason(eqn, positions, avals)
        if name in _ELEMENTWISE:
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
                raise _unsupported(eqn, "max pooling needs a floating operand")
            kinds.append(name)
            continue
        if reason:
            if name in _ELEMENTWISE and len(positions) > 1:
                reason += " and its input-dependent operands come from different values"
            raise _unsupported(eqn, reason)
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
                producer[slot], "its non-floating result is used outside the elementwise function"
            )
    return _Plan(program, tuple(kinds), roots, frozenset(outputs), frozenset(varying))


# --------------------------------------------------------------------------------------------
# Custom-VJP carriers.


@jax.custom_vjp
def _with_multipliers(value: Array, inputs: tuple[Array, ...], multipliers: tuple) -> Array:
    """Returns ``value``; its backward sends ``cotangent * multipliers[k]`` to ``inputs[k]``."""
    del inputs, multipliers
    return value


def _with_multipliers_fwd(value, inputs, multipliers):
    del inputs
    return value, multipliers


def _with_multipliers_bwd(multipliers, cotangent):
    return None, tuple(cotangent * m for m in multipliers), None


_with_multipliers.defvjp(_with_multipliers_fwd, _with_multipliers_bwd)


class _WindowSpec(NamedTuple):
    dimensions: tuple[int, ...]
    strides: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    base_dilation: tuple[int, ...]
    window_dilation: tuple[int, ...]


class _AxesSpec(NamedTuple):
    axes: tuple[int, ...]


def _window_views(a: Array, spec: _WindowSpec, pad_value: float) -> list[Array]:
    """One strided view per window offset: ``views[k][o] = padded(a)[window o, offset k]``."""
    config = [(lo, hi, d - 1) for (lo, hi), d in zip(spec.padding, spec.base_dilation, strict=True)]
    padded = lax.pad(a, jnp.asarray(pad_value, a.dtype), config)
    out = [
        (n - (w - 1) * d - 1) // s + 1
        for n, w, d, s in zip(
            padded.shape, spec.dimensions, spec.window_dilation, spec.strides, strict=True
        )
    ]
    views = []
    for offset in itertools.product(*(range(w) for w in spec.dimensions)):
        start = [o * d for o, d in zip(offset, spec.window_dilation, strict=True)]
        limit = [b + (n - 1) * s + 1 for b, n, s in zip(start, out, spec.strides, strict=True)]
        views.append(lax.slice(padded, start, limit, spec.strides))
    return views


def _flatten_axes(a: Array, spec: _AxesSpec) -> Array:
    kept = [d for d in range(a.ndim) if d not in spec.axes]
    moved = jnp.transpose(a, kept + list(spec.axes))
    return moved.reshape((*moved.shape[: len(kept)], -1))


def _pool_winner(x: Array, reference: Array, spec: Any) -> tuple[Array, Array]:
    """Per pooled output: index of the first maximum of ``max(x, ref)`` and ``x - ref`` there."""
    x, reference = jnp.broadcast_arrays(x, reference)
    z, delta = jnp.maximum(x, reference), x - reference
    if isinstance(spec, _AxesSpec):
        z, delta = _flatten_axes(z, spec), _flatten_axes(delta, spec)
        index = jnp.argmax(z, axis=-1)
        return index, jnp.take_along_axis(delta, index[..., None], axis=-1)[..., 0]
    z_views = _window_views(z, spec, -jnp.inf)
    delta_views = _window_views(delta, spec, 0.0)
    best, index, chosen = z_views[0], jnp.zeros(z_views[0].shape, jnp.int32), delta_views[0]
    for k in range(1, len(z_views)):
        take = z_views[k] > best
        best = jnp.where(take, z_views[k], best)
        index = jnp.where(take, k, index)
        chosen = jnp.where(take, delta_views[k], chosen)
    return index, chosen


def _pool_gather(a: Array, index: Array, spec: Any) -> Array:
    """The pooled-position values of ``a`` at ``index`` (linear in ``a``)."""
    if isinstance(spec, _AxesSpec):
        return jnp.take_along_axis(_flatten_axes(a, spec), index[..., None], axis=-1)[..., 0]
    views = _window_views(a, spec, 0.0)
    return functools.reduce(
        jnp.add, (jnp.where(index == k, v, jnp.zeros_like(v)) for k, v in enumerate(views))
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _routed_pool(x: Array, pooled: Array, index: Array, scale: Array, spec: Any) -> Array:
    """Returns ``pooled``; backward routes ``cotangent * scale`` to the winning positions of x."""
    del x, index, scale, spec
    return pooled


def _routed_pool_fwd(x, pooled, index, scale, spec):
    del spec
    return pooled, (x, index, scale)


def _routed_pool_bwd(spec, residuals, cotangent):
    x, index, scale = residuals
    gather = jax.linear_transpose(lambda a: _pool_gather(a, index, spec), x)
    (x_cotangent,) = gather(cotangent * scale)
    return x_cotangent, None, None, None


_routed_pool.defvjp(_routed_pool_fwd, _routed_pool_bwd)


def _pool_spec(eqn: _Eqn) -> Any:
    if eqn.primitive.name == "reduce_max":
        return _AxesSpec(tuple(eqn.params["axes"]))
    p = eqn.params
    return _WindowSpec(
        tuple(p["window_dimensions"]),
        tuple(p["window_strides"]),
        tuple(tuple(pair) for pair in p["padding"]),
        tuple(p["base_dilation"]),
        tuple(p["window_dilation"]),
    )


def _cross_max(eqn: _Eqn, x: Array, x_ref: Array, pooled_ref: Array) -> Array:
    """Max pooling by the cross-max rule (module docstring): exact summation-to-delta."""
    spec = _pool_spec(eqn)
    (pooled,) = _bind(eqn, [lax.stop_gradient(x)])
    index, delta_in = _pool_winner(lax.stop_gradient(x), x_ref, spec)
    delta_out = pooled - pooled_ref
    zero = delta_in == 0
    scale = jnp.where(zero, jnp.ones_like(delta_in), delta_out / jnp.where(zero, 1.0, delta_in))
    return _routed_pool(x, pooled, index, lax.stop_gradient(scale), spec)


# --------------------------------------------------------------------------------------------
# The input-side interpreter.


def _split_sign(delta: Array) -> tuple[Array, Array]:
    zero = jnp.zeros_like(delta)
    return jnp.where(delta > 0, delta, zero), jnp.where(delta < 0, delta, zero)


def _secant(dy: Array, dx: Array, derivative: Array) -> Array:
    small = jnp.abs(dx) <= SECANT_EPS
    return jnp.where(small, derivative, dy / jnp.where(small, 1.0, dx))


def _linear_parts(eqn: _Eqn, values: list[Any], positions: Sequence[int], parts: Mapping):
    """RevealCancel: (positive, negative) parts of a linear op's output from its operands' parts."""
    name = eqn.primitive.name

    def apply(replacements: Mapping[int, Any]) -> tuple[Any, ...]:
        args = list(values)
        for j, v in replacements.items():
            args[j] = v
        return _bind(eqn, args)

    if name in _BILINEAR or name == "div":
        (j,) = positions
        pos, neg = parts[eqn.inputs[j]]
        c = 1 - j  # the input-independent operand, split by sign
        if name in ("mul", "div"):
            positive = values[c] > 0
            return (
                apply({j: jnp.where(positive, pos, neg)}),
                apply({j: jnp.where(positive, neg, pos)}),
            )
        c_pos, c_neg = jnp.maximum(values[c], 0), jnp.minimum(values[c], 0)
        pp, nn_, pn, np_ = (
            apply({j: pos, c: c_pos}),
            apply({j: neg, c: c_neg}),
            apply({j: neg, c: c_pos}),
            apply({j: pos, c: c_neg}),
        )
        return (
            tuple(a + b for a, b in zip(pp, nn_, strict=True)),
            tuple(a + b for a, b in zip(pn, np_, strict=True)),
        )

    flipped = _FLIPPED_OPERAND.get(name)

    def propagate(lane: int) -> tuple[Any, ...]:
        tangents = [parts[eqn.inputs[j]][1 - lane if j == flipped else lane] for j in positions]

        def f(*operands):
            return apply(dict(zip(positions, operands, strict=True)))

        _, out = jax.jvp(f, tuple(values[j] for j in positions), tuple(tangents))
        return out

    return propagate(0), propagate(1)


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
    added to.
    """
    program = plan.program
    reveal = rule == "reveal_cancel"
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
            pos, neg = _linear_parts(eqn, values, positions, parts)
            parts.update(zip(eqn.outputs, zip(pos, neg, strict=True), strict=True))

    outputs = [_read(env, a) for a in program.outputs]
    out_parts = [
        parts_of(a) if reveal and isinstance(a, int) and a in plan.varying else None
        for a in program.outputs
    ]
    return outputs, out_parts


def _run_member(eqn, root, env, ref_env, inner, parts_of, reveal, plan) -> None:
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


# --------------------------------------------------------------------------------------------
# Validation helpers.


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"unknown DeepLIFT rule {rule!r}; choose one of {RULES}")


def _check_inputs(inputs: Any) -> Array:
    inputs = jnp.asarray(inputs)
    if inputs.ndim < 1:
        raise ValueError("inputs must have a leading batch axis, got a scalar")
    if not _is_float(inputs.dtype):
        raise TypeError(f"inputs must be floating point, got dtype {inputs.dtype}")
    return inputs


def _shared_reference(inputs: Array, reference: Any) -> tuple[Array, bool]:
    """The reference with a leading batch axis (size 1 when shared), and whether it is shared."""
    reference = jnp.asarray(reference, inputs.dtype)
    if reference.shape == inputs.shape:
        return reference, False
    if reference.shape == inputs.shape[1:]:
        return reference[None], True
    raise ValueError(
        f"reference shape {reference.shape} matches neither inputs {inputs.shape} (one reference "
        f"per example) nor one example {inputs.shape[1:]} (shared); pass several references to "
        "attribute_shap"
    )


def _check_target(target: Any, out_spec: Any, batch: int) -> Array | None:
    """Validate ``target`` against outputs ``[B]`` / ``[B, K]``; returns it as ``[B]`` ints."""
    shape = getattr(out_spec, "shape", None)
    if shape is None or len(shape) not in (1, 2) or shape[0] != batch:
        raise ValueError(f"fn must return an array [B] or [B, K] with B={batch}, got {out_spec}")
    if len(shape) == 1:
        if target is not None:
            raise ValueError("fn returns one output per example ([B]); target must be None")
        return None
    if target is None:
        raise ValueError(f"fn returns outputs [B, K]={shape}; pass target (an int or [B] ints)")
    if isinstance(target, bool):
        raise TypeError("target must be an integer or an integer array, got a bool")
    target = jnp.asarray(target)
    if not jnp.issubdtype(target.dtype, jnp.integer):
        raise TypeError(f"target must be integers, got dtype {target.dtype}")
    if target.shape not in ((), (batch,)):
        raise ValueError(f"target must be a scalar or shaped [{batch}], got {target.shape}")
    if not isinstance(target, jax.core.Tracer):
        values = np.asarray(target)
        if values.min() < 0 or values.max() >= shape[1]:
            raise ValueError(f"target {values} out of range for {shape[1]} outputs")
    return jnp.broadcast_to(target, (batch,))


def _select(outputs: Array, target: Array | None) -> Array:
    if target is None:
        return outputs
    outputs = jnp.broadcast_to(outputs, (target.shape[0], *outputs.shape[1:]))
    return jnp.take_along_axis(outputs, target[:, None], axis=1)[:, 0]


def _target_cotangent(out_spec: Any, target: Array | None) -> Array:
    if target is None:
        return jnp.ones(out_spec.shape, out_spec.dtype)
    return jax.nn.one_hot(target, out_spec.shape[1], dtype=out_spec.dtype)


# --------------------------------------------------------------------------------------------
# Public API: input attributions.


def attribute(
    fn: Callable[[Array], Array],
    inputs: Array,
    reference: Array,
    *,
    target: int | Array | None = None,
    rule: Rule = "rescale",
    return_delta: bool = False,
) -> Array | tuple[Array, Array]:
    """DeepLIFT contributions ``C = (inputs - reference) * m`` of the selected output of ``fn``.

    Args:
      fn: any JAX-traceable function mapping a batch ``[B, ...]`` to ``[B, K]`` (or ``[B]``); the
        examples must not interact. It may contain ``jax.jit``, ``jax.nn`` activations, Flax
        ``model.apply`` closed over its variables, average/max pooling, BatchNorm (inference).
      inputs: ``[B, ...]`` floating array.
      reference: ``[B, ...]`` (one per example) or ``[...]`` (one example's shape, shared by the
        batch; its side of the network is evaluated once at batch 1).
      target: ``None`` when ``fn`` returns ``[B]``; else an int or ``[B]`` ints selecting a column.
      rule: ``"rescale"`` or ``"reveal_cancel"``.
      return_delta: also return the per-example summation-to-delta error
        ``sum(C) - (f(x)[t] - f(ref)[t])``.

    Returns:
      Contributions shaped like ``inputs`` (and the ``[B]`` delta error with ``return_delta``).
    """
    _check_rule(rule)
    inputs = _check_inputs(inputs)
    reference, _ = _shared_reference(inputs, reference)
    setup, leaves, in_tree = _setup(fn, (inputs,), (reference,))
    (out_spec,) = jax.tree.leaves(setup.out_specs)
    target = _check_target(target, out_spec, inputs.shape[0])
    explanation = _explain(setup, leaves, in_tree, rule)
    ((multipliers,), _) = explanation.pullback(_target_cotangent(out_spec, target))
    contributions = (inputs - reference) * multipliers
    if not return_delta:
        return contributions
    delta = _select(explanation.outputs, target) - _select(explanation.ref_outputs, target)
    total = contributions.reshape(contributions.shape[0], -1).sum(axis=1)
    return contributions, total - delta


def attribute_shap(
    fn: Callable[[Array], Array],
    inputs: Array,
    references: Array,
    *,
    target: int | Array | None = None,
    rule: Rule = "rescale",
    return_delta: bool = False,
) -> Array | tuple[Array, Array]:
    """DeepLIFT-SHAP: ``attribute`` against each of ``references`` ``[R, ...]`` (each one example's
    shape, shared by the batch), averaged over the references. The delta error (``return_delta``)
    is ``sum(C) - mean_r (f(x)[t] - f(r)[t])``. References are processed one at a time
    (``lax.map``), so memory does not grow with ``R``."""
    _check_rule(rule)
    inputs = _check_inputs(inputs)
    references = jnp.asarray(references, inputs.dtype)
    if references.ndim != inputs.ndim or references.shape[1:] != inputs.shape[1:]:
        raise ValueError(
            f"references must be [R, ...] with each of one example's shape {inputs.shape[1:]}, "
            f"got {references.shape}"
        )
    if references.shape[0] < 1:
        raise ValueError("references must hold at least one reference")

    def one(reference: Array) -> tuple[Array, Array]:
        return attribute(fn, inputs, reference, target=target, rule=rule, return_delta=True)

    contributions, deltas = lax.map(one, references)
    if return_delta:
        return contributions.mean(axis=0), deltas.mean(axis=0)
    return contributions.mean(axis=0)


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
            calls.append(_LayerCall(key, path, module.clone(parent=None), spec))
        return out

    def run(x):
        with nn.intercept_methods(interceptor):
            return model.apply(variables, x, **apply_kwargs)

    jax.eval_shape(run, x_spec)
    return calls


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
    calls = [c for c in calls if c.key in keys]
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
    if reduce not in ("none", "mean", "mean_abs"):
        raise ValueError(f"reduce must be 'none', 'mean' or 'mean_abs', got {reduce!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    explained = _explain_layers(
        model, variables, inputs, reference, layers, target, rule, apply_kwargs
    )
    batch = jnp.shape(inputs)[0]
    calls_by_path: dict[str, list[_LayerCall]] = {}
    for call in explained.calls:
        calls_by_path.setdefault(call.path, []).append(call)
    result: dict[str, Array] = {}
    for path, calls in calls_by_path.items():
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

        def one_example(factors, contribution=contribution):
            return contribution(jax.tree.map(lambda v: v[None], factors))

        if reduce == "mean":
            result[path] = contribution(factors) / batch
        elif reduce == "none":
            result[path] = jax.vmap(one_example)(factors)
        else:
            result[path] = _sum_abs_in_chunks(one_example, factors, kernel, chunk_size) / batch
    return result


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
