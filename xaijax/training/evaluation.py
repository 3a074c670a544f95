"""Accuracy and mean cross-entropy over a whole dataset: eval batches padded with zero-weight
examples, staged on the mesh and summed in one compiled scan."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import Mesh

from xaijax import data
from xaijax.sharding import data_parallelism, make_mesh, replicate, shard_batches
from xaijax.training.state import TrainState, shared_module
from xaijax.training.steps import _eval_staged


def evaluate(
    model_or_state: TrainState | nn.Module | Callable[..., Any],
    ds: data.Dataset,
    batch_size: int = 500,
    *,
    variables: Any = None,
    mesh: Mesh | None = None,
) -> dict[str, float]:
    """Accuracy and mean cross-entropy over every example of ``ds`` (each counted once).

    Pass a :class:`TrainState`, or a linen module / ``apply_fn`` together with ``variables``.
    ``batch_size`` is rounded up to a multiple of the device count; the last batch is padded
    with zero-weight examples.
    """
    if isinstance(model_or_state, TrainState):
        if variables is not None:
            raise ValueError("pass variables only with a model or apply_fn, not a TrainState")
        apply_fn, variables = model_or_state.apply_fn, model_or_state.variables
    else:
        if variables is None:
            raise ValueError("evaluate needs variables when given a model or apply_fn")
        apply_fn = (
            shared_module(model_or_state).apply
            if isinstance(model_or_state, nn.Module)
            else model_or_state
        )
    data.check_dataset(ds)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    mesh = make_mesh() if mesh is None else mesh
    staged = _stage_eval(ds, batch_size, mesh)
    sums = _eval_staged(apply_fn, replicate(variables, mesh), *staged)
    return _finish_eval(jax.device_get(sums))


def _stage_eval(ds: data.Dataset, batch_size: int, mesh: Mesh) -> list[jax.Array]:
    devices = data_parallelism(mesh)
    batch_size = -(-batch_size // devices) * devices
    batch_size = min(batch_size, -(-ds.num_examples // devices) * devices)
    processes = jax.process_count()
    num_batches = data.num_eval_batches(-(-ds.num_examples // processes), batch_size // processes)
    local = data.shard_for_host(ds, jax.process_index(), processes, drop_remainder=False)
    return shard_batches(mesh, *data.pad_for_eval(local, batch_size // processes, num_batches))


def _finish_eval(sums: Mapping[str, Any]) -> dict[str, float]:
    count = float(sums["count"])
    return {
        "accuracy": float(sums["correct_sum"]) / count,
        "loss": float(sums["loss_sum"]) / count,
        "num_examples": round(count),
    }
