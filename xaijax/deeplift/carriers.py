"""The DeepLIFT rules as custom-VJP carriers: the secant multiplier of a nonlinearity, the op
that attaches multipliers to a value, and the cross-max rule of max pooling.

Each carrier returns its forward value unchanged; its backward multiplies the cotangent by the
DeepLIFT multiplier instead of the derivative. The interpreter (``xaijax.deeplift.interpreter``)
and LRP (``xaijax.lrp.interpreter``) place them in the program they interpret.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from xaijax.deeplift.program import _bind, _Eqn

Array = jax.Array

# Below this |delta| at a nonlinearity's input the multiplier is the derivative f'(z) instead of
# the secant; the summation-to-delta error this causes is O(f'' * SECANT_EPS**2) per unit.
SECANT_EPS = 1e-6


def _secant(dy: Array, dx: Array, derivative: Array) -> Array:
    """The secant multiplier ``dy / dx``, or ``derivative`` where ``|dx| <= SECANT_EPS``."""
    small = jnp.abs(dx) <= SECANT_EPS
    return jnp.where(small, derivative, dy / jnp.where(small, 1.0, dx))


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


def _first_max_mask(z: Array, top: Array, spec: _AxesSpec) -> Array:
    """Boolean mask, shaped like ``z``, of the first maximum (row-major over ``spec.axes``) of
    every pooled group, whose maximum is ``top``. Elementwise ops and one small reduction only:
    argmax, gather and scatter are slow on the CPU."""
    flat_index = jnp.zeros((1,) * z.ndim, jnp.int32)
    for d in spec.axes:
        flat_index = flat_index * z.shape[d] + lax.broadcasted_iota(jnp.int32, z.shape, d)
    is_max = z == jnp.expand_dims(top, spec.axes)
    size = int(np.prod([z.shape[d] for d in spec.axes]))
    first = jnp.min(jnp.where(is_max, flat_index, size), axis=spec.axes, keepdims=True)
    return flat_index == first


def _pool_winner(x: Array, reference: Array, top: Array, spec: Any) -> tuple[Array, Array]:
    """Per pooled output, where ``max(x, ref)`` has its first maximum (``top``, the larger of
    the two pooled values) and ``x - ref`` there: a window-offset index for a windowed pool, a
    mask shaped like ``x`` for a max over axes."""
    x, reference = jnp.broadcast_arrays(x, reference)
    z, delta = jnp.maximum(x, reference), x - reference
    if isinstance(spec, _AxesSpec):
        mask = _first_max_mask(z, top, spec)
        return mask, _pool_gather(delta, mask, spec)
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
    """The pooled-position values of ``a`` at ``index`` (a mask for a max over axes; linear in
    ``a``)."""
    if isinstance(spec, _AxesSpec):
        return jnp.sum(jnp.where(index, a, jnp.zeros_like(a)), axis=spec.axes)
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
    top = jnp.maximum(pooled, pooled_ref)
    index, delta_in = _pool_winner(lax.stop_gradient(x), x_ref, top, spec)
    delta_out = pooled - pooled_ref
    zero = delta_in == 0
    scale = jnp.where(zero, jnp.ones_like(delta_in), delta_out / jnp.where(zero, 1.0, delta_in))
    return _routed_pool(x, pooled, index, lax.stop_gradient(scale), spec)
