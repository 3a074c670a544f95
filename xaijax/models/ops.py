"""Pooling and convolution in forms XLA runs fast on the CPU, with the numerics of the plain ops.

* :func:`max_pool`: a pool whose windows tile the input (stride == window, no padding) is a reshape
  to ``[N, H/2, 2, W/2, 2, C]`` and a max over the window axes. XLA's ``reduce_window`` max and its
  gradient (a variadic reduce-window carrying argmax indices, then a scatter) are several times
  slower on the CPU. The gradient of the reshape form splits a tie evenly between the tied inputs
  where ``nn.max_pool`` gives it to the first; DeepLIFT treats the ``reduce_max`` by the same
  cross-max rule as a ``reduce_window`` max (first maximum wins), so its attributions agree.
* :func:`conv_general_dilated`: a drop-in for ``lax.conv_general_dilated`` (Flax ``nn.Conv``'s
  ``conv_general_dilated`` field). XLA's CPU convolution is slow for one input channel (LeNet's
  and the small VGG's first layer: 10-15x the time of the forms below). There, a stride-1,
  undilated 2-D convolution is a ``custom_jvp`` function: its value (what inference and DeepLIFT
  evaluate, and what input gradients differentiate) is one matmul of the stacked shifted slices
  of the input with the kernel; under differentiation (training) the value is a sum of shifted
  slices times kernel taps and the kernel gradient is XLA's, which is fast for that operand.
  Everything else, and every backend but the CPU, goes to ``lax.conv_general_dilated``
  unchanged; with more input channels the one-channel forms lose to XLA's own.

The one-channel convolution is linear in its input, so xaijax.deeplift (Rescale) and xaijax.lrp
bind its ``custom_jvp`` call whole and pull their multipliers back with its derivative rule
(``xaijax.deeplift.calls``). The unfolded input gradient of small VALID convolutions (LeNet-5's
conv2; commit 98bc164) made training 15% faster, but under DeepLIFT XLA fuses its transpose
into the ReLU multiplier before a max pool and recomputes it there, so importance scoring went
past its 1.2x of a gradient pass: left out (docs/benchmarks.md, "Where the training time goes").
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

_Padding = str | Sequence[tuple[int, int]]


def max_pool(
    x: jax.Array, window: tuple[int, ...], strides: tuple[int, ...] | None = None
) -> jax.Array:
    """``nn.max_pool(x, window, strides)`` (VALID padding) on ``[N, *spatial, C]``; a reshape and
    a max when the windows tile the input, ``nn.max_pool`` otherwise."""
    strides = window if strides is None else tuple(strides)
    if tuple(strides) != tuple(window):
        return nn.max_pool(x, window, strides)
    spatial = x.shape[1:-1]
    counts = [size // w for size, w in zip(spatial, window, strict=True)]
    x = x[(slice(None), *(slice(0, c * w) for c, w in zip(counts, window, strict=True)))]
    split = [d for c, w in zip(counts, window, strict=True) for d in (c, w)]
    x = x.reshape((x.shape[0], *split, x.shape[-1]))
    return x.max(axis=tuple(range(2, 2 + 2 * len(window), 2)))


def _is_nhwc_hwio(dimension_numbers: Any, ndim: int) -> bool:
    """Whether ``dimension_numbers`` are Flax's channels-last defaults for a 2-D convolution."""
    if ndim != 4:
        return False
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        specs = (dimension_numbers.lhs_spec, dimension_numbers.rhs_spec, dimension_numbers.out_spec)
        return tuple(map(tuple, specs)) == ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
    return tuple(dimension_numbers) == ("NHWC", "HWIO", "NHWC")


def _explicit_padding(padding: _Padding, lhs: jax.Array, rhs: jax.Array) -> tuple:
    if isinstance(padding, str):
        return tuple(lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _shifted_slices(lhs: jax.Array, window: tuple[int, int], padding: tuple) -> list[jax.Array]:
    """The ``kh * kw`` slices ``pad(lhs)[:, i:i+Ho, j:j+Wo, 0]`` of a one-channel input, in
    kernel order (row-major over ``(i, j)``)."""
    kh, kw = window
    padded = jnp.pad(lhs[..., 0], ((0, 0), *padding))
    ho, wo = padded.shape[1] - kh + 1, padded.shape[2] - kw + 1
    return [padded[:, i : i + ho, j : j + wo] for i in range(kh) for j in range(kw)]


def _patch_matmul_conv(lhs: jax.Array, rhs: jax.Array, padding: tuple) -> jax.Array:
    """Stride-1 NHWC x HWIO convolution of a one-channel input as one matmul: the shifted slices
    stacked on axis 1 (``[N, kh * kw, Ho, Wo]``, written in one cheap loop) contracted with the
    kernel as ``[kh * kw, O]``. Its derivatives (the input's, for attributions) are a matmul and a
    sum of shifted slices, also cheap; the matmul keeps XLA from fusing the convolution into, and
    recomputing it in, every consumer."""
    slices = _shifted_slices(lhs, rhs.shape[:2], padding)
    # jnp.concatenate, not jnp.stack: JAX's `stack` primitive is unknown to xaijax.deeplift.
    patches = jnp.concatenate([s[:, None] for s in slices], axis=1)
    kernel = rhs.reshape(-1, rhs.shape[-1])
    return lax.dot_general(patches, kernel, (((1,), (0,)), ((), ())))


def _tap_sum_conv(lhs: jax.Array, rhs: jax.Array, padding: tuple) -> jax.Array:
    """The same convolution as ``sum_ij slice_ij[..., None] * rhs[i, j, 0]``: one loop of
    multiply-adds, the fastest form of the forward pass alone. XLA may recompute it inside
    several consumers' fusions, which a training step tolerates better than the matmul's copies
    (20% faster on LeNet-5), but an input gradient does not (its backward recomputes the sum in
    the activation's mask: 20% slower than with the matmul)."""
    taps = rhs.reshape(-1, rhs.shape[-1])
    slices = _shifted_slices(lhs, rhs.shape[:2], padding)
    return functools.reduce(jnp.add, (s[..., None] * taps[k] for k, s in enumerate(slices)))


def _lax_conv(lhs: jax.Array, rhs: jax.Array, padding: tuple) -> jax.Array:
    return lax.conv_general_dilated(
        lhs, rhs, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


_single_channel_conv = jax.custom_jvp(_patch_matmul_conv, nondiff_argnums=(2,))


def _single_channel_conv_jvp(padding: tuple, primals: tuple, tangents: tuple) -> tuple:
    """Both tangent terms are linear, so reverse mode transposes them: the kernel term uses XLA's
    convolution, whose kernel gradient is fast even where its forward pass is not. The value is
    the tap sum when only the kernel is differentiated (training: the input is data), the matmul
    when the input is (attributions). Zero tangents cost nothing."""
    lhs, rhs = primals
    lhs_dot, rhs_dot = tangents
    input_is_data = isinstance(lhs_dot, SymbolicZero)
    out = (_tap_sum_conv if input_is_data else _patch_matmul_conv)(lhs, rhs, padding)
    terms = []
    if not input_is_data:
        terms.append(_patch_matmul_conv(lhs_dot, rhs, padding))
    if not isinstance(rhs_dot, SymbolicZero):
        terms.append(_lax_conv(lhs, rhs_dot, padding))
    out_dot = functools.reduce(jnp.add, terms) if terms else jnp.zeros_like(out)
    return out, out_dot


_single_channel_conv.defjvp(_single_channel_conv_jvp, symbolic_zeros=True)


def _wants_single_channel_form(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    lhs_dilation: Sequence[int] | None,
    rhs_dilation: Sequence[int] | None,
    dimension_numbers: Any,
    feature_group_count: int,
    batch_group_count: int,
) -> bool:
    """Whether the convolution is a stride-1 NHWC x HWIO float one of a one-channel input, on
    the CPU."""
    dilated = any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
    return (
        jax.default_backend() == "cpu"
        and _is_nhwc_hwio(dimension_numbers, lhs.ndim)
        and tuple(window_strides) == (1, 1)
        and not dilated
        and feature_group_count == 1
        and batch_group_count == 1
        and lhs.shape[-1] == 1
        and lhs.dtype == rhs.dtype
        and jnp.issubdtype(lhs.dtype, jnp.floating)
    )


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: _Padding,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """``lax.conv_general_dilated``, in a form XLA runs faster where there is one (module
    docstring)."""
    if precision is None and preferred_element_type is None and _wants_single_channel_form(
        lhs, rhs, window_strides, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, batch_group_count,
    ):  # fmt: skip
        return _single_channel_conv(lhs, rhs, _explicit_padding(padding, lhs, rhs))
    return lax.conv_general_dilated(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
