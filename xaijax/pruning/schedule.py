"""Sparsity schedules of iterative pruning: after round ``t`` of ``T`` the target times ``t / T``
(linear) or ``1 - (1 - t / T)^3`` (cubic, Zhu & Gupta 2017)."""

from __future__ import annotations

from xaijax.pruning.selection import _check_choice, _check_sparsity


def schedule_fractions(num_steps: int, kind: str = "linear") -> list[float]:
    """Fraction of the target reached after each of ``num_steps`` rounds (the last is 1).

    ``"linear"``: ``t / T``; ``"cubic"`` (Zhu & Gupta, 2017): ``1 - (1 - t / T)^3``.
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    _check_choice(kind, ("linear", "cubic"), "schedule")
    fractions = [t / num_steps for t in range(1, num_steps + 1)]
    if kind == "cubic":
        fractions = [1 - (1 - f) ** 3 for f in fractions]
    return fractions


def sparsity_schedule(target: float, num_steps: int, kind: str = "linear") -> list[float]:
    """Sparsity after each of ``num_steps`` rounds, ending at ``target`` (see
    :func:`schedule_fractions`)."""
    target = _check_sparsity(target, "target sparsity")
    return [target * f for f in schedule_fractions(num_steps, kind)]
