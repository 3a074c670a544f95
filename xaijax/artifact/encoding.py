"""Packed weights of a compressed model and the traceable decoding that rebuilds its variables.

An :class:`Encoded` holds the flat named arrays of the weights file and a ``decode`` function from
those arrays (as jax arrays, inside the exported program) to the model's variables:

* :func:`encode_float`: every leaf as it is (``variables/<collection>/<path>``);
* :func:`encode_shared`: each weight-shared kernel as its float32 codebook, its kept weights'
  indices packed at ``bits`` bits and, when some weights are pruned, a 1-bit keep mask; decoding
  gives ``codebook[indices]`` and exact zeros where pruned (``weight_sharing.decode``);
* :func:`encode_integer`: each quantized kernel of an integer export
  (``quantization.export_integer_model``) as its integers packed at ``bits`` bits (offset by
  ``2^(b-1) - 1``) and its float32 per-channel scales; decoding gives ``values * scales``
  (``quantization.dequantize``).

``computed_bytes`` is the stage's own size formula: 4 bytes per float value, ``bits / 8`` per
packed value, the keep mask at 1 bit per weight (``weight_sharing.size_report``,
``quantization.model_size_bytes``), plus 4 bytes per value of non-parameter collections.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from xaijax.artifact.packing import pack_unsigned, unpack_unsigned
from xaijax.quantization.export import integer_kernel, model_size_bytes
from xaijax.weight_sharing import MASKED, SharedWeights, kernel_leaves, size_report

Arrays = dict[str, np.ndarray]


class Encoded(NamedTuple):
    """Packed weights: ``arrays`` (name -> array, the weights file), ``decode(arrays) ->
    variables`` (traceable), per-layer metadata for the manifest and the computed size."""

    kind: str
    arrays: Arrays
    decode: Callable[[Mapping[str, jax.Array]], dict[str, Any]]
    layers: dict[str, dict[str, Any]]
    computed_bytes: float


def _key_name(entry: Any) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(entry, attribute):
            return str(getattr(entry, attribute))
    return str(entry)


def flatten(tree: Mapping[str, Any], prefix: str) -> Arrays:
    """``{"<prefix>/<a>/<b>": leaf}`` for every leaf of a nested dict (names must not hold '/')."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = [_key_name(entry) for entry in path]
        if any("/" in name or not name for name in names):
            raise ValueError(f"cannot name the leaf at {names}: keys must be non-empty, no '/'")
        flat["/".join([prefix, *names])] = np.asarray(leaf)
    return flat


def unflatten(arrays: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The nested dict of the arrays named ``<prefix>/...`` (inverse of :func:`flatten`)."""
    tree: dict[str, Any] = {}
    for name, value in arrays.items():
        head, _, rest = name.partition("/")
        if head != prefix:
            continue
        *parents, leaf = rest.split("/")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return tree


def _set_leaf(tree: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split("/")
    for parent in parents:
        tree = tree.setdefault(parent, {})
    tree[leaf] = value


def _without_kernels(variables: Mapping[str, Any], layers: Any) -> dict[str, Any]:
    """A copy of ``variables`` (nested dicts of numpy arrays) without the named layers' kernels."""
    copied = jax.tree.map(np.asarray, {k: v for k, v in variables.items() if k != "quantized"})
    for layer in layers:
        node = copied["params"]
        for parent in layer.split("/"):
            node = node[parent]
        node.pop("kernel", None)
    return copied


def _other_bytes(variables: Mapping[str, Any]) -> float:
    """4 bytes per value of every collection but params."""
    others = {k: v for k, v in variables.items() if k not in ("params", "quantized")}
    return 4.0 * sum(int(np.size(leaf)) for leaf in jax.tree.leaves(others))


def _check_variables(variables: Mapping[str, Any]) -> None:
    if "params" not in variables:
        raise ValueError("variables must contain 'params'")


def encode_float(variables: Mapping[str, Any]) -> Encoded:
    """Every leaf of ``variables`` stored as it is."""
    _check_variables(variables)
    arrays = flatten(dict(variables), "variables")
    computed = 4.0 * sum(int(a.size) for a in arrays.values())
    return Encoded("float", arrays, lambda a: unflatten(a, "variables"), {}, computed)


def encode_shared(variables: Mapping[str, Any], shared: SharedWeights) -> Encoded:
    """``variables`` whose kernels named in ``shared`` are ``codebook[indices]`` (MASKED -> 0)."""
    _check_variables(variables)
    kernels = kernel_leaves(variables["params"])
    arrays = flatten(_without_kernels(variables, shared), "variables")
    layers: dict[str, dict[str, Any]] = {}
    for name, layer in shared.items():
        if name not in kernels:
            raise ValueError(f"no kernel for shared layer {name!r}")
        indices = np.asarray(layer.indices)
        if indices.shape != np.shape(kernels[name]):
            raise ValueError(
                f"indices of {name!r} have shape {indices.shape}, kernel {np.shape(kernels[name])}"
            )
        keep = indices != MASKED
        bits = layer.bits
        arrays[f"shared/{name}/codebook"] = np.asarray(layer.codebook, np.float32)
        arrays[f"shared/{name}/indices"] = pack_unsigned(indices[keep], bits)
        if not keep.all():
            arrays[f"shared/{name}/keep"] = pack_unsigned(keep.astype(np.uint8), 1)
        layers[name] = {
            "encoding": "shared",
            "bits": bits,
            "shape": list(indices.shape),
            "kept": int(keep.sum()),
            "dtype": str(np.asarray(kernels[name]).dtype),
        }

    def decode(packed: Mapping[str, jax.Array]) -> dict[str, Any]:
        variables = unflatten(packed, "variables")
        for name, meta in layers.items():
            shape, count = tuple(meta["shape"]), int(np.prod(meta["shape"]))
            codebook = packed[f"shared/{name}/codebook"]
            index = unpack_unsigned(packed[f"shared/{name}/indices"], meta["bits"], meta["kept"])
            values = codebook[index]
            if meta["kept"] < count:
                keep = unpack_unsigned(packed[f"shared/{name}/keep"], 1, count) == 1
                slot = jnp.clip(jnp.cumsum(keep) - 1, 0, max(meta["kept"] - 1, 0))
                picked = values[slot] if meta["kept"] else jnp.zeros(count, codebook.dtype)
                values = jnp.where(keep, picked, 0.0)
            kernel = values.reshape(shape).astype(meta["dtype"])
            _set_leaf(variables["params"], f"{name}/kernel", kernel)
        return variables

    computed = size_report(variables["params"], shared).total_bits / 8 + _other_bytes(variables)
    return Encoded("shared", arrays, decode, layers, computed)


def encode_integer(exported: Mapping[str, Any]) -> Encoded:
    """An integer export (``quantization.export_integer_model``, packed or not)."""
    if "quantized" not in exported or "params" not in exported:
        raise ValueError("not an exported integer model: needs 'params' and 'quantized'")
    arrays = flatten(_without_kernels(exported, ()), "variables")
    layers: dict[str, dict[str, Any]] = {}
    params = jax.tree.map(np.asarray, dict(exported["params"]))
    for name, entry in exported["quantized"].items():
        bits = int(np.asarray(entry["bits"]))
        values = integer_kernel(entry).astype(np.int16)
        bound = 2 ** (bits - 1) - 1
        arrays[f"integer/{name}/values"] = pack_unsigned(values + bound, bits)
        arrays[f"integer/{name}/scales"] = np.asarray(entry["scales"], np.float32)
        layers[name] = {"encoding": "integer", "bits": bits, "shape": list(values.shape)}
        _set_leaf(params, f"{name}/kernel", np.zeros(values.shape, np.float32))  # For sizes.

    def decode(packed: Mapping[str, jax.Array]) -> dict[str, Any]:
        variables = unflatten(packed, "variables")
        for name, meta in layers.items():
            shape, bits = tuple(meta["shape"]), meta["bits"]
            offset = unpack_unsigned(packed[f"integer/{name}/values"], bits, int(np.prod(shape)))
            values = (offset - (2 ** (bits - 1) - 1)).reshape(shape).astype(jnp.float32)
            _set_leaf(
                variables["params"], f"{name}/kernel", values * packed[f"integer/{name}/scales"]
            )
        return variables

    bits = {name: meta["bits"] for name, meta in layers.items()}
    computed = model_size_bytes(params, bits)["total"] + _other_bytes(exported)
    return Encoded("integer", arrays, decode, layers, computed)
