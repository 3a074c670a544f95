"""Plain-numpy DeepLIFT, written layer by layer from the equations of Shrikumar et al. (2017).

A test oracle: it shares no code with ``xaijax.deeplift`` (only the published fallback threshold
``SECANT_EPS``) and computes in float64. A network is a sequence of layers applied in order to a
batch ``[B, ...]``: :class:`Dense`, :class:`Conv` (NHWC input, HWIO kernel, stride 1),
:class:`Activation`, :class:`MaxPool` (``k x k`` windows, stride ``k``) and :class:`Flatten`. A
reference has a leading axis of 1 (shared) or ``B``.

Multiplier rules at a nonlinearity ``y = f(z)`` with reference ``z0``:

* ``"rescale"``: ``m = (f(z) - f(z0)) / (z - z0)``, or ``f'(z)`` where ``|z - z0| <= SECANT_EPS``;
* ``"gradient"``: ``m = f'(z)``, which turns every result into gradient x delta.

Max pooling: ``"rescale"`` uses the cross-max rule (in each window the first position of the
maximum of ``max(x, x0)`` takes the whole delta with multiplier ``(y - y0) / (x_c - x0_c)``, 1 where
``x_c == x0_c``); ``"gradient"`` routes 1 to the first maximum of ``x``. Linear layers pass
multipliers by the transpose of their matrix.

RevealCancel (dense networks, :func:`reveal_cancel_mlp`): the delta of a unit's input ``z`` splits
into the sum of its positive terms ``dz+`` and of its negative terms ``dz-`` (terms
``W_ij * da_i``); then::

    dy+ = (f(z0 + dz+) - f(z0)) / 2 + (f(z0 + dz- + dz+) - f(z0 + dz-)) / 2,   m+ = dy+ / dz+
    dy- = (f(z0 + dz-) - f(z0)) / 2 + (f(z0 + dz+ + dz-) - f(z0 + dz+)) / 2,   m- = dy- / dz-

(``f'(z)`` where ``|dz+|`` resp. ``|dz-| <= SECANT_EPS``). Going back, an input ``a_i`` of a dense
layer takes ``W_ij * M+_j`` through a positive term, ``W_ij * M-_j`` through a negative one and,
when ``da_i == 0``, ``W_ij * (M+_j + M-_j) / 2`` (the rule of the reference implementation).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import numpy as np

from xaijax.deeplift import SECANT_EPS

Array = np.ndarray
Rule = Literal["rescale", "gradient"]
ZeroDeltaRule = Literal["mean", "negative"]


def _relu(z: Array) -> Array:
    return np.maximum(z, 0.0)


def _relu_derivative(z: Array) -> Array:
    return (z > 0).astype(z.dtype)


def _tanh_derivative(z: Array) -> Array:
    return 1.0 - np.tanh(z) ** 2


# name -> (f, f')
ACTIVATIONS: dict[str, tuple[Callable[[Array], Array], Callable[[Array], Array]]] = {
    "relu": (_relu, _relu_derivative),
    "tanh": (np.tanh, _tanh_derivative),
}


@dataclasses.dataclass(frozen=True, eq=False)
class Dense:
    kernel: Array  # [in, out]
    bias: Array  # [out]


@dataclasses.dataclass(frozen=True, eq=False)
class Conv:
    kernel: Array  # [kh, kw, in, out]
    bias: Array  # [out]
    padding: Literal["SAME", "VALID"] = "VALID"  # SAME: odd kernels only


@dataclasses.dataclass(frozen=True)
class Activation:
    name: str = "relu"


@dataclasses.dataclass(frozen=True)
class MaxPool:
    size: int = 2


@dataclasses.dataclass(frozen=True)
class Flatten:
    pass


Layer = Dense | Conv | Activation | MaxPool | Flatten


def parametrized(layers: Sequence[Layer]) -> list[int]:
    """Indices of the Dense and Conv layers of ``layers``."""
    return [i for i, layer in enumerate(layers) if isinstance(layer, Dense | Conv)]


# ---------------------------------------------------------------------------------------------
# Linear maps and their transposes.


def _same_pad(conv: Conv) -> tuple[int, int]:
    if conv.padding == "VALID":
        return (0, 0)
    return (conv.kernel.shape[0] // 2, conv.kernel.shape[1] // 2)


def _pad(a: Array, conv: Conv) -> Array:
    ph, pw = _same_pad(conv)
    return np.pad(a, ((0, 0), (ph, ph), (pw, pw), (0, 0)))


def _unpad(a: Array, conv: Conv) -> Array:
    ph, pw = _same_pad(conv)
    return a[:, ph : a.shape[1] - ph, pw : a.shape[2] - pw, :]


def _offsets(kh: int, kw: int) -> list[tuple[int, int]]:
    return list(itertools.product(range(kh), range(kw)))


def patches(a: Array, kh: int, kw: int) -> Array:
    """``[B, H, W, C] -> [B, H-kh+1, W-kw+1, kh*kw*C]``; entry ``(dy, dx, c)`` of a patch is
    ``a[y + dy, x + dx, c]``, the row order of an HWIO kernel reshaped to ``[kh*kw*C, O]``."""
    oh, ow = a.shape[1] - kh + 1, a.shape[2] - kw + 1
    views = [a[:, dy : dy + oh, dx : dx + ow, :] for dy, dx in _offsets(kh, kw)]
    return np.stack(views, axis=3).reshape(*a.shape[:1], oh, ow, -1)


def patches_transpose(g: Array, shape: tuple[int, ...], kh: int, kw: int) -> Array:
    """The transpose of :func:`patches`: scatter-add each patch entry back to its pixel."""
    oh, ow = shape[1] - kh + 1, shape[2] - kw + 1
    g = g.reshape(g.shape[0], oh, ow, kh * kw, shape[3])
    out = np.zeros((g.shape[0], *shape[1:]))
    for k, (dy, dx) in enumerate(_offsets(kh, kw)):
        out[:, dy : dy + oh, dx : dx + ow, :] += g[:, :, :, k, :]
    return out


def _conv_matrix(conv: Conv) -> Array:
    return conv.kernel.reshape(-1, conv.kernel.shape[-1]).astype(np.float64)


def _windows(a: Array, size: int) -> Array:
    """``[B, H, W, C] -> [B, H/k, W/k, C, k*k]``, window entries in row-major ``(dy, dx)`` order."""
    b, h, w, c = a.shape
    a = a.reshape(b, h // size, size, w // size, size, c)
    return a.transpose(0, 1, 3, 5, 2, 4).reshape(b, h // size, w // size, c, size * size)


def _unwindows(a: Array, size: int) -> Array:
    b, oh, ow, c, _ = a.shape
    a = a.reshape(b, oh, ow, c, size, size).transpose(0, 1, 4, 2, 5, 3)
    return a.reshape(b, oh * size, ow * size, c)


def apply(layer: Layer, a: Array) -> Array:
    """One layer's output."""
    if isinstance(layer, Dense):
        return a @ layer.kernel.astype(np.float64) + layer.bias
    if isinstance(layer, Conv):
        kh, kw = layer.kernel.shape[:2]
        return patches(_pad(a, layer), kh, kw) @ _conv_matrix(layer) + layer.bias
    if isinstance(layer, Activation):
        return ACTIVATIONS[layer.name][0](a)
    if isinstance(layer, MaxPool):
        return _windows(a, layer.size).max(axis=-1)
    return a.reshape(a.shape[0], -1)


def forward(layers: Sequence[Layer], x: Array) -> list[Array]:
    """``[a_0 = x, a_1, ..., a_L]``, the input and every layer's output (float64)."""
    values = [np.asarray(x, np.float64)]
    for layer in layers:
        values.append(apply(layer, values[-1]))
    return values


# ---------------------------------------------------------------------------------------------
# Rescale (and gradient) multipliers.


def secant(dy: Array, dz: Array, derivative: Array) -> Array:
    """``dy / dz``, or ``derivative`` where ``|dz| <= SECANT_EPS``."""
    small = np.abs(dz) <= SECANT_EPS
    return np.where(small, derivative, dy / np.where(small, 1.0, dz))


def _pool_pull_back(a: Array, a_ref: Array, m_out: Array, size: int, rule: Rule) -> Array:
    """Each window's output multiplier times its scale, sent to the window's winning position."""
    x, x0 = _windows(a, size), _windows(np.broadcast_to(a_ref, a.shape), size)
    if rule == "gradient":
        winner, scale = np.argmax(x, axis=-1), np.ones(m_out.shape)
    else:
        winner = np.argmax(np.maximum(x, x0), axis=-1)  # np.argmax takes the first maximum
        delta_in = np.take_along_axis(x - x0, winner[..., None], axis=-1)[..., 0]
        delta_out = x.max(axis=-1) - x0.max(axis=-1)
        zero = delta_in == 0
        scale = np.where(zero, 1.0, delta_out / np.where(zero, 1.0, delta_in))
    routed = np.zeros(x.shape)
    np.put_along_axis(routed, winner[..., None], (m_out * scale)[..., None], axis=-1)
    return _unwindows(routed, size)


def pull_back(layer: Layer, a: Array, a_ref: Array, m_out: Array, rule: Rule) -> Array:
    """The multiplier of a layer's input ``a`` from the multiplier ``m_out`` of its output."""
    if isinstance(layer, Dense):
        return m_out @ layer.kernel.astype(np.float64).T
    if isinstance(layer, Conv):
        kh, kw = layer.kernel.shape[:2]
        g = m_out @ _conv_matrix(layer).T
        return _unpad(patches_transpose(g, _pad(a, layer).shape, kh, kw), layer)
    if isinstance(layer, Activation):
        f, derivative = ACTIVATIONS[layer.name]
        if rule == "gradient":
            return m_out * derivative(a)
        return m_out * secant(f(a) - f(a_ref), a - a_ref, derivative(a))
    if isinstance(layer, MaxPool):
        return _pool_pull_back(a, a_ref, m_out, layer.size, rule)
    return m_out.reshape(a.shape)


class Explained(NamedTuple):
    values: list[Array]  # a_0 = x, a_1, ..., a_L
    ref_values: list[Array]
    multipliers: list[Array]  # multiplier of each a_l for the target


def explain(
    layers: Sequence[Layer], x: Array, ref: Array, cotangent: Array, rule: Rule = "rescale"
) -> Explained:
    """Forward on both sides, then multipliers from ``m_L = cotangent`` back to the input."""
    values, ref_values = forward(layers, x), forward(layers, ref)
    multipliers = [np.asarray(cotangent, np.float64)]
    for layer, a, a_ref in zip(layers[::-1], values[-2::-1], ref_values[-2::-1], strict=True):
        multipliers.insert(0, pull_back(layer, a, a_ref, multipliers[0], rule))
    return Explained(values, ref_values, multipliers)


def attributions(
    layers: Sequence[Layer], x: Array, ref: Array, cotangent: Array, rule: Rule = "rescale"
) -> Array:
    """Input contributions ``(x - ref) * m_x``."""
    explained = explain(layers, x, ref, cotangent, rule)
    return (explained.values[0] - explained.ref_values[0]) * explained.multipliers[0]


def unit_contributions(explained: Explained, index: int) -> Array:
    """Contributions ``(h - h_ref) * m_h`` of the output ``h`` of ``layers[index]``."""
    out, out_ref = explained.values[index + 1], explained.ref_values[index + 1]
    return (out - out_ref) * explained.multipliers[index + 1]


def weight_contributions(layer: Dense | Conv, explained: Explained, index: int) -> Array:
    """Per example ``C(W_ij) = da_i * W_ij * m_j`` (for conv summed over output positions),
    ``[B, *kernel.shape]``, where ``da`` is the delta of the layer's input and ``m`` the multiplier
    of its output."""
    da = explained.values[index] - explained.ref_values[index]
    m = explained.multipliers[index + 1]
    kernel = layer.kernel.astype(np.float64)
    if isinstance(layer, Dense):
        return da[:, :, None] * kernel[None] * m[:, None, :]
    kh, kw = kernel.shape[:2]
    da_patches = patches(_pad(da, layer), kh, kw)  # the padding has no delta
    summed = np.einsum("bhwk,bhwo->bko", da_patches, m)
    return (summed * _conv_matrix(layer)[None]).reshape(da.shape[0], *kernel.shape)


# ---------------------------------------------------------------------------------------------
# RevealCancel on dense networks.


def _reveal_cancel_slopes(
    z: Array, z0: Array, dz_pos: Array, dz_neg: Array, activation: str
) -> tuple[Array, Array]:
    """``(m+, m-)`` of the paper's RevealCancel equations (module docstring)."""
    f, derivative = ACTIVATIONS[activation]
    dy_pos = 0.5 * (f(z0 + dz_pos) - f(z0)) + 0.5 * (f(z0 + dz_neg + dz_pos) - f(z0 + dz_neg))
    dy_neg = 0.5 * (f(z0 + dz_neg) - f(z0)) + 0.5 * (f(z0 + dz_pos + dz_neg) - f(z0 + dz_pos))
    return secant(dy_pos, dz_pos, derivative(z)), secant(dy_neg, dz_neg, derivative(z))


def _term_multipliers(terms: Array, m_pos: Array, m_neg: Array, zero_delta: ZeroDeltaRule) -> Array:
    """``[B, in, out]``: the multiplier each term ``W_ij * da_i`` passes back: ``M+_j`` if it is
    positive, ``M-_j`` if negative, and for ``da_i == 0`` the mean ``(M+_j + M-_j) / 2``
    (``zero_delta="mean"``) or ``M-_j`` (``"negative"``, for showing that a test tells them
    apart). A zero term with ``da_i != 0`` has ``W_ij == 0``: what it picks is multiplied by 0."""
    m_pos, m_neg = m_pos[:, None, :], m_neg[:, None, :]
    at_zero = 0.5 * (m_pos + m_neg) if zero_delta == "mean" else m_neg
    at_zero = np.broadcast_to(at_zero, terms.shape)
    return np.where(terms > 0, m_pos, np.where(terms < 0, m_neg, at_zero))


class RevealCancelled(NamedTuple):
    contributions: Array  # input contributions (x - ref) * m_x
    layer_contributions: list[Array]  # per dense layer: dz+ * M+ + dz- * M- of its output


def reveal_cancel_mlp(
    dense: Sequence[Dense],
    x: Array,
    ref: Array,
    cotangent: Array,
    *,
    activation: str = "relu",
    zero_delta: ZeroDeltaRule = "mean",
) -> RevealCancelled:
    """RevealCancel for ``dense[0] -> f -> dense[1] -> f -> ... -> dense[-1]`` (logits)."""
    f = ACTIVATIONS[activation][0]
    a, a0 = np.asarray(x, np.float64), np.broadcast_to(np.asarray(ref, np.float64), np.shape(x))
    forward_parts = []  # per layer: (da, terms, dz+, dz-)
    slopes = []  # per hidden layer: (m+, m-) of its activation
    for index, layer in enumerate(dense):
        kernel = layer.kernel.astype(np.float64)
        da = a - a0
        terms = da[:, :, None] * kernel[None]
        dz_pos = np.where(terms > 0, terms, 0.0).sum(axis=1)
        dz_neg = np.where(terms < 0, terms, 0.0).sum(axis=1)
        forward_parts.append((da, terms, dz_pos, dz_neg))
        if index < len(dense) - 1:
            z, z0 = a @ kernel + layer.bias, a0 @ kernel + layer.bias
            slopes.append(_reveal_cancel_slopes(z, z0, dz_pos, dz_neg, activation))
            a, a0 = f(z), f(z0)
    m_pos = m_neg = np.asarray(cotangent, np.float64)
    layer_contributions = []
    for index in reversed(range(len(dense))):
        da, terms, dz_pos, dz_neg = forward_parts[index]
        layer_contributions.insert(0, dz_pos * m_pos + dz_neg * m_neg)
        chosen = _term_multipliers(terms, m_pos, m_neg, zero_delta)
        m_in = (dense[index].kernel.astype(np.float64)[None] * chosen).sum(axis=-1)
        if index > 0:
            slope_pos, slope_neg = slopes[index - 1]
            m_pos, m_neg = m_in * slope_pos, m_in * slope_neg
    return RevealCancelled(forward_parts[0][0] * m_in, layer_contributions)
