"""Input relevances: :func:`relevance`."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax

from xaijax.deeplift.attribution import _check_inputs, _check_target, _select, _target_cotangent
from xaijax.lrp.interpreter import explain, trace
from xaijax.lrp.rules import Rule, resolve

Array = jax.Array
Rules = str | Rule | Mapping[str, Rule]


def relevance(
    fn: Callable[[Array], Array],
    inputs: Array,
    *,
    target: int | Array | None = None,
    rules: Rules = "composite",
    return_delta: bool = False,
) -> Array | tuple[Array, Array]:
    """LRP relevances ``R = inputs * m`` of the selected output of ``fn``, whose relevance is
    its value ``f(x)[t]``.

    Args:
      fn: any JAX-traceable function mapping a batch ``[B, ...]`` to ``[B, K]`` (or ``[B]``); the
        examples must not interact. It may contain ``jax.jit``, ``jax.nn`` activations, Flax
        ``model.apply`` closed over its variables, average/max pooling, BatchNorm (inference).
      inputs: ``[B, ...]`` floating array.
      target: ``None`` when ``fn`` returns ``[B]``; else an int or ``[B]`` ints selecting a column.
      rules: a preset name of ``xaijax.lrp.PRESETS`` (``"composite"``: alpha1-beta0 for
        convolutions, epsilon for dense layers), one :class:`Rule` for every layer, or
        ``{"dense": Rule, "conv": Rule}``.
      return_delta: also return the per-example conservation error ``sum(R) - f(x)[t]`` (minus
        the relevance the biases and stabilisers absorb; 0 up to rounding for bias-free networks
        under z+ and alpha-beta with non-zero denominators).

    Returns:
      Relevances shaped like ``inputs`` (and the ``[B]`` conservation error with
      ``return_delta``).
    """
    rules = resolve(rules)
    inputs = _check_inputs(inputs)
    traced = trace(fn, (inputs,))
    (out_spec,) = jax.tree.leaves(traced.out_specs)
    target = _check_target(target, out_spec, inputs.shape[0])
    outputs, pullback = explain(traced, rules)
    (multipliers,) = pullback(_target_cotangent(out_spec, target))
    relevances = inputs * multipliers
    if not return_delta:
        return relevances
    total = relevances.reshape(relevances.shape[0], -1).sum(axis=1)
    return relevances, total - _select(outputs, target)
