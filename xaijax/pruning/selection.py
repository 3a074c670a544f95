"""Which units or weights go: the counting, ranking and tie-breaking rules behind every mask.

A *candidate* is one layer, or a tied group of layers pruned as one; :func:`_select` turns the
candidates' scores into flat keep-masks under these conventions:

* Sparsity is the fraction removed. A layer (or tied group) of ``n`` units at sparsity ``s`` loses
  ``floor(s * n)`` units (``s * n`` rounded to 6 decimals first, so 0.29 x 100 gives 29), but never
  more than ``n - min_units``. Global scope removes ``floor(s * N)`` of the ``N`` candidate units of
  all non-excluded layers together, subject to the same per-layer floor.
* Global scope ranks normalised scores: each layer's (or tied group's) scores are divided by their
  mean (``normalize="mean"``, the default: a unit scoring below its layer's average is a candidate
  wherever it sits, independent of the layers' sizes and scales), by their L2 norm
  (``normalize="l2"``), or ranked raw (``normalize="none"``). A layer whose scores are all zero
  stays all zero.
* Ties are broken by layer order, then by index (lowest first), so masks are deterministic.
* Units already pruned (``pruned=`` a previous mask) rank below every other unit: masks only grow.

The argument checks shared by the pruning modules live here too.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

Scope = Literal["layer", "global"]
Normalization = Literal["mean", "l2", "none"]


SCOPES = ("layer", "global")
NORMALIZATIONS = ("mean", "l2", "none")


@dataclasses.dataclass(frozen=True)
class _Candidate:
    """One pruning candidate: a layer, or a tied group of layers sharing their output channels."""

    layers: tuple[str, ...]
    scores: np.ndarray  # flat float64 scores of the candidate's prunable elements
    shape: tuple[int, ...]
    sparsity: float
    min_kept: int
    pruned: np.ndarray  # flat bool: already pruned


# ---------------------------------------------------------------------------------------------
# Validation.


def _check_sparsity(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise TypeError(f"{what} must be a number in [0, 1), got {value!r}")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {value!r}")
    return float(value)


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ValueError(f"{what} must be one of {choices}, got {value!r}")


def _check_known(names: Any, known: Sequence[str], what: str) -> None:
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"{what} names unknown layers {unknown}; known layers: {list(known)}")


def _layer_sparsities(
    sparsity: float | Mapping[str, float], names: Sequence[str], scope: str
) -> dict[str, float]:
    """Per-layer target sparsity from a number or a mapping (absent layers: 0)."""
    if isinstance(sparsity, Mapping):
        if scope != "layer":
            raise ValueError("a per-layer sparsity mapping needs scope='layer'")
        _check_known(sparsity, names, "sparsity")
        return {
            name: _check_sparsity(sparsity.get(name, 0.0), f"sparsity[{name!r}]") for name in names
        }
    value = _check_sparsity(sparsity, "sparsity")
    return dict.fromkeys(names, value)


def _as_bool_array(mask: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"{what} has shape {mask.shape}, expected {shape}")
    return mask.astype(bool)


# ---------------------------------------------------------------------------------------------
# Selection core.


def prune_count(sparsity: float, size: int) -> int:
    """``floor(sparsity * size)`` with the product rounded to 6 decimals (see module docstring)."""
    return math.floor(round(sparsity * size, 6))


def _normalized(scores: np.ndarray, normalize: str) -> np.ndarray:
    if normalize == "none":
        return scores
    scale = scores.mean() if normalize == "mean" else np.sqrt(np.sum(scores**2))
    return scores / scale if scale > 0 else np.zeros_like(scores)


def _ranking(candidates: Sequence[_Candidate], normalize: str) -> tuple[np.ndarray, np.ndarray]:
    """Candidate id and flat index of every element, lowest-ranked first."""
    ids = np.concatenate([np.full(c.scores.size, i) for i, c in enumerate(candidates)])
    index = np.concatenate([np.arange(c.scores.size) for c in candidates])
    values = np.concatenate([_normalized(c.scores, normalize) for c in candidates])
    pruned = np.concatenate([c.pruned for c in candidates])
    order = np.lexsort((index, ids, values, ~pruned))
    return ids[order], index[order]


def _select(
    candidates: Sequence[_Candidate], scope: str, sparsity: float, normalize: str
) -> list[np.ndarray]:
    """Flat keep-masks, one per candidate."""
    keep = [np.ones(c.scores.size, bool) for c in candidates]
    if scope == "layer":
        for c, kept in zip(candidates, keep, strict=True):
            count = min(prune_count(c.sparsity, c.scores.size), c.scores.size - c.min_kept)
            count = max(count, int(c.pruned.sum()))
            order = np.lexsort((np.arange(c.scores.size), c.scores, ~c.pruned))
            kept[order[:count]] = False
        return keep
    total = sum(c.scores.size for c in candidates)
    ids, index = _ranking(candidates, normalize)
    allowed = np.zeros(ids.size, bool)
    for i, c in enumerate(candidates):
        positions = np.flatnonzero(ids == i)
        allowed[positions[: max(c.scores.size - c.min_kept, int(c.pruned.sum()))]] = True
    already = sum(int(c.pruned.sum()) for c in candidates)
    count = max(prune_count(sparsity, total), already)
    chosen = np.flatnonzero(allowed)[:count]
    for i, j in zip(ids[chosen], index[chosen], strict=True):
        keep[i][j] = False
    return keep
