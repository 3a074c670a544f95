"""The train state, its creation (from ``model.init`` or given variables) and shared modules."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct


@struct.dataclass
class TrainState:
    """Everything that changes during training; ``apply_fn`` and ``tx`` are static.

    ``rng`` is raw uint32 key data (``jax.random.key_data``); step ``s`` uses
    ``fold_in(rng, s)`` for dropout and augmentation, so a resumed run draws the same numbers.
    ``batch_stats`` is ``{}`` for models without BatchNorm.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    apply_fn: Callable[..., Any] = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    @property
    def variables(self) -> dict[str, Any]:
        """``{'params': ...}`` plus ``'batch_stats'`` when the model has any."""
        return _variables(self.params, self.batch_stats)


def _variables(params: Any, batch_stats: Any) -> dict[str, Any]:
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def _raw_key(rng: int | jax.Array) -> jax.Array:
    if isinstance(rng, int | np.integer):
        return jax.random.key_data(jax.random.key(int(rng)))
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(rng)
    return jnp.asarray(rng, jnp.uint32)


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    rng: int | jax.Array,
    sample_input: Any,
    variables: Mapping[str, Any] | None = None,
) -> TrainState:
    """A fresh state at step 0: ``variables`` if given (checked against the model), otherwise
    ``model.init``; the optimizer state is ``tx.init(params)``.

    ``sample_input`` is an array (or its shape) ``[B, H, W, C]``; only its shape matters.
    """
    shape = tuple(np.shape(sample_input)) if not isinstance(sample_input, tuple) else sample_input
    if len(shape) != 4:
        raise ValueError(f"sample_input must be NHWC [B, H, W, C], got shape {shape}")
    key = jax.random.wrap_key_data(_raw_key(rng))
    init_key, state_key = jax.random.split(key)
    dummy = jnp.zeros(shape, jnp.float32)
    model = shared_module(model)
    expected = jax.eval_shape(_init_variables, model.init, init_key, dummy)
    if variables is None:
        variables = _init_variables(model.init, init_key, dummy)
    else:
        _check_same_shapes(expected, dict(variables))
    variables = jax.tree.map(jnp.asarray, dict(variables))
    params = variables["params"]
    return TrainState(
        step=jnp.asarray(0, jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        rng=jax.random.key_data(state_key),
        apply_fn=model.apply,
        tx=tx,
    )


@functools.lru_cache(maxsize=512)
def _first_equal_module(module: nn.Module) -> nn.Module:
    return module


def shared_module(module: nn.Module) -> nn.Module:
    """The first module seen that equals ``module`` (itself if its fields are unhashable).

    jit keys static functions such as ``model.apply`` by identity: a bound method equals another
    only when both are bound to the same object. Binding to one shared module makes models
    rebuilt with the same settings (``models.get_model`` freezes ``widths``) reuse the compiled
    train, eval and init steps instead of compiling them again."""
    try:
        return _first_equal_module(module)
    except TypeError:  # Unhashable fields (e.g. a dict): no sharing, compiled per object.
        return module


@functools.partial(jax.jit, static_argnums=0)
def _init_variables(init: Callable[..., Any], key: jax.Array, dummy: jax.Array) -> Any:
    """``model.init`` compiled once per (shared) model and input shape."""
    return init(key, dummy, train=False)


def _check_same_shapes(expected: Any, given: Any) -> None:
    shapes = lambda tree: jax.tree.map(lambda x: (tuple(np.shape(x)), np.dtype(x.dtype)), tree)
    want, got = shapes(expected), shapes(given)
    if jax.tree.structure(want) != jax.tree.structure(got) or want != got:
        raise ValueError(
            "variables do not match the model: expected "
            f"{jax.tree_util.tree_map_with_path(lambda p, s: s, want)}, got {got}"
        )
