"""Parameter-budget matching: the smallest sparsity whose masks keep at most a budget of
parameters, found by bisection over a count that does not increase with the sparsity."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from xaijax.models import LayerSpec
from xaijax.pruning.accounting import nonzero_count
from xaijax.pruning.apply import params_mask


def match_sparsity(count_at: Callable[[float], int], budget: int, what: str) -> float:
    """The smallest sparsity ``s`` in [0, 1) with ``count_at(s) <= budget``.

    ``count_at`` (parameters kept at sparsity ``s``) must be non-increasing, as it is for masks
    that grow with ``s``; bisection over ``s`` then finds the step of ``count_at`` closest to the
    budget from below, so criteria pruned to one budget keep the same number of parameters up to
    one step (one weight for weight masks). ``ValueError`` when even ``s -> 1`` keeps more.
    """
    low, high = 0.0, float(np.nextafter(1.0, 0.0))
    if count_at(low) <= budget:
        return low
    if count_at(high) > budget:
        raise ValueError(
            f"{what}: a budget of {budget} parameters cannot be met (pruning everything "
            f"allowed still keeps {count_at(high)})"
        )
    for _ in range(60):
        middle = 0.5 * (low + high)
        if count_at(middle) <= budget:
            high = middle
        else:
            low = middle
    return high


def _kept_at(
    specs: Sequence[LayerSpec], params: Any, masks_at: Callable[..., tuple], dense: float
) -> int:
    units, weights = masks_at(dense_sparsity=dense)
    return nonzero_count(params_mask(specs, params, units, weight_masks=weights))
