"""Agreement of two attribution maps per example, and its summary over a test set.

Maps are arrays ``[N, ...]``: one map per example, flattened to ``P`` pixels.

* Spearman rank correlation: the Pearson correlation of the two maps' ranks, with tied values
  given the average of the ranks they span (as ``scipy.stats.spearmanr``). It is undefined (NaN)
  when a map is constant (its ranks have no variance).
* Top-k overlap: ``|top_k(a) ∩ top_k(b)| / k`` with ``k = ceil(q * P)``, where ``top_k`` holds
  the ``k`` pixels of highest score, ties broken by the lower flat pixel index (so equal maps give
  equal sets and the result is deterministic). ``q * P`` is rounded to 9 decimals before the
  ceiling, so a binary-float error (``0.1 * 30 = 3.0000000000000004``) cannot add a pixel.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

DEFAULT_FRACTION = 0.10


def _flat(maps: Any, name: str) -> np.ndarray:
    values = np.asarray(maps, dtype=np.float64)
    if values.ndim < 2:
        raise ValueError(f"{name} must be [N, ...] with one map per example, got {values.shape}")
    values = values.reshape(values.shape[0], -1)
    if values.shape[1] < 2:
        raise ValueError(f"{name} needs at least 2 pixels per map, got {values.shape[1]}")
    if not np.isfinite(values).all():
        raise ValueError(f"{name} has NaN or infinite values")
    return values


def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = _flat(a, "a"), _flat(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"maps must have equal shapes, got {a.shape} and {b.shape}")
    return a, b


def average_ranks(maps: Any) -> np.ndarray:
    """Ranks ``1..P`` of each row of ``maps`` (flattened ``[N, P]``), ascending; a run of tied
    values at sorted positions ``i..j`` (0-based) all get ``(i + j) / 2 + 1``."""
    values = _flat(maps, "maps")
    order = np.argsort(values, axis=1, kind="stable")
    ordered = np.take_along_axis(values, order, axis=1)
    positions = np.broadcast_to(np.arange(values.shape[1]), values.shape)
    first = np.ones(values.shape, bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    last = np.ones(values.shape, bool)
    last[:, :-1] = first[:, 1:]
    # First position of each run, carried right; last position of each run, carried left.
    start = np.maximum.accumulate(np.where(first, positions, 0), axis=1)
    end = np.minimum.accumulate(np.where(last, positions, values.shape[1])[:, ::-1], axis=1)
    ranks = np.empty(values.shape)
    np.put_along_axis(ranks, order, (start + end[:, ::-1]) / 2.0 + 1.0, axis=1)
    return ranks


def spearman(a: Any, b: Any) -> np.ndarray:
    """Per-example Spearman correlation ``[N]`` of maps ``a`` and ``b`` (NaN where a map is
    constant): ``sum(u * v) / sqrt(sum(u^2) * sum(v^2))`` with ``u, v`` the centred ranks."""
    a, b = _pair(a, b)
    u = average_ranks(a)
    v = average_ranks(b)
    u -= u.mean(axis=1, keepdims=True)
    v -= v.mean(axis=1, keepdims=True)
    norm = np.sqrt((u * u).sum(axis=1) * (v * v).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (u * v).sum(axis=1) / norm
    return np.where(norm > 0, np.clip(rho, -1.0, 1.0), np.nan)


def top_k_count(num_pixels: int, fraction: float = DEFAULT_FRACTION) -> int:
    """``k = ceil(fraction * num_pixels)`` (at least 1); ``fraction`` in ``(0, 1]``."""
    if isinstance(fraction, bool) or not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"the top fraction must be in (0, 1], got {fraction!r}")
    return max(1, math.ceil(round(float(fraction) * num_pixels, 9)))


def top_k_mask(scores: Any, fraction: float = DEFAULT_FRACTION) -> np.ndarray:
    """``[N, P]`` booleans marking each row's ``k`` highest scores (ties: lower index first)."""
    values = _flat(scores, "scores")
    k = top_k_count(values.shape[1], fraction)
    chosen = np.argsort(-values, axis=1, kind="stable")[:, :k]
    mask = np.zeros(values.shape, bool)
    np.put_along_axis(mask, chosen, True, axis=1)
    return mask


def top_k_overlap(a: Any, b: Any, fraction: float = DEFAULT_FRACTION) -> np.ndarray:
    """Per-example ``|top_k(a) ∩ top_k(b)| / k`` ``[N]`` of the scores ``a`` and ``b``."""
    a, b = _pair(a, b)
    k = top_k_count(a.shape[1], fraction)
    return (top_k_mask(a, fraction) & top_k_mask(b, fraction)).sum(axis=1) / k


def agreement(
    maps_a: Any, maps_b: Any, fraction: float = DEFAULT_FRACTION
) -> dict[str, np.ndarray]:
    """Per example: ``spearman`` of the signed maps and ``top_overlap`` of their magnitudes
    ``|map|`` (the most influential pixels, whichever way they push)."""
    a, b = _pair(maps_a, maps_b)
    return {
        "spearman": spearman(a, b),
        "top_overlap": top_k_overlap(np.abs(a), np.abs(b), fraction),
    }


def _mean_std(values: np.ndarray) -> dict[str, Any]:
    """Mean and sample std (``ddof=1``; None for fewer than 2 values) of the finite values."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"mean": None, "std": None}
    std = float(np.std(values, ddof=1)) if values.size > 1 else None
    return {"mean": float(np.mean(values)), "std": std}


def summarize(per_example: Mapping[str, Any], labels: Any) -> dict[str, Any]:
    """Mean ± sample std over the examples of each measure of ``per_example`` (``spearman``,
    ``top_overlap``), the count of undefined (NaN) Spearman values, which the means leave out,
    and ``per_class``: ``str(label) -> {n, <measure>: mean}`` by true label, classes ascending."""
    labels = np.asarray(labels)
    measures = {name: np.asarray(values, np.float64) for name, values in per_example.items()}
    for name, values in measures.items():
        if values.shape != labels.shape or labels.ndim != 1:
            raise ValueError(
                f"{name} has shape {values.shape}; it needs one value per label {labels.shape}"
            )
    summary: dict[str, Any] = {"n": int(labels.size)}
    for name, values in measures.items():
        summary[name] = _mean_std(values)
        summary[f"{name}_undefined"] = int(np.count_nonzero(~np.isfinite(values)))
    summary["per_class"] = {
        str(label): {
            "n": int(np.count_nonzero(labels == label)),
            **{
                name: _mean_std(values[labels == label])["mean"]
                for name, values in measures.items()
            },
        }
        for label in np.unique(labels).tolist()
    }
    return summary
