"""Plain-numpy LRP, written layer by layer with explicit relevance messages.

A test oracle: it shares no code with ``xaijax.lrp`` and computes in float64. Networks are the
layer lists of ``deeplift_oracle`` (Dense, Conv with HWIO kernels and VALID/SAME padding, ReLU or
tanh, non-overlapping max pooling, Flatten). For a Dense or Conv layer every product
``a_i * w_ij`` is materialised (for a convolution per output position, from the input patches),
the rule's shares ``zeta[i, j]`` and denominators ``d[j]`` are formed from them, and the messages
``M[i, j] = sum_k c_k * zeta_k[i, j] / d_k[j] * R_j`` (0 where ``d_k[j] = 0``) are summed over
``j`` for the input relevances and over positions for the weight relevances. Rules are given as
``("epsilon", eps)``, ``("zplus",)`` or ``("alpha_beta", alpha, beta)`` per layer kind.

The absorbed relevance of a layer is computed from its own formula,
``A_j = sum_k c_k * (bias_k[j] + stabiliser_k[j]) / d_k[j] * R_j`` (plus ``c_k * R_j`` where
``d_k[j] = 0``), not as a difference of totals. Activations pass relevance unchanged; max pooling
passes each window's relevance to its first maximum; Flatten reshapes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import deeplift_oracle as dl
import numpy as np

Array = np.ndarray
OracleRule = tuple


def _parts(rule: OracleRule, products: Array, a_w_pos: Array, bias: Array, z: Array):
    """``[(c_k, zeta_k, bias_k, stabiliser_k)]`` for products ``[..., I, O]``; ``a_w_pos`` is
    ``a_i * w_ij+`` (z+ only)."""
    zeros = np.zeros_like(z)
    if rule[0] == "epsilon":
        sign = np.where(z >= 0, 1.0, -1.0)
        return [(1.0, products, bias + zeros, rule[1] * sign)]
    if rule[0] == "zplus":
        return [(1.0, a_w_pos, np.maximum(bias, 0) + zeros, zeros)]
    _, alpha, beta = rule
    return [
        (alpha, np.maximum(products, 0), np.maximum(bias, 0) + zeros, zeros),
        (-beta, np.minimum(products, 0), np.minimum(bias, 0) + zeros, zeros),
    ]


class LayerResult(NamedTuple):
    relevance_in: Array  # [B, I...] after the rule
    weights: Array  # [B, *kernel.shape]: messages summed over positions
    absorbed: Array  # [B]: the layer's absorbed relevance


def _linear_lrp(rule: OracleRule, a: Array, kernel: Array, bias: Array, r_out: Array):
    """LRP through ``z = a @ kernel + bias`` with ``a [..., I]``, ``kernel [I, O]``; returns the
    messages ``[..., I, O]`` and the absorbed relevance ``[..., O]``."""
    products = a[..., :, None] * kernel
    a_w_pos = a[..., :, None] * np.maximum(kernel, 0)
    z = products.sum(axis=-2) + bias
    messages = np.zeros_like(products)
    absorbed = np.zeros_like(z)
    for c, zeta, bias_k, stabiliser in _parts(rule, products, a_w_pos, bias, z):
        d = zeta.sum(axis=-2) + bias_k + stabiliser
        nonzero = d != 0
        per_unit = np.where(nonzero, r_out / np.where(nonzero, d, 1.0), 0.0)
        messages += c * zeta * per_unit[..., None, :]
        absorbed += c * np.where(nonzero, (bias_k + stabiliser) * per_unit, r_out)
    return messages, absorbed


def dense_lrp(layer: dl.Dense, rule: OracleRule, a: Array, r_out: Array) -> LayerResult:
    messages, absorbed = _linear_lrp(rule, a, layer.kernel, layer.bias, r_out)
    return LayerResult(messages.sum(axis=-1), messages, absorbed.sum(axis=-1))


def conv_lrp(layer: dl.Conv, rule: OracleRule, a: Array, r_out: Array) -> LayerResult:
    kh, kw, c_in, c_out = layer.kernel.shape
    ph, pw = (kh // 2, kw // 2) if layer.padding == "SAME" else (0, 0)
    padded = np.pad(a, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    patches = dl.patches(padded, kh, kw)  # [B, H', W', kh*kw*C]
    kernel = layer.kernel.reshape(-1, c_out)
    messages, absorbed = _linear_lrp(rule, patches, kernel, layer.bias, r_out)
    r_padded = dl.patches_transpose(messages.sum(axis=-1), padded.shape, kh, kw)
    r_in = r_padded[:, ph : ph + a.shape[1], pw : pw + a.shape[2], :]
    weights = messages.sum(axis=(1, 2)).reshape(-1, kh, kw, c_in, c_out)
    return LayerResult(r_in, weights, absorbed.sum(axis=(1, 2, 3)))


def max_pool_lrp(size: int, a: Array, r_out: Array) -> Array:
    """Each window's relevance goes to its first maximum (row-major)."""
    r_in = np.zeros_like(a)
    b, h, w, c = a.shape
    for n, y, x, ch in np.ndindex(b, h // size, w // size, c):
        window = a[n, y * size : (y + 1) * size, x * size : (x + 1) * size, ch]
        dy, dx = np.unravel_index(np.argmax(window), window.shape)
        r_in[n, y * size + dy, x * size + dx, ch] = r_out[n, y, x, ch]
    return r_in


class Explained(NamedTuple):
    values: list[Array]  # a_0 = x, ..., a_L (float64)
    relevances: list[Array]  # the relevance of each value
    weights: dict[int, Array]  # layer index -> [B, *kernel.shape]
    absorbed: dict[int, Array]  # layer index -> [B]


def explain(
    layers: Sequence[dl.Layer], x: Array, one_hot: Array, rules: Mapping[str, OracleRule]
) -> Explained:
    """LRP of the target logit (``one_hot`` selects it) through ``layers``; ``rules`` maps
    ``"dense"``/``"conv"`` to a rule."""
    values = dl.forward(layers, x)
    relevances: list[Array] = [None] * len(values)
    relevances[-1] = values[-1] * one_hot
    weights, absorbed = {}, {}
    for index in range(len(layers) - 1, -1, -1):
        layer, a, r_out = layers[index], values[index], relevances[index + 1]
        if isinstance(layer, dl.Dense | dl.Conv):
            kind = "dense" if isinstance(layer, dl.Dense) else "conv"
            lrp = dense_lrp if kind == "dense" else conv_lrp
            result = lrp(layer, rules[kind], a, r_out)
            relevances[index] = result.relevance_in
            weights[index], absorbed[index] = result.weights, result.absorbed
        elif isinstance(layer, dl.Activation):
            relevances[index] = r_out
        elif isinstance(layer, dl.MaxPool):
            relevances[index] = max_pool_lrp(layer.size, a, r_out)
        else:
            relevances[index] = r_out.reshape(a.shape)
    return Explained(values, relevances, weights, absorbed)


def oracle_rules(rules: Mapping[str, object]) -> dict[str, OracleRule]:
    """The oracle's tuples from ``xaijax.lrp.Rule`` objects (their documented fields only)."""
    out = {}
    for kind, rule in rules.items():
        if rule.name == "epsilon":
            out[kind] = ("epsilon", rule.epsilon)
        elif rule.name == "zplus":
            out[kind] = ("zplus",)
        else:
            out[kind] = ("alpha_beta", rule.alpha, rule.beta)
    return out
