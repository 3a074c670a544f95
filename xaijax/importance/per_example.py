"""A per-example criterion built from its two granularities (:func:`per_example_criterion`).

Every data-driven criterion has the signature of ``Criterion.per_example``,
``fn(model, variables, images, targets, references, *, granularity, rule)``, finds the model's
prunable layers (``layers.layer_names``) and answers per granularity: per unit
``{name: float32[B, units]}``, per weight ``{name: {"kernel": float32[B, *kernel.shape]}}``. This
module writes that once: a criterion gives ``unit(batch)`` and ``weight(batch)``, each mapping a
:class:`ScoringBatch` to ``{name: per-example scores}``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax

from xaijax.importance.criterion import Granularity, Scores, Variables
from xaijax.importance.layers import layer_names


class ScoringBatch(NamedTuple):
    """What a per-example criterion scores: ``images`` ``[B, H, W, C]``, int32 ``targets``
    ``[B]``, ``references`` ``[K, 1 or B, H, W, C]``, the prunable layers' ``names`` (forward
    order) and the engine's ``rule`` option."""

    model: nn.Module
    variables: Variables
    images: jax.Array
    targets: jax.Array
    references: jax.Array
    names: tuple[str, ...]
    rule: str


LayerScores = Callable[[ScoringBatch], Mapping[str, Any]]


def per_example_criterion(unit: LayerScores, weight: LayerScores) -> Callable[..., Scores]:
    """``Criterion.per_example`` from ``unit(batch) -> {name: float32[B, units]}`` and
    ``weight(batch) -> {name: float32[B, *kernel.shape]}`` (non-negative, every layer of
    ``batch.names``); weight scores are returned as ``{name: {"kernel": ...}}``."""

    def per_example(
        model: nn.Module,
        variables: Variables,
        images: jax.Array,
        targets: jax.Array,
        references: jax.Array,
        *,
        granularity: Granularity,
        rule: str,
    ) -> Scores:
        names = layer_names(model, variables, images)
        batch = ScoringBatch(model, variables, images, targets, references, names, rule)
        if granularity == "unit":
            return dict(unit(batch))
        return {name: {"kernel": scores} for name, scores in weight(batch).items()}

    return per_example
