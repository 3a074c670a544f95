"""Integer export: kernels as integers plus per-channel float32 scales, saved with orbax.

The exported tree (numpy arrays) is::

    {"params": <float params without the quantized kernels>, ["batch_stats": ...,]
     "quantized": {layer: {"bits": int32[], "scales": float32[out],
                           # pack=False:
                           "values": int8[*kernel.shape],
                           # pack=True instead:
                           "packed": uint8[ceil(n * bits / 8)], "shape": int32[ndim]}}}

Layers are named by module path (``"Block_0/Conv_1"``): the key of their entry in
``quantized``, and the place of their variables in the nested ``params``.
``pack=True`` stores each integer in ``bits`` bits (offset to ``q + 2^(b-1) - 1 >= 0``,
little-endian bit order), so the file size follows the allocation. :func:`dequantize` rebuilds
float variables with ``kernel = values * scales``; applied to the float model they reproduce the
fake-quantized model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from xaijax import paths
from xaijax.checkpoint import load_variables, save_variables
from xaijax.models.common import layer_variables
from xaijax.quantization.numerics import check_bits, quant_bound, quantize_kernel


def _find(params: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    """The variables of layer ``name`` (a module path) in nested ``params``, or None."""
    try:
        return layer_variables(params, name)
    except ValueError:
        return None


def _set_layer(tree: dict[str, Any], name: str, value: Any) -> None:
    """Set layer ``name`` of ``tree`` to ``value`` in place, copying the modules on its path (so
    the tree ``tree`` was copied from is not changed)."""
    *parents, last = [name] if name in tree else name.split("/")
    node = tree
    for key in parents:
        node[key] = dict(node.get(key, {}))
        node = node[key]
    node[last] = value


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Store integers in ``[-(2^(b-1)-1), 2^(b-1)-1]`` at ``bits`` bits each (a uint8 stream)."""
    bits = check_bits(bits, "pack_bits")
    bound = quant_bound(bits)
    values = np.asarray(values).ravel()
    if values.size and (values.min() < -bound or values.max() > bound):
        raise ValueError(f"values outside [-{bound}, {bound}] cannot be packed at {bits} bits")
    offset = (values.astype(np.int16) + bound).astype(np.uint8)
    planes = np.unpackbits(offset[:, None], axis=1, bitorder="little")[:, :bits]
    return np.packbits(planes.ravel(), bitorder="little")


def unpack_bits(packed: np.ndarray, bits: int, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`pack_bits`: int8 values of ``shape``."""
    bits = check_bits(bits, "unpack_bits")
    count = int(np.prod(shape))
    if packed.size * 8 < count * bits:
        raise ValueError(
            f"{packed.size} packed bytes hold fewer than {count} values of {bits} bits"
        )
    planes = np.unpackbits(np.asarray(packed, np.uint8), count=count * bits, bitorder="little")
    weights = (1 << np.arange(bits)).astype(np.int16)
    offset = planes.reshape(count, bits).astype(np.int16) @ weights
    return (offset - quant_bound(bits)).astype(np.int8).reshape(shape)


def export_integer_model(
    variables: Mapping[str, Any], bits_per_layer: Mapping[str, int], *, pack: bool = False
) -> dict[str, Any]:
    """The exported tree (module docstring) of ``variables`` quantized at ``bits_per_layer``."""
    if "params" not in variables:
        raise ValueError("variables must contain 'params'")
    params = dict(variables["params"])
    missing = sorted(name for name in bits_per_layer if _find(params, name) is None)
    if missing:
        raise ValueError(f"bits_per_layer names layers {missing} absent from params")
    quantized: dict[str, Any] = {}
    for name, bits in bits_per_layer.items():
        bits = check_bits(bits, f"layer {name!r}")
        layer = dict(layer_variables(params, name))
        kernel = layer.pop("kernel")
        values, scales = jax.device_get(quantize_kernel(kernel, bits))
        entry = {"bits": np.int32(bits), "scales": np.asarray(scales, np.float32)}
        if pack:
            entry["packed"] = pack_bits(values, bits)
            entry["shape"] = np.asarray(kernel.shape, np.int32)
        else:
            entry["values"] = np.asarray(values, np.int8)
        quantized[name] = entry
        _set_layer(params, name, layer)
    exported = {key: jax.device_get(value) for key, value in variables.items() if key != "params"}
    exported["params"] = jax.device_get(params)
    exported["quantized"] = quantized
    return exported


def integer_kernel(entry: Mapping[str, Any]) -> np.ndarray:
    """The int8 kernel of one exported layer (unpacked if needed)."""
    bits = int(np.asarray(entry["bits"]))
    if "values" in entry:
        return np.asarray(entry["values"], np.int8)
    return unpack_bits(entry["packed"], bits, tuple(int(d) for d in np.asarray(entry["shape"])))


def dequantize(exported: Mapping[str, Any]) -> dict[str, Any]:
    """Float variables with each quantized kernel rebuilt as ``values * scales`` per channel."""
    if "quantized" not in exported or "params" not in exported:
        raise ValueError("not an exported integer model: needs 'params' and 'quantized'")
    params = dict(exported["params"])
    for name, entry in exported["quantized"].items():
        scales = np.asarray(entry["scales"], np.float32)
        layer = dict(_find(params, name) or {})
        layer["kernel"] = integer_kernel(entry).astype(np.float32) * scales
        _set_layer(params, name, layer)
    variables = {key: value for key, value in exported.items() if key != "quantized"}
    variables["params"] = params
    return variables


def directory_size(path: str | os.PathLike) -> int:
    """Bytes of all files under the directory ``path`` (local or ``gs://``)."""
    return sum(paths.size(file) for file in paths.files_under(path))


def save_integer_model(path: str | os.PathLike, exported: Mapping[str, Any]) -> int:
    """Save the exported tree with orbax at ``path`` (replacing it; local or ``gs://``, as
    :func:`xaijax.checkpoint.save_variables`); returns its size on disk."""
    save_variables(path, dict(exported))
    return directory_size(path)


def load_integer_model(path: str | os.PathLike) -> dict[str, Any]:
    """The exported tree saved by :func:`save_integer_model` (numpy arrays)."""
    return load_variables(path)


def model_size_bytes(
    params: Mapping[str, Any], bits_per_layer: Mapping[str, int]
) -> dict[str, float]:
    """Storage of the quantized model in bytes: packed kernels, float32 scales and other params.

    ``kernels = sum_l n_l * b_l / 8``; ``scales = 4 * sum_l out_l``; ``float_params = 4 *`` every
    parameter that is not a quantized kernel; ``float32_model = 4 *`` all parameters.
    """
    kernels = scales = 0.0
    total_params = sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree.leaves(params))
    quantized_params = 0
    for name, bits in bits_per_layer.items():
        shape = np.shape(layer_variables(params, name)["kernel"])
        kernels += int(np.prod(shape)) * check_bits(bits, f"layer {name!r}") / 8
        scales += 4 * shape[-1]
        quantized_params += int(np.prod(shape))
    float_params = 4.0 * (total_params - quantized_params)
    return {
        "kernels": kernels,
        "scales": scales,
        "float_params": float_params,
        "total": kernels + scales + float_params,
        "float32_model": 4.0 * total_params,
    }
