"""The scoring engine: :func:`score` streams a criterion over the data, sharded over a mesh.

A data-free criterion is called once. A data-driven one streams over the first ``num_examples``
examples ``N`` in jit-compiled batches of ``batch_size`` rounded up to a multiple of the device
count (:func:`host_batches`; the last batch is padded and its padding weighted 0), so memory is
bounded by the batch. Each batch is sharded over the devices (and processes) of a mesh; the score
of a batch is the weighted sum of its per-example scores, ``sum_n w_n S_n`` with ``w_n`` in
``{0, 1}`` (:func:`weighted_batch_sum`), reduced across devices by XLA; :func:`score` adds the
batch sums and divides by ``N`` at the end: ``S = (1 / N) sum_n S_n``. The compiled step is cached
per model and options (:func:`batch_sum_step`). :func:`score_batch` is the unjitted sum over one
batch (no division).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from xaijax import data as datasets
from xaijax import sharding
from xaijax.importance.criterion import GRANULARITIES, Criterion, Granularity, Scores, Variables
from xaijax.importance.references import REFERENCES, gaussian_blur, shared_references
from xaijax.importance.registry import get_criterion
from xaijax.importance.targets import TARGETS, per_example_scores


def weighted_batch_sum(per_example: Scores, weights: jax.Array) -> Scores:
    """``sum_n weights[n] * scores[n]`` for every leaf."""
    return jax.tree.map(lambda s: jnp.tensordot(weights, s, axes=1), per_example)


def _check_options(
    criterion: Criterion,
    granularity: str,
    target: str,
    reference: str,
    num_references: int,
    blur_sigma: float,
) -> None:
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if not criterion.uses_data:
        return
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
    if criterion.fixed_reference is not None and reference != criterion.fixed_reference:
        raise ValueError(
            f"criterion {criterion.name!r} uses reference {criterion.fixed_reference!r}, "
            f"got {reference!r}"
        )
    if reference == "samples" and (not isinstance(num_references, int) or num_references < 1):
        raise ValueError(f"num_references must be a positive integer, got {num_references!r}")
    if reference == "blur" and not blur_sigma > 0:
        raise ValueError(f"blur_sigma must be positive, got {blur_sigma!r}")


def as_arrays(data: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(images float32 [N, H, W, C], labels int32 [N])`` from a Dataset or an ``(images, labels)``
    pair."""
    if hasattr(data, "images") and hasattr(data, "labels"):
        images, labels = data.images, data.labels
    elif isinstance(data, tuple | list) and len(data) == 2:
        images, labels = data
    else:
        raise TypeError(
            f"data must be a Dataset or an (images, labels) pair, got {type(data).__name__}"
        )
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 4 or not np.issubdtype(images.dtype, np.floating):
        raise ValueError(
            f"images must be float [N, H, W, C], got {images.dtype} of shape {images.shape}"
        )
    if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be integer [N] with N = {images.shape[0]}, got {labels.dtype} "
            f"of shape {labels.shape}"
        )
    return images.astype(np.float32, copy=False), labels.astype(np.int32, copy=False)


def score_batch(
    criterion: str,
    model: nn.Module,
    variables: Variables,
    images: jax.Array,
    labels: jax.Array,
    *,
    references: jax.Array | None = None,
    granularity: Granularity = "unit",
    target: str = "label",
    rule: str = "rescale",
    blur_sigma: float = 2.0,
) -> Scores:
    """Sum over a batch of per-example scores of a data-driven criterion (not divided by ``B``).

    ``references``: ``[K, H, W, C]`` shared by every example or ``[K, B, H, W, C]`` per example
    (default: one zero image); the contributions are averaged over the ``K`` references.
    """
    crit = get_criterion(criterion)
    if not crit.uses_data:
        raise ValueError(f"criterion {criterion!r} does not use data; call score() instead")
    _check_options(crit, granularity, target, crit.default_reference, 1, blur_sigma)
    images = jnp.asarray(images, jnp.float32)
    if references is None:
        references = jnp.zeros((1, 1, *images.shape[1:]), jnp.float32)
    else:
        references = jnp.asarray(references, jnp.float32)
        if references.ndim == 4:
            references = references[:, None]
        if references.ndim != 5 or references.shape[-3:] != images.shape[-3:]:
            raise ValueError(
                f"references must be [K, H, W, C] or [K, B, H, W, C] matching images "
                f"{images.shape}, got {references.shape}"
            )
    per_example = per_example_scores(
        crit,
        model,
        variables,
        images,
        jnp.asarray(labels),
        references,
        granularity=granularity,
        target=target,
        rule=rule,
    )
    return jax.tree.map(lambda s: s.sum(axis=0), per_example)


def _batch_sum_step(
    criterion: str, model: nn.Module, granularity: str, target: str, rule: str, blur_sigma: float
) -> Callable[..., Scores]:
    crit = get_criterion(criterion)

    def step(variables, images, labels, weights, shared_references):
        if shared_references is None:
            references = gaussian_blur(images, blur_sigma)[None]
        else:
            references = shared_references[:, None]
        per_example = per_example_scores(
            crit,
            model,
            variables,
            images,
            labels,
            references,
            granularity=granularity,
            target=target,
            rule=rule,
        )
        return weighted_batch_sum(per_example, weights)

    return jax.jit(step)


_cached_batch_sum_step = functools.lru_cache(maxsize=32)(_batch_sum_step)


def batch_sum_step(
    criterion: str, model: nn.Module, granularity: str, target: str, rule: str, blur_sigma: float
) -> Callable[..., Scores]:
    """Jit-compiled ``(variables, images, labels, weights, shared_references) -> sum_n weights[n] *
    scores_n``; ``shared_references`` is ``[K, H, W, C]``, or None for blurred inputs. Cached per
    model and options (when the model is hashable), so repeated :func:`score` calls compile once."""
    try:
        hash(model)
    except TypeError:
        return _batch_sum_step(criterion, model, granularity, target, rule, blur_sigma)
    return _cached_batch_sum_step(criterion, model, granularity, target, rule, blur_sigma)


def host_batches(
    images: np.ndarray, labels: np.ndarray, count: int, batch_size: int, mesh: Mesh
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """This process's part of every global batch over the first ``count`` examples: images,
    labels and 0/1 weights ``[B / P, ...]`` (padding weighted 0).

    The global batch ``B`` is ``batch_size`` rounded up to a multiple of the mesh's devices (and
    no larger than ``count`` rounded up); process ``p`` of ``P`` scores examples ``p::P``
    (``data.shard_for_host``), and every process yields the same number of batches.
    """
    devices, processes = mesh.shape[sharding.DATA_AXIS], jax.process_count()
    global_batch = min(-(-batch_size // devices), -(-count // devices)) * devices
    local_batch = global_batch // processes
    local = datasets.shard_for_host(
        datasets.Dataset(images[:count], labels[:count]),
        jax.process_index(),
        processes,
        drop_remainder=False,
    )
    num_batches = datasets.num_eval_batches(-(-count // processes), local_batch)
    for start in range(0, num_batches * local_batch, local_batch):
        stop = min(start + local_batch, local.num_examples)
        real = max(stop - start, 0)
        pad = local_batch - real
        yield (
            np.pad(local.images[start:stop], ((0, pad), (0, 0), (0, 0), (0, 0))),
            np.pad(local.labels[start:stop], (0, pad)),
            np.concatenate([np.ones(real, np.float32), np.zeros(pad, np.float32)]),
        )


def score(
    criterion: str,
    model: nn.Module,
    variables: Variables,
    data: Any = None,
    *,
    granularity: Granularity = "unit",
    batch_size: int = 128,
    num_examples: int | None = None,
    target: str = "label",
    reference: str | None = None,
    num_references: int = 8,
    blur_sigma: float = 2.0,
    rule: str = "rescale",
    seed: int = 0,
    mesh: Mesh | None = None,
) -> Scores:
    """Importance scores of every prunable layer of ``model`` (see ``xaijax.importance``).

    Data-parallel: each batch is sharded over the ``"data"`` axis of ``mesh`` (default: all
    devices of all processes, ``sharding.make_mesh()``) and ``variables`` are replicated, so XLA
    sums the per-device partial scores. In a multi-process run every process passes the same
    ``data``, feeds only its share of each batch (examples ``p::P``) and gets the same global
    scores.

    Args:
      criterion: a name in :data:`CRITERIA`.
      model, variables: the Flax model and its ``{"params", ["batch_stats"]}``.
      data: a ``Dataset`` (``.images``, ``.labels``) or an ``(images, labels)`` pair; data-free
        criteria ignore it.
      granularity: ``"unit"`` -> ``{layer: float32[units]}``; ``"weight"`` ->
        ``{layer: {"kernel": float32[*kernel.shape]}}``.
      batch_size: examples per jit-compiled step (bounds memory).
      num_examples: score the first ``num_examples`` examples (default: all).
      target: ``"label"``, ``"predicted"`` or ``"all"``.
      reference: ``"zeros"``, ``"mean"``, ``"blur"`` or ``"samples"`` (None: the criterion's
        default).
      num_references: ``K`` for ``"samples"``.
      blur_sigma: Gaussian width (pixels) for ``"blur"``.
      rule: DeepLIFT nonlinearity rule passed to ``xaijax.deeplift``.
      seed: drives ``random`` and the choice of reference samples.
      mesh: a ``jax.sharding.Mesh`` with a ``"data"`` axis (None: over all devices).
    """
    crit = get_criterion(criterion)
    reference = crit.default_reference if reference is None else reference
    _check_options(crit, granularity, target, reference, num_references, blur_sigma)
    if not crit.uses_data:
        return crit.data_free(model, variables, granularity=granularity, seed=seed)
    if data is None:
        raise ValueError(f"criterion {criterion!r} needs data (a Dataset or (images, labels))")
    images, labels = as_arrays(data)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    available = images.shape[0]
    count = available if num_examples is None else num_examples
    if not isinstance(count, int) or not 1 <= count <= available:
        raise ValueError(
            f"num_examples must be an integer in [1, {available}], got {num_examples!r}"
        )
    if reference == "samples" and num_references > available:
        raise ValueError(f"num_references={num_references} exceeds the {available} examples given")

    mesh = sharding.make_mesh() if mesh is None else mesh
    if not isinstance(mesh, Mesh) or sharding.DATA_AXIS not in mesh.axis_names:
        raise ValueError(f"mesh must be a jax.sharding.Mesh with a {sharding.DATA_AXIS!r} axis")

    shared = shared_references(reference, images, num_references, seed)
    step = batch_sum_step(criterion, model, granularity, target, rule, float(blur_sigma))
    variables, shared = sharding.replicate((variables, shared), mesh)
    batch_sharding = NamedSharding(mesh, P(sharding.DATA_AXIS))
    total = None
    for local in host_batches(images, labels, count, batch_size, mesh):
        batch = [jax.make_array_from_process_local_data(batch_sharding, a) for a in local]
        batch_total = step(variables, *batch, shared)
        total = batch_total if total is None else jax.tree.map(jnp.add, total, batch_total)
    # The sums are replicated on every device; hand back ordinary default-device arrays.
    scores = jax.tree.map(lambda t: jnp.asarray(np.asarray(t)) / count, total)
    return scores if crit.times is None else combined(crit, scores, model, variables, granularity)


def combined(
    crit: Criterion,
    scores: Scores,
    model: nn.Module,
    variables: Variables,
    granularity: Granularity,
) -> Scores:
    """``sqrt(S * S_times)`` elementwise: ``scores`` of ``crit`` with its data-free partner."""
    partner = get_criterion(crit.times).data_free(model, variables, granularity=granularity, seed=0)
    return jax.tree.map(lambda a, b: jnp.sqrt(a * b), scores, partner)
