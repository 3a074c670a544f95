"""The ``taylor`` criterion: first-order Taylor expansion of the loss (Molchanov et al., 2017).

With ``L_n`` the softmax cross-entropy of example ``n``'s target class, removing a unit's output
``a`` changes the loss by about ``-a * dL/da``; a unit scores
``S_k = mean_n |sum_positions a_n[..., k] * dL_n/da_n[..., k]|`` (the gradient taken with respect
to a zero perturbation of the layer's output, ``xaijax.importance.layers``) and a weight scores
``S = mean_n |w * dL_n/dw|`` (per-example gradients, vmapped). The mean over examples is taken by
the engine; this module gives the per-example scores.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from xaijax.importance.layers import (
    apply_with_perturbations,
    layer_output_shapes,
    position_sum,
)
from xaijax.importance.per_example import ScoringBatch, per_example_criterion
from xaijax.models import inference_kwargs
from xaijax.models.common import layer_variables


def target_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Summed softmax cross-entropy of ``targets``: each example's gradient is its own loss's."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).sum()


def _unit_scores(batch: ScoringBatch) -> dict[str, jax.Array]:
    """``|sum_positions a * dL/da|`` of each layer's outputs ``a``."""
    model, variables, images = batch.model, batch.variables, batch.images
    shapes = layer_output_shapes(model, variables, images)
    zeros = {name: jnp.zeros(s.shape, s.dtype) for name, s in shapes.items()}

    def loss(perturbations):
        logits, outputs = apply_with_perturbations(model, variables, images, perturbations)
        return target_loss(logits, batch.targets), outputs

    grads, outputs = jax.grad(loss, has_aux=True)(zeros)
    return {name: jnp.abs(position_sum(outputs[name] * grads[name])) for name in batch.names}


def _weight_scores(batch: ScoringBatch) -> dict[str, jax.Array]:
    """``|w * dL/dw|`` of each kernel's weights, one example at a time (vmapped)."""
    model, variables = batch.model, batch.variables
    params = variables["params"]

    def one_example(image, target):
        def loss(p):
            logits = model.apply({**variables, "params": p}, image[None], **inference_kwargs(model))
            return target_loss(logits, target[None])

        grads = jax.grad(loss)(params)
        return {
            name: jnp.abs(
                layer_variables(params, name)["kernel"] * layer_variables(grads, name)["kernel"]
            )
            for name in batch.names
        }

    return jax.vmap(one_example)(batch.images, batch.targets)


taylor_per_example = per_example_criterion(_unit_scores, _weight_scores)
"""Per-example Taylor scores: ``|sum_positions a * dL/da|`` per unit, ``|w * dL/dw|`` per weight;
the signature of ``Criterion.per_example`` (``references`` and ``rule`` are not used)."""
