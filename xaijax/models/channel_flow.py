"""Where the output channels of layers go: a walk over a jaxpr that follows them through
per-channel operations (activations, pooling, reshapes, concatenation, residual additions).

Every value of the jaxpr gets a state:

* ``None``: it carries no layer's channels (a parameter, a constant, a random mask);
* :class:`Channels`: one of its axes holds channels of known layers, in blocks (``segments``);
* :class:`Lost`: channels of some layers went through an operation the walk cannot follow (a
  matmul, a slice of the channel axis, a reduction over it); using such a value is an error only
  where it matters (see ``xaijax.models.discovery``).

Elementwise operations whose operands carry channels of different layers tie those layers: their
output channels are the same channels (a residual addition).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from jax.extend import core

#: The pseudo-layer that produces the model input's channels (last axis).
INPUT = "<input>"


@dataclass(frozen=True)
class Channels:
    """Axis ``axis`` holds channels: ``segments`` are consecutive blocks ``(sources, size)`` whose
    channels come from the layers ``sources`` (several after an addition, none for a constant
    block). The axis has ``repeat * size`` entries with the channel index varying fastest (a
    flattened ``[H, W, C]`` has ``repeat = H * W``: entry ``r`` is channel ``r % C``)."""

    axis: int
    segments: tuple[tuple[frozenset[str], int], ...]
    repeat: int = 1

    @property
    def size(self) -> int:
        return sum(size for _, size in self.segments)

    @property
    def sources(self) -> frozenset[str]:
        return frozenset().union(*(sources for sources, _ in self.segments))


@dataclass(frozen=True)
class Lost:
    """Channels of ``sources`` went through ``op``, which the walk cannot follow (``reason``)."""

    sources: frozenset[str]
    op: str
    reason: str


State = Channels | Lost | None
#: Called with the sources whose channels an operation makes the same channels.
Tie = Callable[[frozenset[str]], None]
#: Handles an equation itself (the layer tags); returns its output states, or None to decline.
Hook = Callable[[core.JaxprEqn, list[State]], list[State] | None]


class _Unfollowable(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


ELEMENTWISE = _words(
    """abs acos acosh add add_any and asin asinh atan atan2 atanh cbrt ceil clamp conj
    convert_element_type copy copy_p cos cosh digamma div eq erf erf_inv erfc exp exp2 expm1
    floor ge gt imag integer_pow is_finite le lgamma log log1p logistic lt max min mul ne neg
    nextafter not or pow real reduce_precision rem round rsqrt select_n sign sin sinh sqrt square
    sub tan tanh xor"""
)
CALLS = _words(
    """jit pjit closed_call core_call custom_jvp_call custom_vjp_call custom_vjp_call_jaxpr
    remat2 checkpoint remat named_call"""
)
REDUCTIONS = _words(
    "reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or argmax argmin"
)
CUMULATIVE = _words("cumsum cumprod cummax cummin cumlogsumexp")
WINDOWED = _words("reduce_window_sum reduce_window_max reduce_window_min")


def _shape(var: Any) -> tuple[int, ...]:
    return tuple(var.aval.shape)


def _moved(state: Channels, axis: int) -> Channels:
    return Channels(axis, state.segments, state.repeat)


def _merge(states: Sequence[State], tie: Tie) -> State:
    """Operands of an elementwise operation: their channels must line up; each block is tied."""
    tracked = [s for s in states if isinstance(s, Channels)]
    if not tracked:
        return None
    first = tracked[0]
    layout = (first.axis, first.repeat, tuple(size for _, size in first.segments))
    for other in tracked[1:]:
        if (other.axis, other.repeat, tuple(size for _, size in other.segments)) != layout:
            raise _Unfollowable("combines channels of layers that do not line up")
    segments = []
    for i, (_, size) in enumerate(first.segments):
        sources = frozenset().union(*(s.segments[i][0] for s in tracked))
        if len(tracked) > 1:
            tie(sources)
        segments.append((sources, size))
    return Channels(first.axis, tuple(segments), first.repeat)


def _reduce(state: Channels, axes: Sequence[int]) -> Channels:
    if state.axis in axes:
        raise _Unfollowable("reduces over the channel axis")
    return _moved(state, state.axis - sum(1 for a in axes if a < state.axis))


def _reshape(eqn: core.JaxprEqn, state: Channels) -> Channels:
    """The channel index of an entry is ``(flat // inner) % C``; it survives a reshape to an axis
    ``b`` with the same ``inner`` product after it and a multiple of ``C`` entries."""
    old, new = _shape(eqn.invars[0]), tuple(eqn.params["new_sizes"])
    inner = math.prod(old[state.axis + 1 :])
    for b in reversed(range(len(new))):
        if math.prod(new[b + 1 :]) == inner and new[b] % state.size == 0:
            return Channels(b, state.segments, new[b] // state.size)
    raise _Unfollowable("splits or interleaves the channel axis")


def _window(eqn: core.JaxprEqn, state: Channels) -> Channels:
    a, p = state.axis, eqn.params
    untouched = (
        p["window_dimensions"][a] == 1
        and p["window_strides"][a] == 1
        and tuple(p["padding"][a]) == (0, 0)
        and p["base_dilation"][a] == 1
        and p["window_dilation"][a] == 1
    )
    if not untouched:
        raise _Unfollowable("pools across the channel axis")
    return state


def _slice(eqn: core.JaxprEqn, state: Channels) -> Channels:
    a, p = state.axis, eqn.params
    strides = p["strides"]
    full = p["start_indices"][a] == 0 and p["limit_indices"][a] == _shape(eqn.invars[0])[a]
    if not full or (strides is not None and strides[a] != 1):
        raise _Unfollowable("slices the channel axis")
    return state


def _concatenate(eqn: core.JaxprEqn, states: list[State], tie: Tie) -> State:
    dim = eqn.params["dimension"]
    tracked = [s for s in states if isinstance(s, Channels)]
    if all(s.axis != dim for s in tracked):
        return _merge(states, tie)
    segments: list[tuple[frozenset[str], int]] = []
    for var, state in zip(eqn.invars, states, strict=True):
        if state is None:
            segments.append((frozenset(), _shape(var)[dim]))
        elif state.axis != dim or state.repeat != 1:
            raise _Unfollowable("concatenates channels with other or flattened entries")
        else:
            segments.extend(state.segments)
    return Channels(dim, tuple(segments))


def _single(eqn: core.JaxprEqn, state: Channels) -> Channels:
    """Rules of the one-operand structural primitives."""
    name, p, a = eqn.primitive.name, eqn.params, state.axis
    if name in REDUCTIONS:
        return _reduce(state, tuple(p["axes"]))
    if name in CUMULATIVE:
        if p["axis"] == a:
            raise _Unfollowable("accumulates along the channel axis")
        return state
    if name in WINDOWED:
        return _window(eqn, state)
    if name == "reshape":
        return _reshape(eqn, state)
    if name == "transpose":
        return _moved(state, tuple(p["permutation"]).index(a))
    if name == "squeeze":
        if a in p["dimensions"]:
            raise _Unfollowable("squeezes the channel axis")
        return _moved(state, a - sum(1 for d in p["dimensions"] if d < a))
    if name == "broadcast_in_dim":
        new_axis = p["broadcast_dimensions"][a]
        if p["shape"][new_axis] != _shape(eqn.invars[0])[a]:
            raise _Unfollowable("broadcasts the channel axis")
        return _moved(state, new_axis)
    if name == "slice":
        return _slice(eqn, state)
    if name == "dynamic_slice":
        if p["slice_sizes"][a] != _shape(eqn.invars[0])[a]:
            raise _Unfollowable("slices the channel axis")
        return state
    if name == "pad":
        if tuple(p["padding_config"][a]) != (0, 0, 0):
            raise _Unfollowable("pads the channel axis")
        return state
    if name == "rev":
        if a in p["dimensions"]:
            raise _Unfollowable("reverses the channel axis")
        return state
    raise _Unfollowable("is not an operation discovery can follow")


def _rule(eqn: core.JaxprEqn, states: list[State], tie: Tie) -> list[State]:
    """Output states of one primitive whose operands carry channels (none of them lost)."""
    name = eqn.primitive.name
    if name in ELEMENTWISE:
        return [_merge(states, tie)]
    if name == "concatenate":
        return [_concatenate(eqn, states, tie)]
    if name == "split":
        state = states[0]
        if not isinstance(state, Channels) or any(s is not None for s in states[1:]):
            raise _Unfollowable("is not an operation discovery can follow")
        if eqn.params["axis"] == state.axis:
            raise _Unfollowable("splits the channel axis")
        return [state] * len(eqn.outvars)
    if name == "optimization_barrier":
        return list(states)
    operand, rest = states[0], states[1:]
    # Index operands (dynamic_slice starts, pad values) must not carry channels themselves.
    indexed = any(r is not None for r in rest)
    if len(eqn.outvars) != 1 or not isinstance(operand, Channels) or indexed:
        raise _Unfollowable("is not an operation discovery can follow")
    return [_single(eqn, operand)]


def _layer_sources(states: Sequence[State]) -> frozenset[str]:
    found = frozenset().union(*(s.sources for s in states if s is not None))
    return found - {INPUT}


def _sub_jaxpr(eqn: core.JaxprEqn) -> core.Jaxpr | None:
    """The body of a call-like primitive, if its inputs and outputs are the equation's."""
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        body = eqn.params.get(key)
        if body is None:
            continue
        body = getattr(body, "jaxpr", body)
        if len(body.invars) == len(eqn.invars) and len(body.outvars) == len(eqn.outvars):
            return body
    return None


def _equation(eqn: core.JaxprEqn, states: list[State], hook: Hook, tie: Tie) -> list[State]:
    handled = hook(eqn, states)
    if handled is not None:
        return handled
    n_out = len(eqn.outvars)
    if eqn.primitive.name in CALLS:  # Entered even without channels: it may hold layer tags.
        body = _sub_jaxpr(eqn)
        if body is not None:
            return propagate(body, states, hook, tie)
    if all(s is None for s in states):
        return [None] * n_out
    lost = [s for s in states if isinstance(s, Lost)]
    if lost:
        sources = _layer_sources(states)
        return [Lost(sources, lost[0].op, lost[0].reason) if sources else None] * n_out
    try:
        return _rule(eqn, states, tie)
    except _Unfollowable as err:
        sources = _layer_sources(states)
        return [Lost(sources, eqn.primitive.name, err.reason) if sources else None] * n_out


def propagate(jaxpr: core.Jaxpr, states: Sequence[State], hook: Hook, tie: Tie) -> list[State]:
    """States of ``jaxpr``'s outputs given its inputs' ``states`` (constants carry nothing).

    ``hook`` sees every equation first (nested calls included); ``tie`` hears every set of layers
    whose channels an elementwise operation or a concatenation along another axis makes one."""
    if len(states) != len(jaxpr.invars):
        raise ValueError(f"{len(states)} input states for a jaxpr of {len(jaxpr.invars)} inputs")
    env: dict[Any, State] = dict(zip(jaxpr.invars, states, strict=True))

    def read(var: Any) -> State:
        return None if isinstance(var, core.Literal) else env.get(var)

    for eqn in jaxpr.eqns:
        outs = _equation(eqn, [read(v) for v in eqn.invars], hook, tie)
        env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in jaxpr.outvars]
