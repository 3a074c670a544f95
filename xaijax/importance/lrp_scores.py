"""The ``lrp`` criterion: LRP relevances (``xaijax.lrp``), normalised per layer.

With ``R_n`` the LRP relevances of example ``n`` for its target logit (``xaijax.lrp``; rules: the
preset named by ``rule`` when it is one of ``xaijax.lrp.PRESETS``, else ``"composite"``:
alpha1-beta0 for convolutions, epsilon for dense layers), a unit scores
``S_k = mean_n r_{n,k} / sum_k' r_{n,k'}`` with ``r_{n,k} = |sum_positions R_n[..., k]|`` the
relevance of the unit's output, and a weight scores ``S_ij = mean_n r_{n,ij} / sum_i'j' r_{n,i'j'}``
with ``r_{n,ij} = |R_n(w_ij)|`` the relevance message through the weight summed over positions
(``lrp.parameter_relevances``); the sums in the denominators run over the layer's units (its
kernel's weights). A layer whose relevances are all 0 scores 0.

Per-layer normalisation: Yeom et al. (Pruning by Explaining, Pattern Recognition 2021) rank units
across layers by relevances normalised per layer. Here each example's absolute relevances are
divided by their layer total before the mean over examples, so every layer's scores sum to 1
(when its relevances are not all 0) and every example weighs the same; under exact conservation
with non-negative relevances (alpha1-beta0, bias-free) the total is the example's target logit.
``references`` are not used (LRP has none). The mean over examples is taken by the engine; this
module gives the per-example scores.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from xaijax import deeplift, lrp
from xaijax.importance.layers import position_sum
from xaijax.importance.per_example import ScoringBatch, per_example_criterion
from xaijax.models import inference_kwargs

DEFAULT_RULES = "composite"


def lrp_rules(rule: str) -> str:
    """The LRP preset for the engine's ``rule`` option: a preset name selects itself; a DeepLIFT
    rule name (the engine's default ``"rescale"``) selects :data:`DEFAULT_RULES`."""
    if rule in lrp.PRESETS:
        return rule
    if rule in deeplift.RULES:
        return DEFAULT_RULES
    raise ValueError(
        f"criterion 'lrp' takes rule = one of the LRP presets {sorted(lrp.PRESETS)}, got {rule!r}"
    )


def normalised(scores: jax.Array) -> jax.Array:
    """``s / sum(s)`` per example (the sum over all axes but the first), 0 where the sum is 0."""
    total = scores.reshape(scores.shape[0], -1).sum(axis=1)
    total = total.reshape((-1,) + (1,) * (scores.ndim - 1))
    zero = total == 0
    return jnp.where(zero, jnp.zeros_like(scores), scores / jnp.where(zero, 1.0, total))


def _relevances(
    explain: Callable[..., Mapping[str, jax.Array]],
    batch: ScoringBatch,
    reduce: Callable[[jax.Array], jax.Array] | None = None,
) -> dict[str, jax.Array]:
    """``r / sum r`` per layer with ``r = |reduce(R)|``, ``R`` the relevances ``explain``
    (``lrp.layer_relevances`` or ``lrp.parameter_relevances``) computes."""
    relevances = explain(
        batch.model,
        batch.variables,
        batch.images,
        layers=batch.names,
        target=batch.targets,
        rules=lrp_rules(batch.rule),
        apply_kwargs=inference_kwargs(batch.model),
    )
    if reduce is None:
        return {name: normalised(jnp.abs(relevances[name])) for name in batch.names}
    return {name: normalised(jnp.abs(reduce(relevances[name]))) for name in batch.names}


def _unit_scores(batch: ScoringBatch) -> dict[str, jax.Array]:
    """``r / sum r`` with ``r = |sum_positions R|`` of each layer's outputs."""
    return _relevances(lrp.layer_relevances, batch, position_sum)


def _weight_scores(batch: ScoringBatch) -> dict[str, jax.Array]:
    """``r / sum r`` with ``r = |R(w)|`` of each kernel's weights."""
    return _relevances(lrp.parameter_relevances, batch)


lrp_per_example = per_example_criterion(_unit_scores, _weight_scores)
"""Per-example LRP scores (module docstring): absolute relevances normalised per layer; the
signature of ``Criterion.per_example`` (``references`` are not used)."""
