"""Layer discovery: the :class:`LayerSpec` tuple of any linen model, found by tracing it.

:func:`discover_layer_specs` applies the model under ``nn.intercept_methods``; each call of an
``nn.Conv``, ``nn.Dense`` or ``nn.BatchNorm`` tags its input and its output with an identity
primitive, so the jaxpr of the whole forward pass shows where every layer's output channels go
(``xaijax.models.channel_flow`` follows them between the tags). From that it reads:

* the layers, named by module path (``"conv1"``, or ``"Block_0/Conv_1"`` for a nested module:
  the keys of ``flax.traverse_util.flatten_dict(params, sep="/")`` without the leaf), in forward
  order: by depth (the longest chain of layers from the input), ties in call order;
* the BatchNorm whose input is one layer's output channels (after activations or pooling);
* the consumers: the layers that read a layer's channels (through flattening: the Dense reading
  ``H * W * C`` rows), for a tied layer those of its whole group. After a concatenation the
  consumer is listed for every concatenated layer, and ``consumer_slices`` says where each one's
  channels start in the consumer's input (set only where some consumer reads more than the
  layer's own channels);
* the tied groups: layers whose channels an elementwise operation (a residual addition) joins,
  named after their first member;
* the classifier: the layer whose output channels are the model's output.

A structure a :class:`LayerSpec` cannot describe (a slice of a layer's channels, a matmul or a
transpose mixing them, a grouped convolution, a BatchNorm of a sum) raises
:class:`DiscoveryError` naming the layer and the operation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
from jax.extend import core

from xaijax.models.channel_flow import INPUT, Channels, Lost, State, propagate
from xaijax.models.common import LayerSpec

_TAG = core.Primitive("xaijax_layer_tag")
_TAG.def_impl(lambda x, **_: x)
_TAG.def_abstract_eval(lambda aval, **_: aval)


class DiscoveryError(ValueError):
    """The model has a structure discovery cannot describe with :class:`LayerSpec`."""


@dataclass(frozen=True)
class _Call:
    """One intercepted layer call: its kind and, for a BatchNorm, the axis it normalizes."""

    name: str
    kind: str  # "conv", "dense" or "bn"
    axis: Any = None


def layer_kind(module: nn.Module) -> str | None:
    """``"conv"`` / ``"dense"`` for an ``nn.Conv`` / ``nn.Dense``, else None."""
    if isinstance(module, nn.Conv):
        return "conv"
    if isinstance(module, nn.Dense):
        return "dense"
    return None


def scope_path(module: nn.Module) -> str:
    """The module path read from its scope chain (``"Block_0/Conv_1"``). Unlike
    ``module.path`` it follows ``nn.share_scope``, which reattaches scopes made before it ran;
    a module inside a lifted transform (``nn.remat``), whose scope is a root, gets
    ``module.path``. An unbound copy applied on its own gets ``""``."""
    names = []
    scope = module.scope
    while scope is not None and scope.parent is not None:
        names.append(str(scope.name))
        scope = scope.parent
    return "/".join(reversed(names)) or "/".join(module.path)


def _kind(module: nn.Module) -> str | None:
    return "bn" if isinstance(module, nn.BatchNorm) else layer_kind(module)


def _tag_input(args: tuple, kwargs: dict, name: str) -> tuple[tuple, dict]:
    if args:
        return (_TAG.bind(args[0], name=name, role="in"), *args[1:]), kwargs
    for key in ("inputs", "x"):
        if key in kwargs:
            return args, {**kwargs, key: _TAG.bind(kwargs[key], name=name, role="in")}
    raise DiscoveryError(f"layer {name!r} was called without an input array")


def _interceptor(calls: dict[str, _Call]) -> Callable:
    """Records every Conv / Dense / BatchNorm call (in call order) and tags its input and output."""

    inside: list[str] = []  # The layer call under way: a layer it runs is part of it.

    def intercept(next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
        module = context.module
        kind = _kind(module)
        if context.method_name != "__call__" or kind is None or inside:
            return next_fun(*args, **kwargs)
        name = scope_path(module)
        if not name:
            raise DiscoveryError("the model is a single layer; discovery needs a model of layers")
        if name in calls:
            raise DiscoveryError(f"layer {name!r} is called more than once (shared weights)")
        if kind == "conv" and module.feature_group_count != 1:
            raise DiscoveryError(
                f"layer {name!r} is a grouped convolution (feature_group_count="
                f"{module.feature_group_count}): its output channels are tied to its input channels"
            )
        calls[name] = _Call(name, kind, getattr(module, "axis", None))
        args, kwargs = _tag_input(args, kwargs, name)
        inside.append(name)
        try:
            out = next_fun(*args, **kwargs)
        finally:
            inside.pop()
        return _TAG.bind(out, name=name, role="out")

    return intercept


def _names(sources: frozenset[str]) -> str:
    return ", ".join(repr(s) for s in sorted(sources))


class _Graph:
    """What the walk over the jaxpr learns at the layer tags, and the ties it hears of."""

    def __init__(self, calls: dict[str, _Call]):
        self.calls = calls
        self.reads: dict[str, frozenset[str]] = {}  # layer -> layers whose channels it reads
        self.inputs: dict[str, State] = {}  # layer -> the state of its input
        self.units: dict[str, int] = {}  # layer -> its output channels
        self.bn_states: dict[str, State] = {}
        self.parent: dict[str, str] = {}

    def find(self, name: str) -> str:
        while self.parent.get(name, name) != name:
            name = self.parent[name]
        return name

    def tie(self, sources: frozenset[str]) -> None:
        roots = sorted({self.find(s) for s in sources})
        for root in roots[1:]:
            self.parent[root] = roots[0]

    def hook(self, eqn: core.JaxprEqn, states: list[State]) -> list[State] | None:
        if eqn.primitive is not _TAG:
            return None
        call, role, state = self.calls[eqn.params["name"]], eqn.params["role"], states[0]
        ndim = len(eqn.invars[0].aval.shape)
        if call.kind == "bn":
            if role == "in":
                self.bn_states[call.name] = _normalized(call, state, ndim)
                return [None]
            return [self.bn_states[call.name]]
        if role == "in":
            self.reads[call.name] = _read(call, state, ndim)
            self.inputs[call.name] = state
            return [None]
        self.units[call.name] = eqn.outvars[0].aval.shape[-1]
        return [Channels(ndim - 1, ((frozenset({call.name}), self.units[call.name]),))]


def _normalized(call: _Call, state: State, ndim: int) -> State:
    """What a BatchNorm passes on: its input's channels if it normalizes exactly those."""
    if not isinstance(state, Channels):
        return state
    axes = call.axis if isinstance(call.axis, tuple | list) else (call.axis,)
    if {int(a) % ndim for a in axes} == {state.axis} and state.repeat == 1:
        return state
    sources = state.sources - {INPUT}
    reason = "normalizes features other than the channels"
    return Lost(sources, f"BatchNorm {call.name!r}", reason) if sources else None


def _read(call: _Call, state: State, ndim: int) -> frozenset[str]:
    """The layers whose channels ``call`` reads as its input features (last axis)."""
    if state is None:
        return frozenset()
    if isinstance(state, Lost):
        raise DiscoveryError(
            f"cannot follow the channels of layer(s) {_names(state.sources)} into layer "
            f"{call.name!r}: {state.op!r} {state.reason}"
        )
    sources = state.sources - {INPUT}
    if not sources:
        return frozenset()
    if state.axis != ndim - 1:
        raise DiscoveryError(
            f"layer {call.name!r} reads features on its last axis, but the channels of layer(s) "
            f"{_names(sources)} are on axis {state.axis} (moved by a transpose or reshape)"
        )
    if call.kind == "conv" and state.repeat != 1:
        raise DiscoveryError(
            f"conv layer {call.name!r} reads flattened channels of layer(s) {_names(sources)}"
        )
    return sources


def _classifier(state: State) -> str:
    """The one layer whose output channels are the model output's (ops after it are free)."""
    if isinstance(state, Channels) and len(state.segments) > 1:
        raise DiscoveryError(
            f"the model output joins the channels of layer(s) {_names(state.sources - {INPUT})}"
        )
    sources = frozenset() if state is None else state.sources - {INPUT}
    if len(sources) == 1:
        return next(iter(sources))
    if not sources:
        raise DiscoveryError("the model output does not come from an nn.Conv or nn.Dense layer")
    how = f"through {state.op!r} ({state.reason})" if isinstance(state, Lost) else "by addition"
    raise DiscoveryError(f"the model output mixes layers {_names(sources)} {how}")


def _slice_in(reader: str, members: list[str], state: Channels) -> tuple[int, int]:
    """``(start, total)``: where the channels of the group ``members`` sit in ``reader``'s input."""
    group = set(members)
    starts, start = [], 0
    for sources, size in state.segments:
        if sources & group:
            starts.append(start)
        start += size
    if len(starts) != 1:
        raise DiscoveryError(
            f"layer {reader!r} reads the channels of layer(s) {_names(frozenset(members))} "
            f"{len(starts)} times (a concatenation repeats them)"
        )
    return starts[0], state.size


def _consumer_slices(
    graph: _Graph, members: list[str], readers: tuple[str, ...], units: int
) -> tuple[tuple[int, int], ...]:
    """``LayerSpec.consumer_slices``: empty unless some reader's input is wider than the group."""
    slices = tuple(_slice_in(r, members, graph.inputs[r]) for r in readers)
    return () if all(s == (0, units) for s in slices) else slices


def _batch_norms(graph: _Graph) -> dict[str, str]:
    """Layer -> the BatchNorm normalizing its output channels."""
    bn_of: dict[str, str] = {}
    for bn, state in graph.bn_states.items():
        if not isinstance(state, Channels) or not state.sources - {INPUT}:
            continue
        sources = state.sources - {INPUT}
        if len(state.segments) != 1 or len(sources) != 1:
            raise DiscoveryError(
                f"BatchNorm {bn!r} normalizes the joined channels of layers {_names(sources)}; "
                "a LayerSpec attaches a BatchNorm to one layer"
            )
        (layer,) = sources
        if layer in bn_of:
            raise DiscoveryError(f"layer {layer!r} is normalized by {bn_of[layer]!r} and {bn!r}")
        bn_of[layer] = bn
    return bn_of


def _specs(graph: _Graph, output: State) -> tuple[LayerSpec, ...]:
    layers = [c for c in graph.calls.values() if c.kind != "bn"]
    missing = [c.name for c in layers if c.name not in graph.reads]
    if missing:
        raise DiscoveryError(
            f"layer(s) {_names(frozenset(missing))} run inside a primitive discovery cannot "
            "follow (a scan, loop or conditional)"
        )
    depth: dict[str, int] = {}
    for call in layers:
        depth[call.name] = 1 + max((depth[s] for s in graph.reads[call.name]), default=0)
    order = sorted(range(len(layers)), key=lambda i: (depth[layers[i].name], i))
    names = [layers[i].name for i in order]
    position = {name: i for i, name in enumerate(names)}

    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(graph.find(name), []).append(name)
    tied_to_input = [n for n in names if graph.find(n) == graph.find(INPUT)]
    if tied_to_input:
        raise DiscoveryError(f"layer(s) {_names(frozenset(tied_to_input))} are added to the input")
    direct: dict[str, set[str]] = {name: set() for name in names}
    for reader, sources in graph.reads.items():
        for source in sources:
            direct[source].add(reader)

    bn_of, classifier = _batch_norms(graph), _classifier(output)
    kinds = {c.name: c.kind for c in layers}
    specs = []
    for name in names:
        members = groups[graph.find(name)]
        readers = tuple(
            sorted(set().union(*(direct[m] for m in members)), key=position.__getitem__)
        )
        specs.append(
            LayerSpec(
                name=name,
                kind=kinds[name],
                bn=bn_of.get(name),
                consumers=readers,
                tied_group=members[0] if len(members) > 1 else None,
                is_classifier=name == classifier,
                consumer_slices=_consumer_slices(graph, members, readers, graph.units[name]),
            )
        )
    return tuple(specs)


def _abstract(example_input: Any) -> jax.ShapeDtypeStruct:
    if not hasattr(example_input, "shape") or not hasattr(example_input, "dtype"):
        raise ValueError(
            "example_input must be an array or jax.ShapeDtypeStruct (one batch of inputs), got "
            f"{type(example_input).__name__}"
        )
    if len(example_input.shape) < 2:
        raise ValueError(f"example_input must have a batch axis, got shape {example_input.shape}")
    return jax.ShapeDtypeStruct(tuple(example_input.shape), example_input.dtype)


def discover_layer_specs(
    model: nn.Module, example_input: Any, **apply_kwargs: Any
) -> tuple[LayerSpec, ...]:
    """The :class:`LayerSpec` of every ``nn.Conv`` / ``nn.Dense`` of ``model``, found by tracing
    ``model.apply(variables, example_input, **apply_kwargs)`` (shapes only: nothing is computed
    or compiled). ``example_input`` is a batch (array or ``jax.ShapeDtypeStruct``) with channels
    on its last axis; ``apply_kwargs`` (e.g. ``train=False``) go to ``init`` and ``apply``.

    Raises :class:`DiscoveryError` for a structure a LayerSpec cannot describe."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a flax.linen Module, got {type(model).__name__}")
    clash = {"rngs", "mutable"} & set(apply_kwargs)
    if clash:
        raise ValueError(f"apply_kwargs must not set {sorted(clash)}; discovery sets them")
    x = _abstract(example_input)

    def init(x: jax.Array) -> Any:
        key = jax.random.key(0)
        return model.init({"params": key, "dropout": key}, x, **apply_kwargs)

    calls: dict[str, _Call] = {}

    def forward(variables: Mapping[str, Any], x: jax.Array) -> Any:
        with nn.intercept_methods(_interceptor(calls)):
            rngs = {"dropout": jax.random.key(0)}
            out, _ = model.apply(variables, x, rngs=rngs, mutable=True, **apply_kwargs)
        return out

    variables = jax.eval_shape(init, x)
    closed, out_shape = jax.make_jaxpr(forward, return_shape=True)(variables, x)
    if len(jax.tree.leaves(out_shape)) != 1:
        raise DiscoveryError("the model must return one array (the logits)")
    n_vars = len(jax.tree.leaves(variables))
    in_state = Channels(x.ndim - 1, ((frozenset({INPUT}), x.shape[-1]),))
    graph = _Graph(calls)
    (output,) = propagate(closed.jaxpr, [None] * n_vars + [in_state], graph.hook, graph.tie)
    return _specs(graph, output)


def layer_specs_of(
    model: nn.Module, example_input: Any, **apply_kwargs: Any
) -> tuple[LayerSpec, ...]:
    """``model.layer_specs()`` where the model writes them (the override), else
    :func:`discover_layer_specs` ``(model, example_input, **apply_kwargs)``."""
    hand_written = getattr(model, "layer_specs", None)
    if callable(hand_written):
        return tuple(hand_written())
    return discover_layer_specs(model, example_input, **apply_kwargs)


__all__ = ["DiscoveryError", "discover_layer_specs", "layer_specs_of"]
