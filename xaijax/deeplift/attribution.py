"""Input attributions: ``attribute`` and ``attribute_shap``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from xaijax.deeplift.interpreter import _explain, _setup
from xaijax.deeplift.program import _is_float

Array = jax.Array
Rule = Literal["rescale", "reveal_cancel"]
RULES: tuple[str, ...] = ("rescale", "reveal_cancel")


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

    Called eagerly the program runs op by op; wrap the call in ``jax.jit`` for speed (a shared
    reference then costs about one input gradient, see ``scripts/bench_deeplift.py``).
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
