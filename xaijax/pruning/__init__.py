"""Pruning masks from importance scores, mask application, iterative pruning and physical shrinking.

Structured (unit) pruning removes whole conv filters / dense neurons; unstructured (weight) pruning
removes single kernel entries. Masks are computed on the host from scores by pure functions:

* :func:`unit_masks` -> ``{layer: bool[units]}`` (True = kept) for every layer of ``specs``;
* :func:`weight_masks` -> ``{layer: {"kernel": bool[*kernel.shape]}}``;
* :func:`params_mask` turns them into a 0/1 pytree shaped like ``params``; chained after the
  optimizer, :func:`keep_pruned` (an optax transform) keeps the masked parameters exactly zero.

Modules, bottom to top (each imports only modules listed before it):

* ``selection``: how many units or weights go and in which order (sparsity counts, normalised
  global ranking, ties, masks that only grow), and the argument checks;
* ``masks``: unit and weight keep-masks from scores, tied groups, the default exclusions;
* ``apply``: ``params_mask`` and ``mask_variables`` (what a unit mask zeroes: its kernel slice,
  bias, BatchNorm scale and offset, and the consumers' input channels);
* ``transform``: ``keep_pruned``, masks as an optax transform;
* ``accounting``: sparsity, parameter and FLOP costs, non-zero counts and storage of masked params;
* ``shrinking``: ``shrink``, the physically narrower model;
* ``shrink_any``: ``shrink_any``, the same for any linen model (no ``widths`` hook: sliced variables
  and intercepted layer calls), and ``traced_layer_costs``, its parameters and FLOPs;
* ``schedule``: sparsity schedules of iterative pruning;
* ``budget``: ``match_sparsity``, the sparsity that meets a parameter budget;
* ``iterative``: ``masks_by_kind`` (conv and dense targets) and ``iterative_prune``.
"""

from xaijax.pruning.accounting import (
    kernel_sparsity,
    masked_costs,
    nonzero_count,
    storage_bits,
    total_costs,
    unit_sparsity,
)
from xaijax.pruning.apply import Variables, mask_variables, params_mask
from xaijax.pruning.budget import match_sparsity
from xaijax.pruning.iterative import GRANULARITY_KINDS, PruneResult, iterative_prune, masks_by_kind
from xaijax.pruning.masks import (
    UnitMasks,
    default_exclude,
    pruning_groups,
    unit_masks,
    weight_masks,
)
from xaijax.pruning.schedule import schedule_fractions, sparsity_schedule
from xaijax.pruning.selection import NORMALIZATIONS, SCOPES, Normalization, Scope, prune_count
from xaijax.pruning.shrink_any import Narrowed, shrink_any, traced_layer_costs
from xaijax.pruning.shrinking import shrink
from xaijax.pruning.transform import KeepPrunedState, keep_pruned

__all__ = [
    "GRANULARITY_KINDS",
    "NORMALIZATIONS",
    "SCOPES",
    "KeepPrunedState",
    "Narrowed",
    "Normalization",
    "PruneResult",
    "Scope",
    "UnitMasks",
    "Variables",
    "default_exclude",
    "iterative_prune",
    "keep_pruned",
    "kernel_sparsity",
    "mask_variables",
    "masked_costs",
    "masks_by_kind",
    "match_sparsity",
    "nonzero_count",
    "params_mask",
    "prune_count",
    "pruning_groups",
    "schedule_fractions",
    "shrink",
    "shrink_any",
    "sparsity_schedule",
    "storage_bits",
    "total_costs",
    "traced_layer_costs",
    "unit_masks",
    "unit_sparsity",
    "weight_masks",
]
