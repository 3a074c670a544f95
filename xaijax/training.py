"""Jit-compiled, data-parallel, resumable training of Flax linen classifiers.

Parallelism: one ``jax.sharding.Mesh`` over all devices with axis ``"data"``; batches are sharded
along it and the train state is replicated, so XLA inserts the gradient all-reduce (and BatchNorm
statistics are taken over the global batch). The same code runs on 1 CPU, several GPUs or a TPU
slice; with ``config.train.multihost`` each process feeds its share of every batch
(``xaijax.data.shard_for_host``).

Loss: mean softmax cross-entropy of the logits against integer labels. The optimizer is any optax
transformation; :func:`make_optimizer` builds SGD (momentum, Nesterov) / Adam / AdamW with
constant, cosine or step schedules and linear warm-up from a config.

Chaining gradient transforms (e.g. summing gradients per weight-sharing cluster): build the
transformation yourself and hand it to :func:`create_train_state`::

    tx = optax.chain(my_grad_transform, make_optimizer(config.optimizer, steps_per_epoch, epochs))
    state = create_train_state(model, tx, rng, sample_images, variables=loaded_variables)
    state, history = fit(state, train_ds, test_ds, workdir=..., epochs=..., batch_size=...)

Masks (pruning) are optax transforms too: chain ``xaijax.pruning.keep_pruned(mask)`` after the
optimizer and pruned weights stay exactly zero; the mask travels (and is checkpointed) in the
optimizer state.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from xaijax import checkpoint, config_utils, data

logger = logging.getLogger(__name__)

DATA_AXIS = "data"
STAGE_BYTES_LIMIT = 1 << 30  # Largest chunk of an epoch placed on the devices at once.
AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]


# ----------------------------------------------------------------------------- state


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


# ----------------------------------------------------------------------------- optimizer


def make_schedule(
    config: ml_collections.ConfigDict, steps_per_epoch: int, epochs: int
) -> optax.Schedule:
    """Learning rate per step: linear warm-up over ``warmup_epochs`` from 0, then ``constant``,
    ``cosine`` (to 0 at the last step) or ``step`` (times ``decay_factor`` at each of
    ``decay_epochs``)."""
    if steps_per_epoch < 1 or epochs < 1:
        raise ValueError(
            f"need steps_per_epoch >= 1 and epochs >= 1, got {steps_per_epoch}, {epochs}"
        )
    base = float(config.learning_rate)
    total = steps_per_epoch * epochs
    warmup = round(float(config.get("warmup_epochs", 0.0)) * steps_per_epoch)
    kind = config.get("schedule", "constant")
    if kind == "constant":
        main = optax.constant_schedule(base)
    elif kind == "cosine":
        main = optax.cosine_decay_schedule(base, decay_steps=max(total - warmup, 1))
    elif kind == "step":
        boundaries = {
            round(float(e) * steps_per_epoch) - warmup: float(config.decay_factor)
            for e in config.decay_epochs
        }
        main = optax.piecewise_constant_schedule(base, boundaries)
    else:
        raise ValueError(
            f"config.optimizer.schedule must be one of {config_utils.SCHEDULES}, got {kind!r}"
        )
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, base, warmup), main], [warmup])


def _decay_mask(params: Any) -> Any:
    """Weight decay applies to kernels (ndim > 1), not to biases or BatchNorm scales."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(
    config: ml_collections.ConfigDict, steps_per_epoch: int, epochs: int
) -> optax.GradientTransformation:
    """Optax transformation from ``config`` (a ``config.optimizer`` section).

    ``sgd``: momentum (optionally Nesterov) with L2 weight decay added to the gradient;
    ``adam``: Adam with the same coupled L2 decay; ``adamw``: decoupled weight decay. Decay skips
    1-D parameters. ``grad_clip_norm > 0`` clips the global gradient norm first.
    """
    schedule = make_schedule(config, steps_per_epoch, epochs)
    name = config.name
    decay = float(config.get("weight_decay", 0.0))
    parts = []
    if float(config.get("grad_clip_norm", 0.0)) > 0:
        parts.append(optax.clip_by_global_norm(float(config.grad_clip_norm)))
    if name in ("sgd", "adam") and decay > 0:
        parts.append(optax.add_decayed_weights(decay, mask=_decay_mask))
    if name == "sgd":
        momentum = float(config.get("momentum", 0.0)) or None
        parts.append(optax.sgd(schedule, momentum=momentum, nesterov=bool(config.get("nesterov"))))
    elif name == "adam":
        parts.append(optax.adam(schedule))
    elif name == "adamw":
        parts.append(optax.adamw(schedule, weight_decay=decay, mask=_decay_mask))
    else:
        raise ValueError(
            f"config.optimizer.name must be one of {config_utils.OPTIMIZERS}, got {name!r}"
        )
    return optax.chain(*parts)


# ----------------------------------------------------------------------------- steps


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example ``-log softmax(logits)[label]``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _train_step(
    state: TrainState, images: jax.Array, labels: jax.Array, augment: AugmentFn | None
) -> tuple[TrainState, dict[str, jax.Array]]:
    chex.assert_rank(images, 4)
    chex.assert_rank(labels, 1)
    chex.assert_equal_shape_prefix((images, labels), 1)
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    augment_key, dropout_key = jax.random.split(step_key)
    if augment is not None:
        images = augment(augment_key, images)

    def loss_fn(params: Any) -> tuple[jax.Array, tuple[jax.Array, Any]]:
        variables = _variables(params, state.batch_stats)
        rngs = {"dropout": dropout_key}
        if state.batch_stats:
            logits, updates = state.apply_fn(
                variables, images, train=True, mutable=["batch_stats"], rngs=rngs
            )
            batch_stats = updates["batch_stats"]
        else:
            logits = state.apply_fn(variables, images, train=True, rngs=rngs)
            batch_stats = state.batch_stats
        return cross_entropy(logits, labels).mean(), (logits, batch_stats)

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
        "grad_norm": optax.tree.norm(grads),
    }
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    return new_state, metrics


@functools.partial(jax.jit, static_argnames=("augment",))
def train_step(
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    *,
    augment: AugmentFn | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on a batch; returns the new state and ``{loss, accuracy, grad_norm}``
    (loss and accuracy of the batch before the update)."""
    return _train_step(state, images, labels, augment)


@functools.partial(jax.jit, static_argnames=("augment",), donate_argnums=(0,))
def train_step_staged(
    state: TrainState,
    staged_images: jax.Array,
    staged_labels: jax.Array,
    index: jax.Array,
    augment: AugmentFn | None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """``train_step`` on batch ``index`` of device-resident ``[steps, B, ...]`` arrays (see
    :func:`shard_batches`); donates ``state``, so keep only the returned one. Indexing inside the
    compiled step avoids a host round trip per batch."""
    images = jax.lax.dynamic_index_in_dim(staged_images, index, keepdims=False)
    labels = jax.lax.dynamic_index_in_dim(staged_labels, index, keepdims=False)
    return _train_step(state, images, labels, augment)


def _weighted_sums(
    logits: jax.Array, labels: jax.Array, weights: jax.Array
) -> dict[str, jax.Array]:
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(weights * cross_entropy(logits, labels)),
        "correct_sum": jnp.sum(weights * correct),
        "count": jnp.sum(weights),
    }


@functools.partial(jax.jit, static_argnums=0)
def _eval_sums(
    apply_fn: Callable[..., Any], variables: Any, images: Any, labels: Any, weights: Any
) -> dict[str, jax.Array]:
    return _weighted_sums(apply_fn(variables, images, train=False), labels, weights)


@functools.partial(jax.jit, static_argnums=0)
def _eval_staged(
    apply_fn: Callable[..., Any], variables: Any, images: Any, labels: Any, weights: Any
) -> dict[str, jax.Array]:
    """Sum :func:`_weighted_sums` over batches ``[num_batches, B, ...]`` in one compiled scan."""

    def body(totals: dict[str, jax.Array], batch: tuple[Any, Any, Any]) -> tuple[Any, None]:
        x, y, w = batch
        sums = _weighted_sums(apply_fn(variables, x, train=False), y, w)
        return jax.tree.map(jnp.add, totals, sums), None

    zeros = {k: jnp.zeros((), jnp.float32) for k in ("loss_sum", "correct_sum", "count")}
    totals, _ = jax.lax.scan(body, zeros, (images, labels, weights))
    return totals


def eval_step(
    state: TrainState, images: jax.Array, labels: jax.Array, weights: jax.Array
) -> dict[str, jax.Array]:
    """Weighted sums over a batch: ``loss_sum`` (cross-entropy), ``correct_sum`` and ``count``
    (sum of weights); padded examples carry weight 0."""
    return _eval_sums(state.apply_fn, state.variables, images, labels, weights)


# ----------------------------------------------------------------------------- sharding


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


def _data_parallelism(mesh: Mesh) -> int:
    return mesh.shape[DATA_AXIS]


def shard_batches(mesh: Mesh, *local_arrays: np.ndarray) -> list[jax.Array]:
    """Place host arrays ``[steps, B_local, ...]`` as global arrays sharded along axis 1."""
    sharding = NamedSharding(mesh, P(None, DATA_AXIS))
    return [jax.make_array_from_process_local_data(sharding, a) for a in local_arrays]


def _local_batch_size(batch_size: int, mesh: Mesh, what: str) -> int:
    devices, processes = _data_parallelism(mesh), jax.process_count()
    if batch_size % devices:
        raise ValueError(
            f"{what} {batch_size} must be a multiple of the {devices} devices of the mesh"
        )
    return batch_size // processes


# ----------------------------------------------------------------------------- evaluation


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
    devices = _data_parallelism(mesh)
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


# ----------------------------------------------------------------------------- metrics


class MetricWriter:
    """Appends one JSON object per record to ``workdir/metrics.jsonl`` and mirrors the numbers
    to TensorBoard (``workdir/tensorboard``, via tensorboardX) under ``<kind>/<name>``."""

    def __init__(self, workdir: str | Path, *, enabled: bool = True):
        self.enabled = enabled
        self._jsonl = None
        self._tensorboard = None
        if enabled:
            from tensorboardX import SummaryWriter

            workdir = Path(workdir)
            workdir.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(workdir / "metrics.jsonl", "a")  # noqa: SIM115 - closed in close()
            self._tensorboard = SummaryWriter(logdir=str(workdir / "tensorboard"))

    def write(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json_line(record))
        self._jsonl.flush()
        kind = record.get("kind", "metrics")
        for name, value in record.items():
            if name not in ("kind", "step") and isinstance(value, int | float):
                self._tensorboard.add_scalar(f"{kind}/{name}", value, record["step"])
        self._tensorboard.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tensorboard.close()


def json_line(record: Mapping[str, Any]) -> str:
    """One JSON line for ``record`` (numpy values converted)."""
    return json.dumps(checkpoint.to_jsonable(dict(record))) + "\n"


class _Progress:
    """A tqdm bar on a terminal, plain log lines otherwise."""

    def __init__(self, total: int, initial: int, enabled: bool | None):
        interactive = sys.stdout.isatty() if enabled is None else enabled
        self._bar = None
        if interactive and jax.process_index() == 0:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def report(self, record: Mapping[str, Any]) -> None:
        shown = {k: v for k, v in record.items() if k not in ("kind", "step", "epoch")}
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)
            if record.get("kind") == "eval":
                self._bar.write(_format(record))
        elif jax.process_index() == 0:
            logger.info("%s", _format(record))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _format(record: Mapping[str, Any]) -> str:
    parts = [f"{record.get('kind', '')} step {record['step']} epoch {record.get('epoch', '?')}"]
    parts += [
        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
        for k, v in record.items()
        if k not in ("kind", "step", "epoch")
    ]
    return " ".join(parts)


# ----------------------------------------------------------------------------- fit


def fit(
    state: TrainState,
    train_ds: data.Dataset,
    eval_ds: data.Dataset | None,
    *,
    workdir: str | Path,
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
    local_batch = _local_batch_size(batch_size, mesh, "batch_size")
    local_train = data.shard_for_host(train_ds, jax.process_index(), jax.process_count())
    steps_per_epoch = local_train.num_examples // local_batch
    if steps_per_epoch == 0:
        raise ValueError(
            f"batch_size {batch_size} exceeds the {train_ds.num_examples} training examples"
        )
    total_steps = epochs * steps_per_epoch

    workdir = Path(workdir)
    manager = checkpoint.checkpoint_manager(workdir / "checkpoints", keep=keep)
    state = replicate(state, mesh, copy=True)  # The steps donate it; the caller keeps theirs.
    if manager.latest_step() is not None:
        state = replicate(checkpoint.restore_train_state(manager, state), mesh)
        logger.info("resumed from %s at step %d", manager.directory, int(state.step))
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
                        state, images, labels, np.int32(i), augment
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


# ----------------------------------------------------------------------------- from a config


def datasets_from_config(config: ml_collections.ConfigDict) -> data.Splits:
    """Train / validation (or None) / test splits of ``config.data``, standardized if asked."""
    return data.load_splits(
        config.data.name,
        config.data.data_dir,
        validation_size=config.data.validation_size,
        standardize=config.data.standardize,
        seed=config.train.seed,
    )


def augment_from_config(config: ml_collections.ConfigDict) -> AugmentFn | None:
    """``config.data.augment`` as a jax function of ``(key, images)`` (None for ``"none"``)."""
    kind = config.data.augment
    if kind == "none":
        return None
    pad = config.data.crop_padding if kind == "crop_flip" else 0
    return functools.partial(data.augment_batch, flip=True, pad=pad)


def model_from_config(config: ml_collections.ConfigDict) -> nn.Module:
    from xaijax import models

    return models.get_model(
        config.model.name,
        num_classes=config.model.num_classes,
        widths=config_utils.model_widths(config),
    )


def initialize_distributed(
    config: ml_collections.ConfigDict,
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Join the multi-process jax runtime if ``config.train.multihost``; idempotent, so a script
    and :func:`train_and_evaluate` may both call it (``jax.distributed.initialize`` may run only
    once per process). Arguments left None come from the environment (Cloud TPU VM, SLURM, Open
    MPI, Kubernetes; ``JAX_COORDINATOR_ADDRESS``). Returns whether the runtime is initialized."""
    if config.train.multihost and not jax.distributed.is_initialized():
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
    return jax.distributed.is_initialized()


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | Path
) -> tuple[TrainState, dict[str, Any]]:
    """Validate ``config``, train (resuming from ``workdir`` if possible), evaluate on the test
    split. Returns the state and a results dict (test accuracy/loss, parameters, FLOPs per
    example, per-layer costs, epochs, steps, wall time, eval history, config)."""
    from xaijax import models

    config_utils.validate_config(config)
    started = time.perf_counter()
    initialize_distributed(config)
    splits = datasets_from_config(config)
    model = model_from_config(config)
    mesh = make_mesh()
    train = config.train
    local_batch = _local_batch_size(train.batch_size, mesh, "config.train.batch_size")
    steps_per_epoch = (splits.train.num_examples // jax.process_count()) // local_batch
    if steps_per_epoch == 0:
        raise ValueError(
            f"config.train.batch_size {train.batch_size} exceeds the "
            f"{splits.train.num_examples} training examples"
        )
    tx = make_optimizer(config.optimizer, steps_per_epoch, train.epochs)
    sample = (1, *splits.train.images.shape[1:])
    state = create_train_state(model, tx, train.seed, sample)
    monitor = splits.validation if splits.validation is not None else splits.test
    state, history = fit(
        state,
        splits.train,
        monitor,
        workdir=workdir,
        epochs=train.epochs,
        batch_size=train.batch_size,
        seed=train.seed,
        checkpoint_every_steps=train.checkpoint_every_steps,
        keep=train.keep_checkpoints,
        eval_batch_size=train.eval_batch_size,
        log_every_steps=train.log_every_steps,
        eval_every_epochs=train.eval_every_epochs,
        augment=augment_from_config(config),
        mesh=mesh,
    )
    test = evaluate(state, splits.test, train.eval_batch_size, mesh=mesh)
    costs = models.layer_costs(model, jax.device_get(state.variables), sample[1:])
    results = {
        "test": test,
        "validation": (
            None
            if splits.validation is None
            else evaluate(state, splits.validation, train.eval_batch_size, mesh=mesh)
        ),
        "params": models.count_params(state.params),
        "flops": int(sum(c["flops"] for c in costs.values())),
        "layers": costs,
        "epochs": train.epochs,
        "steps": int(jax.device_get(state.step)),
        "steps_per_epoch": steps_per_epoch,
        "wall_time_s": time.perf_counter() - started,
        "num_devices": jax.device_count(),
        "history": history,
        "config": config.to_dict(),
    }
    return state, results
