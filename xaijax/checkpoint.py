"""Checkpoints and result files.

* Train-state checkpoints (resume): an orbax ``CheckpointManager`` under ``directory`` keeps the
  last ``keep`` steps. The saved tree is ``{step, params, batch_stats, opt_state, rng}`` with the
  optimizer state in Flax's state-dict form, so any optax state made of NamedTuples/dicts restores
  into the structure of the state it is restored onto.
* Stage outputs: :func:`save_variables` / :func:`load_variables` store a model's variables
  (``{'params': ..., 'batch_stats': ...}``) for later stages (prune, share, quantize).
* :func:`write_json_atomic` writes results atomically (:mod:`xaijax.paths`: locally a temporary
  file and ``os.replace``; on an object store one upload), so a reader never sees a half-written
  file.

Paths may be local or object-store URLs (``gs://bucket/run``). Train-state checkpoints go to
``gs://`` through orbax (``epath`` for its files, tensorstore's own GCS driver for the arrays);
saved variables go there through :mod:`xaijax.paths` (an orbax copy written locally, then
uploaded), so they need only epath's backend for the scheme.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import serialization
from jax.experimental import multihost_utils

from xaijax import paths

_STATE_FIELDS = ("step", "params", "batch_stats", "opt_state", "rng")


def checked_path(path: str | os.PathLike) -> epath.Path:
    """``path`` as an ``epath.Path`` (a local one made absolute); raises ``ValueError`` if it holds
    a bracket, under which orbax's tensorstore writes a checkpoint it cannot read back (checked
    with orbax 0.12)."""
    path = paths.as_path(path)
    path = path.absolute() if paths.is_local(path) else path
    if "[" in str(path) or "]" in str(path):
        raise ValueError(
            f"checkpoint path {str(path)!r} contains a bracket: orbax cannot read back what it "
            "writes there; rename the directory"
        )
    return path


def checkpoint_manager(directory: str | os.PathLike, *, keep: int = 3) -> ocp.CheckpointManager:
    """An orbax manager for train states in ``directory`` keeping the ``keep`` latest steps."""
    directory = checked_path(directory)
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(directory, options=options)


def _state_tree(state: Any) -> dict[str, Any]:
    tree = {name: getattr(state, name) for name in _STATE_FIELDS}
    tree["opt_state"] = serialization.to_state_dict(state.opt_state)
    return tree


def save_train_state(manager: ocp.CheckpointManager, state: Any) -> None:
    """Save ``state`` (a ``TrainState``) at step ``state.step`` (asynchronously)."""
    manager.save(int(jax.device_get(state.step)), args=ocp.args.StandardSave(_state_tree(state)))


def restore_train_state(manager: ocp.CheckpointManager, state: Any, step: int | None = None) -> Any:
    """``state`` with every array replaced by checkpoint ``step`` (default: the latest).

    ``state`` supplies the structure, shapes, dtypes and shardings (place it first).
    """
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {manager.directory}")
    target = _state_tree(state)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
        restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"checkpoint step {step} in {manager.directory} does not match the current model and "
            f"optimizer (use a fresh workdir after changing them): {err}"
        ) from err
    return state.replace(
        step=restored["step"],
        params=restored["params"],
        batch_stats=restored["batch_stats"],
        opt_state=serialization.from_state_dict(state.opt_state, restored["opt_state"]),
        rng=restored["rng"],
    )


# What orbax writes last into a saved tree; uploaded last to an object store, so a copy there
# without it is unfinished.
_COMPLETE = "_CHECKPOINT_METADATA"


def _checkpointer(*, alone: bool = False) -> ocp.StandardCheckpointer:
    """An orbax checkpointer: for all processes together, or (``alone``) for this process only,
    with no barriers, for a local staging folder that only this process sees."""
    if not alone:
        return ocp.StandardCheckpointer()
    me = jax.process_index()
    options = ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"xaijax_alone_{me}"
    )
    return ocp.StandardCheckpointer(multiprocessing_options=options)


def _save(path: epath.Path, variables: Any, checkpointer: ocp.StandardCheckpointer) -> None:
    try:
        checkpointer.save(path, variables, force=True)
        checkpointer.wait_until_finished()
    finally:
        checkpointer.close()


def _restore(path: epath.Path, checkpointer: ocp.StandardCheckpointer) -> Any:
    try:
        return jax.tree.map(np.asarray, checkpointer.restore(path))
    finally:
        checkpointer.close()


def save_variables(path: str | os.PathLike, variables: Any) -> None:
    """Save a variables pytree (e.g. ``{'params': ..., 'batch_stats': ...}``) to ``path``,
    replacing what is there; blocks until written. Every process of a multi-process run must call
    it; arrays are fetched to the host first.

    Locally orbax writes ``path`` (coordinating the processes). On an object store
    (``gs://bucket/...``) process 0 has orbax write a local copy and uploads it through
    :func:`xaijax.paths.copy_tree` after deleting what was there, ``_CHECKPOINT_METADATA`` last
    (not atomic: a copy without it is unfinished and :func:`load_variables` refuses it); the
    other processes wait for the upload."""
    path = checked_path(path)
    variables = jax.device_get(variables)
    if paths.is_local(path):
        _save(path, variables, _checkpointer())
        return
    if jax.process_index() == 0:
        with tempfile.TemporaryDirectory(prefix="xaijax-variables-") as staging:
            local = epath.Path(staging) / "variables"
            _save(local, variables, _checkpointer(alone=True))
            paths.remove(path)
            paths.copy_tree(local, path, last=(_COMPLETE,))
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"xaijax.save_variables {path}")


def load_variables(path: str | os.PathLike) -> Any:
    """The variables pytree saved by :func:`save_variables`, as numpy arrays (from an object
    store: downloaded to a local temporary folder first)."""
    path = paths.as_path(path)
    path = path.absolute() if paths.is_local(path) else path
    if not path.is_dir():
        raise FileNotFoundError(f"no saved variables at {path}")
    if paths.is_local(path):
        return _restore(path, _checkpointer())
    if not (path / _COMPLETE).exists():
        raise FileNotFoundError(
            f"unfinished saved variables at {path} ({_COMPLETE} missing): save them again"
        )
    with tempfile.TemporaryDirectory(prefix="xaijax-variables-") as staging:
        local = epath.Path(staging) / "variables"
        paths.copy_tree(path, local)
        return _restore(local, _checkpointer(alone=True))


def to_jsonable(obj: Any) -> Any:
    """Convert numpy/jax scalars and arrays, paths, dataclasses and ConfigDicts to JSON types."""
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return to_jsonable(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic | np.ndarray | jax.Array):
        return to_jsonable(np.asarray(obj).tolist())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, float) and not np.isfinite(obj):
        return str(obj)
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (``paths.write_text_atomic``: locally a
    temporary file in the same directory, fsync and ``os.replace``; on an object store one
    upload)."""
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n"
    paths.write_text_atomic(path, text)
