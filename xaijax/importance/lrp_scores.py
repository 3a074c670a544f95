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

import flax.linen as nn
import jax
import jax.numpy as jnp

from xaijax import deeplift, lrp
from xaijax.importance.criterion import Granularity, Scores, Variables
from xaijax.importance.layers import layer_names, position_sum
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


def lrp_per_example(
    model: nn.Module,
    variables: Variables,
    images: jax.Array,
    targets: jax.Array,
    references: jax.Array,
    *,
    granularity: Granularity,
    rule: str,
) -> Scores:
    """Per-example LRP scores (module docstring): absolute relevances normalised per layer."""
    del references
    rules = lrp_rules(rule)
    names = layer_names(model, variables, images)
    if granularity == "unit":
        relevances = lrp.layer_relevances(
            model,
            variables,
            images,
            layers=names,
            target=targets,
            rules=rules,
            apply_kwargs=inference_kwargs(model),
        )
        return {name: normalised(jnp.abs(position_sum(relevances[name]))) for name in names}
    relevances = lrp.parameter_relevances(
        model,
        variables,
        images,
        target=targets,
        rules=rules,
        layers=names,
        apply_kwargs=inference_kwargs(model),
    )
    return {name: {"kernel": normalised(jnp.abs(relevances[name]))} for name in names}
