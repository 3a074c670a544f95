"""The ``deeplift`` and ``deeplift_shap`` criteria: DeepLIFT contributions (``xaijax.deeplift``).

With ``C`` the DeepLIFT contributions of a layer's outputs to the target logit (multiplier times
difference from reference, at every position), a unit scores
``S_k = mean_n |sum_positions C_n[..., k]|``; a weight scores ``S_ij = mean_n |C_n(W_ij)|`` with
``C(W_ij) = da_i * W_ij * m_j`` summed over positions (``deeplift.parameter_contributions``).
With ``K`` references the signed contributions are averaged over them before the absolute value,
``|mean_k C_n(reference_k)|`` (DeepSHAP); ``deeplift_shap`` is ``deeplift`` against
``num_references`` examples drawn from the data. The mean over examples is taken by the engine;
this module gives the per-example scores.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from xaijax import deeplift
from xaijax.importance.layers import position_sum
from xaijax.importance.per_example import ScoringBatch, per_example_criterion
from xaijax.models import inference_kwargs


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


def _contributions(
    explain: Callable[..., Mapping[str, jax.Array]],
    batch: ScoringBatch,
    reduce: Callable[[jax.Array], jax.Array] | None = None,
) -> dict[str, jax.Array]:
    """``|mean_k reduce(C(reference_k))|`` per layer, ``C`` the contributions ``explain``
    (``deeplift.layer_attributions`` or ``deeplift.parameter_contributions``) computes."""

    def one_reference(reference: jax.Array) -> dict[str, jax.Array]:
        contributions = explain(
            batch.model,
            batch.variables,
            batch.images,
            as_deeplift_reference(reference),
            layers=batch.names,
            target=batch.targets,
            rule=batch.rule,
            apply_kwargs=inference_kwargs(batch.model),
        )
        if reduce is None:
            return {name: contributions[name] for name in batch.names}
        return {name: reduce(contributions[name]) for name in batch.names}

    summed = _mean_over_references(one_reference, batch.references)
    return {name: jnp.abs(summed[name]) for name in batch.names}


def _unit_scores(batch: ScoringBatch) -> dict[str, jax.Array]:
    """``|mean_k sum_positions C_k|`` of each layer's outputs."""
    return _contributions(deeplift.layer_attributions, batch, position_sum)


def _weight_scores(batch: ScoringBatch) -> dict[str, jax.Array]:
    """``|mean_k C_k(W)|`` of each kernel's weights."""
    return _contributions(deeplift.parameter_contributions, batch)


deeplift_per_example = per_example_criterion(_unit_scores, _weight_scores)
"""Per-example DeepLIFT scores (module docstring), the signed contributions averaged over the
references; the signature of ``Criterion.per_example``."""
