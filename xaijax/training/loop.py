"""The resumable training loop: :func:`fit`."""

from __future__ import annotations

import logging
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from xaijax import checkpoint, data, paths
from xaijax.sharding import local_batch_size, make_mesh, replicate, shard_batches
from xaijax.training.distill import Teacher
from xaijax.training.evaluation import _finish_eval, _stage_eval
from xaijax.training.metrics import MetricWriter, _Progress
from xaijax.training.state import TrainState
from xaijax.training.steps import AugmentFn, _eval_staged, train_step_staged

logger = logging.getLogger(__name__)

STAGE_BYTES_LIMIT = 1 << 30  # Largest chunk of an epoch placed on the devices at once.


def fit(
    state: TrainState,
    train_ds: data.Dataset,
    eval_ds: data.Dataset | None,
    *,
    workdir: paths.PathLike,
    epochs: int,
    batch_size: int,
    seed: int = 0,
    checkpoint_every_steps: int = 0,
    keep: int = 3,
    eval_batch_size: int = 500,
    log_every_steps: int = 100,
    eval_every_epochs: int = 1,
    augment: AugmentFn | None = None,
    mesh: Mesh | None = None,
    progress: bool | None = None,
    teacher: Teacher | None = None,
) -> tuple[TrainState, list[dict[str, Any]]]:
    """Train for ``epochs`` epochs of shuffled batches (``batch_size`` global, remainder dropped).

    Resumable: orbax checkpoints go to ``workdir/checkpoints`` every ``checkpoint_every_steps``
    steps (0: never mid-epoch) and at every epoch end, keeping ``keep``; if one exists, training
    restarts from it (mid-epoch too: epoch ``e`` always visits examples in the order
    ``data.epoch_permutation(N, seed=seed, epoch=e)``). A non-finite loss raises
    ``FloatingPointError`` naming the step; states are saved only after every loss up to them was
    checked, so the latest checkpoint is a good one.

    Logs ``{kind: train|eval, step, epoch, ...}`` records to ``workdir/metrics.jsonl`` and
    TensorBoard: train means every ``log_every_steps`` steps, eval accuracy/loss on ``eval_ds``
    every ``eval_every_epochs`` epochs and after the last. Returns the final state and the eval
    records of this call.

    ``workdir`` may be local or an object-store URL (``gs://bucket/run``): the metrics go through
    :class:`~xaijax.training.metrics.MetricWriter` (uploaded whole, see there), the checkpoints
    through orbax, whose array data reach ``gs://`` by tensorstore's own GCS driver.

    ``teacher`` (``xaijax.training.distill.make_teacher``): train on the distillation loss
    against it instead of the plain cross-entropy (it is not checkpointed: a resumed run must be
    given the same teacher).
    """
    data.check_dataset(train_ds)
    if eval_ds is not None:
        data.check_dataset(eval_ds)
    for name, value, minimum in (
        ("epochs", epochs, 1),
        ("batch_size", batch_size, 1),
        ("eval_batch_size", eval_batch_size, 1),
        ("log_every_steps", log_every_steps, 1),
        ("checkpoint_every_steps", checkpoint_every_steps, 0),
        ("keep", keep, 1),
        ("eval_every_epochs", eval_every_epochs, 1),
    ):
        if not isinstance(value, int | np.integer) or value < minimum:
            raise ValueError(f"fit: {name} must be an integer >= {minimum}, got {value!r}")
    mesh = make_mesh() if mesh is None else mesh
    local_batch = local_batch_size(batch_size, mesh, "batch_size")
    local_train = data.shard_for_host(train_ds, jax.process_index(), jax.process_count())
    steps_per_epoch = local_train.num_examples // local_batch
    if steps_per_epoch == 0:
        raise ValueError(
            f"batch_size {batch_size} exceeds the {train_ds.num_examples} training examples"
        )
    total_steps = epochs * steps_per_epoch

    workdir = paths.as_path(workdir)
    manager = checkpoint.checkpoint_manager(workdir / "checkpoints", keep=keep)
    state = replicate(state, mesh, copy=True)  # The steps donate it; the caller keeps theirs.
    if manager.latest_step() is not None:
        state = replicate(checkpoint.restore_train_state(manager, state), mesh)
        logger.info("resumed from %s at step %d", manager.directory, int(state.step))
    teacher = None if teacher is None else replicate(teacher, mesh)
    staged_eval = None if eval_ds is None else _stage_eval(eval_ds, eval_batch_size, mesh)

    writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
    start_step = int(jax.device_get(state.step))
    bar = _Progress(total_steps, min(start_step, total_steps), progress)
    history: list[dict[str, Any]] = []
    pending: list[tuple[int, dict[str, jax.Array]]] = []
    clock = {"time": time.perf_counter(), "step": start_step}

    def flush(epoch: int) -> None:
        """Fetch pending step metrics, stop on a non-finite loss, log their means."""
        if not pending:
            return
        values = jax.device_get([m for _, m in pending])
        for (step, _), m in zip(pending, values, strict=True):
            if not np.isfinite(m["loss"]):
                manager.wait_until_finished()
                good = manager.latest_step()
                raise FloatingPointError(
                    f"non-finite training loss {float(m['loss'])} at step {step} (epoch "
                    f"{epoch + 1}); training stopped and this state was not saved; the last "
                    f"good checkpoint is step {good} in {manager.directory}"
                )
        now, last_step = time.perf_counter(), pending[-1][0]
        elapsed = max(now - clock["time"], 1e-9)
        record = {"kind": "train", "step": last_step, "epoch": epoch + 1}
        for name in values[0]:
            record[name] = float(np.mean([m[name] for m in values]))
        record["steps_per_sec"] = (last_step - clock["step"]) / elapsed
        record["images_per_sec"] = record["steps_per_sec"] * batch_size
        clock.update(time=now, step=last_step)
        pending.clear()
        writer.write(record)
        bar.report(record)

    try:
        step = start_step
        for epoch in range(start_step // steps_per_epoch, epochs):
            indices = data.epoch_batch_indices(
                local_train.num_examples, local_batch, seed=seed, epoch=epoch
            )
            first = step - epoch * steps_per_epoch
            bytes_per_step = local_batch * int(np.prod(local_train.images.shape[1:])) * 4
            chunk = max(1, STAGE_BYTES_LIMIT // bytes_per_step)
            for begin in range(first, steps_per_epoch, chunk):
                chunk_indices = indices[begin : begin + chunk]
                images, labels = shard_batches(
                    mesh, local_train.images[chunk_indices], local_train.labels[chunk_indices]
                )
                for i in range(chunk_indices.shape[0]):
                    state, metrics = train_step_staged(
                        state, images, labels, np.int32(i), augment, teacher
                    )
                    step += 1
                    pending.append((step, metrics))
                    bar.advance()
                    checkpoint_due = checkpoint_every_steps and step % checkpoint_every_steps == 0
                    if step % log_every_steps == 0 or checkpoint_due:
                        flush(epoch)
                    if checkpoint_due and step % steps_per_epoch:
                        checkpoint.save_train_state(manager, state)
            flush(epoch)
            checkpoint.save_train_state(manager, state)
            if staged_eval is not None and (
                (epoch + 1) % eval_every_epochs == 0 or epoch + 1 == epochs
            ):
                sums = jax.device_get(_eval_staged(state.apply_fn, state.variables, *staged_eval))
                record = {"kind": "eval", "step": step, "epoch": epoch + 1, **_finish_eval(sums)}
                history.append(record)
                writer.write(record)
                bar.report(record)
        manager.wait_until_finished()
    finally:
        manager.close()
        writer.close()
        bar.close()
    return state, history
