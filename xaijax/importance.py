"""Importance scores of units (conv filters / dense neurons) and of single weights.

Every criterion maps a model and its variables (and, for data-driven criteria, examples) to

* ``granularity="unit"``: ``{layer_name: float32[units]}`` for every prunable layer (the classifier
  included: it is scored, the pruning functions exclude it by default), or
* ``granularity="weight"``: ``{layer_name: {"kernel": float32[*kernel.shape]}}``, a pytree shaped
  like the kernels of ``params``.

Criteria (:data:`CRITERIA`, selected by name):

* ``deeplift``: with ``C`` the DeepLIFT contributions of a layer's outputs to the target logit
  (multiplier times difference from reference, at every position), a unit scores
  ``S_k = mean_n |sum_positions C_n[..., k]|``; a weight scores ``S_ij = mean_n |C_n(W_ij)|`` with
  ``C(W_ij) = da_i * W_ij * m_j`` summed over positions (``xaijax.deeplift``). With several
  references the signed contributions are averaged over them before the absolute value (DeepSHAP).
* ``deeplift_shap``: ``deeplift`` against ``num_references`` examples drawn from the data.
* ``taylor``: first-order Taylor expansion of the cross-entropy loss ``L`` of the target class
  (Molchanov et al., 2017): ``S_k = mean_n |sum_positions a_n[..., k] * dL_n/da_n[..., k]|`` for a
  layer output ``a``; per weight ``S = mean_n |w * dL_n/dw|``.
* ``magnitude``: ``S_k = sum |kernel[..., k]|`` (L1 norm of the unit's kernel slice); ``|w|`` per
  weight.
* ``random``: i.i.d. uniform scores in ``[0, 1)`` from ``seed``.

Data-driven criteria stream over the first ``num_examples`` examples in jit-compiled batches of
``batch_size`` rounded up to a multiple of the device count (the last batch is padded and its
padding weighted 0), so memory is bounded by the batch. Each batch is sharded over the devices
(and processes) of a mesh; the score of a batch is the sum of its per-example scores, reduced
across devices by XLA; :func:`score` divides the running sum by the number of examples at the
end. All scores are non-negative.

Targets: ``"label"`` (true class), ``"predicted"`` (argmax of the logits) or ``"all"`` (every class,
vmapped; the per-example absolute scores are averaged over the classes). References (DeepLIFT only):
``"zeros"``, ``"mean"`` (mean image of the data), ``"blur"`` (each input blurred by a Gaussian of
``blur_sigma`` pixels) or ``"samples"`` (``num_references`` examples of the data, drawn with
``seed``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from xaijax import data as datasets
from xaijax import deeplift, training

Granularity = Literal["unit", "weight"]
Scores = dict[str, Any]
Variables = Mapping[str, Any]

GRANULARITIES = ("unit", "weight")
TARGETS = ("label", "predicted", "all")
REFERENCES = ("zeros", "mean", "blur", "samples")


@dataclasses.dataclass(frozen=True)
class Criterion:
    """An importance criterion.

    Attributes:
      name: registry key.
      per_example: for data-driven criteria, ``fn(model, variables, images, targets, references,
        *, granularity, rule) -> scores with a leading batch axis`` (non-negative), where
        ``targets`` is int32 ``[B]`` and ``references`` is ``[K, 1 or B, H, W, C]``; None for
        data-free criteria.
      data_free: for data-free criteria, ``fn(model, variables, *, granularity, seed) -> scores``.
      default_reference: the reference used when :func:`score` gets ``reference=None``.
      fixed_reference: if set, the only reference the criterion accepts.
    """

    name: str
    per_example: Callable[..., Scores] | None = None
    data_free: Callable[..., Scores] | None = None
    default_reference: str = "zeros"
    fixed_reference: str | None = None

    @property
    def uses_data(self) -> bool:
        return self.per_example is not None


# ---------------------------------------------------------------------------------------------
# Shared helpers.


def layer_names(model: nn.Module) -> tuple[str, ...]:
    """Names of the prunable layers in forward order."""
    return tuple(spec.name for spec in model.layer_specs())


def position_sum(x: jax.Array) -> jax.Array:
    """Sum a ``[B, ..., C]`` layer map over its positions (all axes but the first and the last)."""
    return x.sum(axis=tuple(range(1, x.ndim - 1)))


def target_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Summed softmax cross-entropy of ``targets``: each example's gradient is its own loss's."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).sum()


def kernel_tree(params: Mapping[str, Any], names: tuple[str, ...], fn: Callable) -> Scores:
    """``{name: {"kernel": fn(params[name]["kernel"])}}`` over ``names``."""
    return {name: {"kernel": fn(params[name]["kernel"])} for name in names}


def _is_layer_call(context: Any, names: Mapping[str, Any]) -> bool:
    module = context.module
    return (
        context.method_name == "__call__"
        and isinstance(module, nn.Conv | nn.Dense)
        and module.name in names
        and len(module.scope.path) == 1
    )


def apply_with_perturbations(
    model: nn.Module,
    variables: Variables,
    images: jax.Array,
    perturbations: Mapping[str, jax.Array],
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Logits with ``perturbations[name]`` added to each named layer's output, and those outputs.

    The gradient of a function of the logits with respect to a zero perturbation is the gradient
    with respect to that layer's output.
    """
    outputs = {}

    def interceptor(next_fun, args, kwargs, context):
        if not _is_layer_call(context, perturbations):
            return next_fun(*args, **kwargs)
        y = next_fun(*args, **kwargs)
        outputs[context.module.name] = y
        return y + perturbations[context.module.name]

    with nn.intercept_methods(interceptor):
        logits = model.apply(variables, images, train=False)
    return logits, outputs


def layer_output_shapes(
    model: nn.Module, variables: Variables, images: jax.Array
) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes of the prunable layers' outputs for ``images`` (no computation)."""
    names = dict.fromkeys(layer_names(model))

    def run(x):
        zeros = {}

        def record(next_fun, args, kwargs, context):
            y = next_fun(*args, **kwargs)
            if _is_layer_call(context, names):
                zeros[context.module.name] = y
            return y

        with nn.intercept_methods(record):
            model.apply(variables, x, train=False)
        return zeros

    return jax.eval_shape(run, images)


# ---------------------------------------------------------------------------------------------
# Criteria.


def magnitude_scores(
    model: nn.Module, variables: Variables, *, granularity: Granularity, seed: int = 0
) -> Scores:
    """``sum |kernel[..., k]|`` per unit, ``|w|`` per weight."""
    del seed
    params, names = variables["params"], layer_names(model)
    if granularity == "unit":
        return {
            name: jnp.abs(params[name]["kernel"])
            .reshape(-1, params[name]["kernel"].shape[-1])
            .sum(0)
            for name in names
        }
    return kernel_tree(params, names, jnp.abs)


def random_scores(
    model: nn.Module, variables: Variables, *, granularity: Granularity, seed: int = 0
) -> Scores:
    """Uniform ``[0, 1)`` scores, independent per layer, reproducible from ``seed`` (host RNG)."""
    params = variables["params"]
    scores = {}
    for index, name in enumerate(layer_names(model)):
        kernel_shape = params[name]["kernel"].shape
        shape = kernel_shape[-1:] if granularity == "unit" else kernel_shape
        draw = jnp.asarray(np.random.default_rng([seed, index]).random(shape, np.float32))
        scores[name] = draw if granularity == "unit" else {"kernel": draw}
    return scores


def taylor_per_example(
    model: nn.Module,
    variables: Variables,
    images: jax.Array,
    targets: jax.Array,
    references: jax.Array,
    *,
    granularity: Granularity,
    rule: str,
) -> Scores:
    """Per-example Taylor scores: ``|sum_positions a * dL/da|`` per unit, ``|w * dL/dw|`` per
    weight."""
    del references, rule
    names = layer_names(model)
    if granularity == "unit":
        shapes = layer_output_shapes(model, variables, images)
        zeros = {name: jnp.zeros(s.shape, s.dtype) for name, s in shapes.items()}

        def loss(perturbations):
            logits, outputs = apply_with_perturbations(model, variables, images, perturbations)
            return target_loss(logits, targets), outputs

        grads, outputs = jax.grad(loss, has_aux=True)(zeros)
        return {name: jnp.abs(position_sum(outputs[name] * grads[name])) for name in names}

    params = variables["params"]

    def one_example(image, target):
        def loss(p):
            logits = model.apply({**variables, "params": p}, image[None], train=False)
            return target_loss(logits, target[None])

        grads = jax.grad(loss)(params)
        return {
            name: {"kernel": jnp.abs(params[name]["kernel"] * grads[name]["kernel"])}
            for name in names
        }

    return jax.vmap(one_example)(images, targets)


def _mean_over_references(fn: Callable[[jax.Array], Any], references: jax.Array) -> Any:
    """``mean_k fn(references[k])``, accumulated in a scan so memory does not grow with ``K``."""
    if references.shape[0] == 1:
        return fn(references[0])
    first = fn(references[0])

    def body(total, reference):
        return jax.tree.map(jnp.add, total, fn(reference)), None

    total, _ = jax.lax.scan(body, first, references[1:])
    return jax.tree.map(lambda t: t / references.shape[0], total)


def as_deeplift_reference(reference: jax.Array) -> jax.Array:
    """``[1, H, W, C]`` (shared: one example's shape, evaluated once) or ``[B, H, W, C]``."""
    return reference[0] if reference.shape[0] == 1 else reference


def deeplift_per_example(
    model: nn.Module,
    variables: Variables,
    images: jax.Array,
    targets: jax.Array,
    references: jax.Array,
    *,
    granularity: Granularity,
    rule: str,
) -> Scores:
    """Per-example DeepLIFT scores (module docstring), the signed contributions averaged over the
    references."""
    names = layer_names(model)
    if granularity == "unit":

        def unit_contributions(reference):
            contributions = deeplift.layer_attributions(
                model,
                variables,
                images,
                as_deeplift_reference(reference),
                layers=names,
                target=targets,
                rule=rule,
            )
            return {name: position_sum(contributions[name]) for name in names}

        summed = _mean_over_references(unit_contributions, references)
        return {name: jnp.abs(summed[name]) for name in names}

    def weight_contributions(reference):
        contributions = deeplift.parameter_contributions(
            model,
            variables,
            images,
            as_deeplift_reference(reference),
            target=targets,
            rule=rule,
            layers=names,
        )
        return {name: contributions[name] for name in names}

    summed = _mean_over_references(weight_contributions, references)
    return {name: {"kernel": jnp.abs(summed[name])} for name in names}


CRITERIA: dict[str, Criterion] = {
    "deeplift": Criterion("deeplift", per_example=deeplift_per_example),
    "deeplift_shap": Criterion(
        "deeplift_shap",
        per_example=deeplift_per_example,
        default_reference="samples",
        fixed_reference="samples",
    ),
    "taylor": Criterion("taylor", per_example=taylor_per_example),
    "magnitude": Criterion("magnitude", data_free=magnitude_scores),
    "random": Criterion("random", data_free=random_scores),
}


def get_criterion(name: str) -> Criterion:
    """The registered criterion ``name``."""
    if name not in CRITERIA:
        raise ValueError(
            f"unknown importance criterion {name!r}; known criteria: {sorted(CRITERIA)}"
        )
    return CRITERIA[name]


def register_criterion(criterion: Criterion) -> None:
    """Add a criterion to the registry (its name must be new)."""
    if criterion.name in CRITERIA:
        raise ValueError(f"criterion {criterion.name!r} is already registered")
    if (criterion.per_example is None) == (criterion.data_free is None):
        raise ValueError("a criterion needs exactly one of per_example and data_free")
    CRITERIA[criterion.name] = criterion


# ---------------------------------------------------------------------------------------------
# References and targets.


def gaussian_blur(images: jax.Array, sigma: float) -> jax.Array:
    """Blur ``[B, H, W, C]`` images channel by channel with a separable Gaussian (edge padding)."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    taps = jnp.exp(-0.5 * (offsets / sigma) ** 2)
    taps = taps / taps.sum()
    padded = jnp.pad(images, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="edge")
    channels = images.shape[-1]

    def blur_axis(x, kernel_shape):
        kernel = jnp.tile(taps.reshape(*kernel_shape, 1, 1), (1, 1, 1, channels))
        return jax.lax.conv_general_dilated(
            x,
            kernel,
            window_strides=(1, 1),
            padding="VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=channels,
        )

    return blur_axis(blur_axis(padded, (-1, 1)), (1, -1))


def shared_references(
    reference: str, images: np.ndarray, num_references: int, seed: int
) -> np.ndarray | None:
    """References shared by every example, ``[K, H, W, C]`` (None for per-example ``"blur"``)."""
    if reference == "zeros":
        return np.zeros((1, *images.shape[1:]), np.float32)
    if reference == "mean":
        return images.mean(axis=0, keepdims=True, dtype=np.float64).astype(np.float32)
    if reference == "samples":
        rng = np.random.default_rng(seed)
        picks = rng.choice(images.shape[0], size=num_references, replace=False)
        return np.asarray(images[np.sort(picks)], np.float32)
    return None


def _class_count(model: nn.Module, variables: Variables, images: jax.Array) -> int:
    return jax.eval_shape(lambda x: model.apply(variables, x, train=False), images[:1]).shape[-1]


def per_example_scores(
    criterion: Criterion,
    model: nn.Module,
    variables: Variables,
    images: jax.Array,
    labels: jax.Array,
    references: jax.Array,
    *,
    granularity: Granularity,
    target: str,
    rule: str,
) -> Scores:
    """Scores of each example (leading batch axis) for the chosen ``target`` mode."""

    def for_targets(targets):
        return criterion.per_example(
            model, variables, images, targets, references, granularity=granularity, rule=rule
        )

    if target == "label":
        return for_targets(labels.astype(jnp.int32))
    if target == "predicted":
        logits = model.apply(variables, images, train=False)
        return for_targets(jnp.argmax(logits, axis=-1).astype(jnp.int32))
    classes = jnp.arange(_class_count(model, variables, images), dtype=jnp.int32)
    per_class = jax.vmap(lambda c: for_targets(jnp.full(labels.shape, c)))(classes)
    return jax.tree.map(lambda s: s.mean(axis=0), per_class)


def weighted_batch_sum(per_example: Scores, weights: jax.Array) -> Scores:
    """``sum_n weights[n] * scores[n]`` for every leaf."""
    return jax.tree.map(lambda s: jnp.tensordot(weights, s, axes=1), per_example)


# ---------------------------------------------------------------------------------------------
# Public entry points.


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
    devices, processes = mesh.shape[training.DATA_AXIS], jax.process_count()
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
    """Importance scores of every prunable layer of ``model`` (see the module docstring).

    Data-parallel: each batch is sharded over the ``"data"`` axis of ``mesh`` (default: all
    devices of all processes, ``training.make_mesh()``) and ``variables`` are replicated, so XLA
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

    mesh = training.make_mesh() if mesh is None else mesh
    if not isinstance(mesh, Mesh) or training.DATA_AXIS not in mesh.axis_names:
        raise ValueError(f"mesh must be a jax.sharding.Mesh with a {training.DATA_AXIS!r} axis")

    shared = shared_references(reference, images, num_references, seed)
    step = batch_sum_step(criterion, model, granularity, target, rule, float(blur_sigma))
    variables, shared = training.replicate((variables, shared), mesh)
    batch_sharding = NamedSharding(mesh, P(training.DATA_AXIS))
    total = None
    for local in host_batches(images, labels, count, batch_size, mesh):
        batch = [jax.make_array_from_process_local_data(batch_sharding, a) for a in local]
        batch_total = step(variables, *batch, shared)
        total = batch_total if total is None else jax.tree.map(jnp.add, total, batch_total)
    # The sums are replicated on every device; hand back ordinary default-device arrays.
    return jax.tree.map(lambda t: jnp.asarray(np.asarray(t)) / count, total)
