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
* ``deeplift_magnitude``: DeepLIFT combined with magnitude, ``S = sqrt(S_deeplift * S_magnitude)``
  elementwise (a criterion's ``times`` partner).
* ``lrp``: LRP relevances (``xaijax.lrp``; ``rule`` may name an LRP preset, default
  ``"composite"``: alpha1-beta0 for convolutions, epsilon for dense layers), normalised per layer
  and example (Yeom et al., 2021): ``S_k = mean_n r_{n,k} / sum_k' r_{n,k'}`` with
  ``r_{n,k} = |sum_positions R_n[..., k]|``; per weight, ``r_{n,ij} = |R_n(w_ij)|``, the relevance
  message through the weight (``xaijax.importance.lrp_scores``).
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

Layout (each module imports only the ones above it):

* ``criterion``: the :class:`Criterion` record, the score pytree types, ``GRANULARITIES``.
* ``layers``: layer names, perturbed application (gradients with respect to layer outputs),
  output shapes, position sums.
* ``per_example``: :func:`per_example_criterion`, a per-example criterion from its unit and weight
  scores of a :class:`ScoringBatch`.
* ``data_free`` (``magnitude``, ``random``), ``taylor``, ``deeplift_scores`` (``deeplift``,
  ``deeplift_shap``): the criteria, each module stating its math.
* ``registry``: :data:`CRITERIA` by name, :func:`get_criterion`, :func:`register_criterion`.
* ``references`` (``REFERENCES``, blur, shared references) and ``targets`` (``TARGETS``, the
  per-example scores for a target mode).
* ``engine``: :func:`score` (streamed, sharded), :func:`score_batch`, batching and option checks.

Adding a criterion: write its function in a new module of this package (importing only
``criterion``, ``layers`` and ``per_example``), either per-example ``fn(model, variables, images,
targets, references, *, granularity, rule) -> scores with a leading batch axis`` (non-negative; the
engine averages over the examples; ``per_example_criterion(unit, weight)`` builds one from its two
granularities) or data-free ``fn(model, variables, *, granularity, seed) -> scores``,
and register it with one entry ``"name": Criterion("name", per_example=fn)`` (or
``data_free=fn``) in ``registry.CRITERIA``. Outside the package, call
``register_criterion(Criterion(...))`` instead. Targets, references, batching and sharding come
from the engine unchanged.
"""

from xaijax.importance.criterion import GRANULARITIES, Criterion, Granularity, Scores, Variables
from xaijax.importance.data_free import magnitude_scores, random_scores
from xaijax.importance.deeplift_scores import as_deeplift_reference, deeplift_per_example
from xaijax.importance.engine import (
    as_arrays,
    batch_sum_step,
    host_batches,
    score,
    score_batch,
    weighted_batch_sum,
)
from xaijax.importance.layers import (
    apply_with_perturbations,
    kernel_tree,
    layer_names,
    layer_output_shapes,
    position_sum,
)
from xaijax.importance.per_example import ScoringBatch, per_example_criterion
from xaijax.importance.references import REFERENCES, gaussian_blur, shared_references
from xaijax.importance.registry import CRITERIA, get_criterion, register_criterion
from xaijax.importance.targets import TARGETS, per_example_scores
from xaijax.importance.taylor import target_loss, taylor_per_example

__all__ = [
    "CRITERIA",
    "GRANULARITIES",
    "REFERENCES",
    "TARGETS",
    "Criterion",
    "Granularity",
    "Scores",
    "ScoringBatch",
    "Variables",
    "apply_with_perturbations",
    "as_arrays",
    "as_deeplift_reference",
    "batch_sum_step",
    "deeplift_per_example",
    "gaussian_blur",
    "get_criterion",
    "host_batches",
    "kernel_tree",
    "layer_names",
    "layer_output_shapes",
    "magnitude_scores",
    "per_example_criterion",
    "per_example_scores",
    "position_sum",
    "random_scores",
    "register_criterion",
    "score",
    "score_batch",
    "shared_references",
    "target_loss",
    "taylor_per_example",
    "weighted_batch_sum",
]
