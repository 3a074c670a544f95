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

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from xaijax import deeplift
from xaijax.importance.criterion import Granularity, Scores, Variables
from xaijax.importance.layers import layer_names, position_sum
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
    names = layer_names(model, variables, images)
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
                apply_kwargs=inference_kwargs(model),
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
            apply_kwargs=inference_kwargs(model),
        )
        return {name: contributions[name] for name in names}

    summed = _mean_over_references(weight_contributions, references)
    return {name: {"kernel": jnp.abs(summed[name])} for name in names}
