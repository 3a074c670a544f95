"""Masks as an optax transform: :func:`keep_pruned` keeps pruned parameters exactly zero.

Chained after the optimizer, with the 0/1 mask ``m``, it maps an update ``u`` of parameters ``p``
to ``u * m - p * (1 - m)``: ``p + u`` is unchanged where ``m = 1`` and exactly 0 where ``m = 0``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


class KeepPrunedState(NamedTuple):
    """The mask a :func:`keep_pruned` transform enforces (checkpointed with the optimizer)."""

    mask: Any


def _check_mask(params: Any, mask: Any) -> None:
    """``ValueError`` unless every mask array has its parameter's shape."""

    def check(path: Any, m: Any, p: Any) -> None:
        if m is not None and np.shape(m) != np.shape(p):
            raise ValueError(
                f"mask at {jax.tree_util.keystr(path)} has shape {np.shape(m)}, the parameter "
                f"has {np.shape(p)}"
            )

    try:
        jax.tree_util.tree_map_with_path(check, mask, params, is_leaf=lambda x: x is None)
    except (ValueError, TypeError) as err:
        if "mask at" in str(err):
            raise
        raise ValueError(f"mask must be shaped like params (or a prefix of it): {err}") from err


def keep_pruned(mask: Any) -> optax.GradientTransformation:
    """An optax transform that keeps pruned parameters exactly zero.

    ``mask``: 0/1 arrays shaped like the parameters (or a prefix of their tree, ``None`` leaving a
    subtree alone). Chained last (``optax.chain(..., optimizer, keep_pruned(mask))``) it maps
    ``u -> u * m - p * (1 - m)``, so ``p + u`` is ``p + u`` where ``m = 1`` and exactly 0 where
    ``m = 0``, whatever the optimizer proposed and whatever the parameter held. The mask lives in
    the transform's state, so it is checkpointed and restored with the optimizer state.
    """

    def init(params: Any) -> KeepPrunedState:
        _check_mask(params, mask)
        return KeepPrunedState(
            jax.tree.map(lambda m: jnp.asarray(m, jnp.float32), mask)  # None: not a leaf
        )

    def update(updates: Any, state: KeepPrunedState, params: Any = None) -> tuple[Any, Any]:
        if params is None:
            raise ValueError("keep_pruned needs the parameters: call update(..., params)")

        def keep(m: Any, u: Any, p: Any) -> Any:
            if m is None:
                return u
            return jax.tree.map(
                lambda ul, pl: ul * m.astype(ul.dtype) - pl * (1 - m).astype(pl.dtype), u, p
            )

        return jax.tree.map(keep, state.mask, updates, params, is_leaf=lambda x: x is None), state

    return optax.GradientTransformation(init, update)
