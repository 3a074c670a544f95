"""Sensitivity of the model to quantizing each layer at each width, for the exact allocator.

With ``delta_b = w - fake_quantize(w, b)`` the weight error of a layer at ``b`` bits:

* DeepLIFT (``deeplift_sensitivity``): ``s_l(b) = sum_i M_i |delta_b,i|`` where ``M_i`` is the
  mean over examples of the magnitude of weight ``i``'s effective DeepLIFT multiplier, the
  first-order change of the explained output per unit change of the weight. ``xaijax.importance``
  scores a weight ``S_i = mean_n |C_n(w_i)|`` with ``C_n(w_i) = w_i * m_n,i`` (the multiplier summed
  over positions for a conv), so ``M_i = S_i / |w_i|`` exactly and
  ``M_i |delta_i| = S_i |delta_i| / |w_i|``. That ratio ``|delta_i| / |w_i|`` is at most 1 (a
  weight below half a step rounds to 0, so ``delta_i = w_i``; otherwise
  ``|delta_i| <= scale / 2 <= |w_i|``), and zero weights are quantized exactly.
* Hessian (``hessian_sensitivity``, HAWQ-v2): ``s_l(b) = Tr(H_l) / n_l * ||delta_b||^2`` with
  ``Tr(H_l)`` the trace of the loss Hessian block of the layer's kernel, estimated by Hutchinson's
  method (``hutchinson_traces``), negative estimates clipped to 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from xaijax.models.common import layer_variables
from xaijax.quantization.numerics import SUPPORTED_BITS, check_bits, fake_quantize

SensitivityTable = dict[str, dict[int, float]]


def layer_kernel(params: Mapping[str, Any], name: str) -> Any:
    """The kernel of layer ``name`` (a module path, ``"Block_0/Conv_1"``) in nested ``params``,
    as stored; ``ValueError`` naming the layer when it has none."""
    try:
        layer = layer_variables(params, name)
    except ValueError:
        layer = {}
    if "kernel" not in layer:
        raise ValueError(f"params has no kernel for layer {name!r}")
    return layer["kernel"]


def _kernel(params: Mapping[str, Any], name: str) -> jax.Array:
    return jnp.asarray(layer_kernel(params, name))


def layer_sizes(params: Mapping[str, Any], names: Sequence[str]) -> dict[str, int]:
    """Number of kernel weights of each named layer."""
    return {name: int(np.prod(_kernel(params, name).shape)) for name in names}


def quantization_errors(
    kernel: jax.Array, bit_choices: Sequence[int] = SUPPORTED_BITS
) -> dict[int, jax.Array]:
    """``{b: w - fake_quantize(w, b)}`` for each width."""
    return {
        int(b): kernel - fake_quantize(kernel, check_bits(b, "bit_choices")) for b in bit_choices
    }


def layer_importance(weight_importance: Mapping[str, Any]) -> dict[str, float]:
    """DeepLIFT importance per weight of each layer: the mean of its kernel's weight scores."""
    return {name: float(jnp.mean(tree["kernel"])) for name, tree in weight_importance.items()}


def deeplift_sensitivity(
    params: Mapping[str, Any],
    weight_importance: Mapping[str, Any],
    bit_choices: Sequence[int] = SUPPORTED_BITS,
) -> SensitivityTable:
    """``s_l(b) = sum_i S_i |delta_b,i| / |w_i|`` from weight-level DeepLIFT scores ``S``."""
    table = {}
    for name, tree in weight_importance.items():
        kernel = _kernel(params, name)
        scores = jnp.asarray(tree["kernel"])
        chex.assert_equal_shape([scores, kernel])
        magnitude = jnp.abs(kernel)
        safe = jnp.where(magnitude > 0, magnitude, 1.0)
        table[name] = {
            b: float(jnp.sum(jnp.where(magnitude > 0, scores * jnp.abs(delta) / safe, 0.0)))
            for b, delta in quantization_errors(kernel, bit_choices).items()
        }
    return table


def hutchinson_traces(
    loss_fn: Callable[[Any], jax.Array],
    params: Mapping[str, Any],
    names: Sequence[str],
    rng: jax.Array,
    num_samples: int = 16,
) -> dict[str, float]:
    """Hutchinson estimates ``Tr(H_l) ~= mean_k v_l^T (H v)_l`` of each kernel's Hessian block.

    ``v`` is Rademacher on every named kernel (layers by module path in nested ``params``) and
    zero elsewhere; ``E[v_l^T (H v)_l] = Tr(H_ll)`` since the cross terms have zero mean.
    ``H v`` is a forward-over-reverse product of ``loss_fn``.
    """
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    for name in names:
        _kernel(params, name)
    grad_fn = jax.grad(loss_fn)

    def probe(params: Mapping[str, Any], key: jax.Array) -> dict[str, jax.Array]:
        keys = dict(zip(names, jax.random.split(key, len(names)), strict=True))

        def direction(path, leaf):
            layer = "/".join(str(entry.key) for entry in path[:-1])  # its module path
            if layer in keys and path[-1].key == "kernel":
                return jax.random.rademacher(keys[layer], leaf.shape, leaf.dtype)
            return jnp.zeros_like(leaf)

        v = jax.tree_util.tree_map_with_path(direction, params)
        _, hv = jax.jvp(grad_fn, (params,), (v,))
        return {name: jnp.vdot(_kernel(v, name), _kernel(hv, name)) for name in names}

    # params travel as arguments: closed over, XLA would constant-fold the whole forward pass.
    # One compiled probe called per sample: inside ``lax.map`` (a while loop) XLA:CPU ran the
    # small VGG's product 50x slower (57 s against 1.2 s a probe, 1,024 examples).
    one_probe = jax.jit(probe)
    params = dict(params)
    samples = [one_probe(params, key) for key in jax.random.split(rng, num_samples)]
    return {name: float(jnp.mean(jnp.stack([s[name] for s in samples]))) for name in names}


def hessian_sensitivity(
    params: Mapping[str, Any],
    traces: Mapping[str, float],
    bit_choices: Sequence[int] = SUPPORTED_BITS,
) -> SensitivityTable:
    """``s_l(b) = max(Tr(H_l), 0) / n_l * ||delta_b||^2`` (HAWQ-v2)."""
    table = {}
    for name, trace in traces.items():
        kernel = _kernel(params, name)
        weight = max(float(trace), 0.0) / kernel.size
        table[name] = {
            b: weight * float(jnp.sum(delta**2))
            for b, delta in quantization_errors(kernel, bit_choices).items()
        }
    return table
