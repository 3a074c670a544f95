"""DeepLIFT input-attribution maps of a test set, streamed in batches, and their agreement.

A map is ``sum_c C[h, w, c]``: the DeepLIFT contributions (``xaijax.deeplift.attribute``) of
one image's pixels to the logit of its *true label*, summed over channels, against one shared
reference (all zeros unless given), so two models are always explained for the same output
from the same starting point. One jitted function per (model, rule) serves every variables of
that architecture (a dense model and its masked copies, two seeds' dense models; a model with
unhashable fields gets its own); the last batch is padded to the batch size, so a test set
compiles once per model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xaijax import data, deeplift
from xaijax.consistency import metrics


def _build_map_function(model: nn.Module, rule: str) -> Callable[..., jax.Array]:
    @jax.jit
    def maps(variables: Any, images: jax.Array, labels: jax.Array, reference: jax.Array):
        apply = lambda x: model.apply(variables, x, train=False)
        contributions = deeplift.attribute(apply, images, reference, target=labels, rule=rule)
        return contributions.sum(axis=-1)

    return maps


_cached_map_function = functools.lru_cache(maxsize=32)(_build_map_function)


def _map_function(model: nn.Module, rule: str) -> Callable[..., jax.Array]:
    """The jitted map function of ``model``, shared by equal models; a model with unhashable
    fields (e.g. the ``widths`` dict of a shrunk model) gets its own."""
    try:
        return _cached_map_function(model, rule)
    except TypeError:
        return _build_map_function(model, rule)


def _examples(dataset: data.Dataset, num_examples: int | None) -> data.Dataset:
    total = dataset.num_examples
    if num_examples is None:
        return dataset
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1:
        raise ValueError(f"num_examples must be an integer >= 1 or None, got {num_examples!r}")
    return data.Dataset(dataset.images[: min(num_examples, total)], dataset.labels[:num_examples])


def pixel_maps(
    model: nn.Module,
    variables: Mapping[str, Any],
    dataset: data.Dataset,
    *,
    batch_size: int = 256,
    num_examples: int | None = None,
    reference: Any = None,
    rule: str = "rescale",
) -> np.ndarray:
    """Channel-summed DeepLIFT maps ``[N, H, W]`` (float32) of the first ``num_examples``
    (default: all) images of ``dataset`` for their labels, against ``reference`` (one image
    ``[H, W, C]``; None: zeros)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if rule not in deeplift.RULES:
        raise ValueError(f"unknown DeepLIFT rule {rule!r}; choose one of {deeplift.RULES}")
    dataset = _examples(dataset, num_examples)
    images = np.asarray(dataset.images, np.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be NHWC [N, H, W, C], got shape {images.shape}")
    shape = images.shape[1:]
    reference = np.zeros(shape, np.float32) if reference is None else np.asarray(reference)
    if reference.shape != shape:
        raise ValueError(f"reference must be one image {shape}, got shape {reference.shape}")
    total = images.shape[0]
    batch = min(batch_size, total)
    function = _map_function(model, rule)
    out = []
    for start in range(0, total, batch):
        x = images[start : start + batch]
        y = np.asarray(dataset.labels[start : start + batch], np.int32)
        pad = batch - x.shape[0]
        if pad:
            x = np.concatenate([x, np.zeros((pad, *shape), x.dtype)])
            y = np.concatenate([y, np.zeros(pad, y.dtype)])
        found = function(variables, jnp.asarray(x), jnp.asarray(y), jnp.asarray(reference))
        out.append(np.asarray(jax.device_get(found))[: batch - pad])
    return np.concatenate(out)


def compare_maps(
    reference_maps: np.ndarray,
    maps: np.ndarray,
    labels: Any,
    fraction: float = metrics.DEFAULT_FRACTION,
) -> dict[str, Any]:
    """:func:`metrics.summarize` of :func:`metrics.agreement` of two models' maps of the same
    examples (``labels``: their true labels), with the ``top_fraction`` used."""
    labels = np.asarray(labels)[: len(maps)]
    summary = metrics.summarize(metrics.agreement(reference_maps, maps, fraction), labels)
    return {**summary, "top_fraction": float(fraction)}


def compare_models(
    reference: tuple[nn.Module, Mapping[str, Any]],
    other: tuple[nn.Module, Mapping[str, Any]],
    dataset: data.Dataset,
    *,
    fraction: float = metrics.DEFAULT_FRACTION,
    **map_options: Any,
) -> dict[str, Any]:
    """Agreement of the maps of two ``(model, variables)`` on ``dataset``
    (``map_options``: those of :func:`pixel_maps`)."""
    maps_a = pixel_maps(*reference, dataset, **map_options)
    maps_b = pixel_maps(*other, dataset, **map_options)
    return compare_maps(maps_a, maps_b, dataset.labels, fraction)
