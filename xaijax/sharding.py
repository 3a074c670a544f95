"""Data parallelism: one mesh over every device, batches sharded along it, states replicated.

A 1-D ``jax.sharding.Mesh`` over all devices (of all processes) with axis ``"data"``
(:data:`DATA_AXIS`): batches are split along it (:func:`shard_batches`) and everything else is
replicated (:func:`replicate`), so XLA inserts the all-reduces. With several processes each feeds
its share of every global batch (``xaijax.data.shard_for_host``), after
:func:`initialize_distributed` joined them into one runtime.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: Any = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over ``devices`` (default: all devices of all hosts)."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devices.reshape(-1), (DATA_AXIS,))


def replicate(tree: Any, mesh: Mesh, *, copy: bool = False) -> Any:
    """Place every array of ``tree`` fully replicated on ``mesh`` (``copy``: never alias the
    input buffers, so donating the result leaves ``tree`` intact; ``device_put`` alone may reuse
    the source buffer for one of the replicas)."""
    if copy:
        tree = jax.tree.map(lambda leaf: jnp.array(leaf, copy=True), tree)
    return jax.device_put(tree, NamedSharding(mesh, P()))


def data_parallelism(mesh: Mesh) -> int:
    """How many devices a batch is split over: the size of the mesh's ``"data"`` axis."""
    return mesh.shape[DATA_AXIS]


def shard_batches(mesh: Mesh, *local_arrays: np.ndarray) -> list[jax.Array]:
    """Place host arrays ``[steps, B_local, ...]`` as global arrays sharded along axis 1."""
    sharding = NamedSharding(mesh, P(None, DATA_AXIS))
    return [jax.make_array_from_process_local_data(sharding, a) for a in local_arrays]


def local_batch_size(batch_size: int, mesh: Mesh, what: str) -> int:
    """This process's share of a global ``batch_size``, which must be a multiple of the mesh's
    devices (``what`` names the setting in the error)."""
    devices, processes = data_parallelism(mesh), jax.process_count()
    if batch_size % devices:
        raise ValueError(
            f"{what} {batch_size} must be a multiple of the {devices} devices of the mesh"
        )
    return batch_size // processes


def initialize_distributed(
    config: ml_collections.ConfigDict,
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Join the multi-process jax runtime if ``config.train.multihost``; idempotent, so a script
    and ``xaijax.training.train_and_evaluate`` may both call it (``jax.distributed.initialize``
    may run only once per process). Arguments left None come from the environment (Cloud TPU VM,
    SLURM, Open MPI, Kubernetes; ``JAX_COORDINATOR_ADDRESS``). Returns whether the runtime is
    initialized."""
    if config.train.multihost and not jax.distributed.is_initialized():
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
    return jax.distributed.is_initialized()
