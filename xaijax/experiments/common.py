"""What every compression experiment shares: the trained starting point, fine-tuning, timing and
config sections.

An experiment (``prune``, ``share``, ``quantize``) is ``run(config, workdir, variables=None)``:
it reads its own section ``config.<name>`` (defaults merged in by :func:`section`), starts from
``variables`` or the baseline trained by :func:`load_or_train`, and keeps each unit of work in
its own folder of ``workdir`` so a rerun resumes where it stopped.

Every cached unit (the baseline, each fine-tuning run, each result row) is tied to the fingerprint
of what produced it (``xaijax.provenance``): the baseline to :func:`baseline_fingerprint`, a
fine-tuning run to its caller's unit plus :func:`finetune_settings`, the digest of the variables it
starts from and of its mask. A rerun under other inputs recomputes (``config.resume='recompute'``)
or refuses (``'strict'``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
from etils import epath
from ml_collections import config_dict

from xaijax import checkpoint, config_utils, data, provenance, pruning, training
from xaijax.experiments import recipe
from xaijax.experiments.sections import plain, section

Variables = Mapping[str, Any]

#: ``config.train`` fields that change how a run is logged or checkpointed, never its numbers.
NON_RESULT_TRAIN_FIELDS = (
    "eval_batch_size",
    "log_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "eval_every_epochs",
    "multihost",
)


def resume_policy(config: ml_collections.ConfigDict) -> str:
    """``config.resume``: what a rerun does with results of other inputs (``recompute``)."""
    return provenance.check_policy(config.get("resume", "recompute"))


def baseline_fingerprint(config: ml_collections.ConfigDict) -> provenance.Fingerprint:
    """What determines the trained baseline: the model, data, optimizer and training fields."""
    return provenance.fingerprint(
        unit="baseline",
        model=config.model,
        data=config.data,
        optimizer=config.optimizer,
        train=plain(config.train, NON_RESULT_TRAIN_FIELDS),
    )


def load_or_train(config: ml_collections.ConfigDict, trained_workdir: epath.PathLike) -> dict:
    """The variables trained by ``config`` in ``trained_workdir/variables``; trains them there
    first (resumably, with ``training.train_and_evaluate``) when absent. The directory is tied to
    :func:`baseline_fingerprint`: trained under other fields, it is retrained (or, with
    ``config.resume='strict'``, refused)."""
    config_utils.validate_config(config)  # Before the workdir is touched.
    trained_workdir = epath.Path(trained_workdir)
    provenance.claim(
        trained_workdir,
        baseline_fingerprint(config),
        what=f"the baseline in {trained_workdir}",
        policy=resume_policy(config),
    )
    variables_dir = trained_workdir / "variables"
    if not variables_dir.is_dir():
        logging.info("no trained model in %s: training it", trained_workdir)
        state, results = training.train_and_evaluate(config, trained_workdir)
        checkpoint.save_variables(variables_dir, state.variables)  # every process joins
        if jax.process_index() == 0:
            checkpoint.write_json_atomic(trained_workdir / "results.json", results)
    return load_variables(variables_dir)


#: The fields of every stage's section that locate its starting point (the digest of the
#: starting variables stands for them in fingerprints): saved variables to start from, else the
#: workdir of the baseline, trained there when absent.
STARTING_POINT_FIELDS = ("variables_dir", "trained_workdir")


def starting_point_defaults() -> dict[str, Any]:
    """The :data:`STARTING_POINT_FIELDS` of a stage's section: ``variables_dir`` (variables saved
    by ``checkpoint.save_variables``; None: the baseline) and ``trained_workdir`` (where the
    baseline is trained if absent; None: ``<stage workdir>/trained``)."""
    return {
        "variables_dir": config_dict.placeholder(str),
        "trained_workdir": config_dict.placeholder(str),
    }


def starting_point(
    config: ml_collections.ConfigDict,
    model: nn.Module | None,
    variables: Variables | None,
    *,
    saved: epath.PathLike | None,
    trained_workdir: epath.PathLike,
) -> tuple[nn.Module, Variables]:
    """What an experiment starts from: ``model`` (default: the config's) and ``variables``, else
    the variables saved at ``saved``, else the baseline in ``trained_workdir`` (trained if absent).
    """
    if variables is None:
        variables = (
            load_variables(saved) if saved is not None else load_or_train(config, trained_workdir)
        )
    return (model if model is not None else training.model_from_config(config)), variables


def start_from(
    config: ml_collections.ConfigDict,
    section: ml_collections.ConfigDict,
    workdir: epath.Path,
    model: nn.Module | None,
    variables: Variables | None,
) -> tuple[nn.Module, Variables]:
    """:func:`starting_point` located by a stage's ``section.variables_dir`` and
    ``section.trained_workdir`` (default ``workdir/trained``)."""
    return starting_point(
        config,
        model,
        variables,
        saved=section.variables_dir,
        trained_workdir=section.trained_workdir or workdir / "trained",
    )


class Start(NamedTuple):
    """What a stage's run begins with (:func:`start_stage`), and the seconds it took."""

    section: ml_collections.ConfigDict
    recipe: dict[str, Any]
    workdir: epath.Path
    model: nn.Module
    variables: Variables
    splits: data.Splits
    seconds: float


def start_stage(
    config: ml_collections.ConfigDict,
    name: str,
    defaults: ml_collections.ConfigDict,
    validate: Callable[[ml_collections.ConfigDict], None],
    workdir: epath.PathLike,
    model: nn.Module | None = None,
    variables: Variables | None = None,
    splits: data.Splits | None = None,
) -> Start:
    """Stage ``name``'s section (:func:`section`) and the fine-tuning options that are on
    (``recipe.recipe``), both validated before any work; ``workdir`` created; the starting
    point (:func:`start_from`); ``splits`` (default: loaded from the config)."""
    started = time.perf_counter()
    found = section(config, name, defaults, validate)
    finetune_recipe = recipe.recipe(config)
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model, variables = start_from(config, found, workdir, model, variables)
    splits = splits if splits is not None else training.datasets_from_config(config)
    seconds = time.perf_counter() - started
    return Start(found, finetune_recipe, workdir, model, variables, splits, seconds)


StageBody = Callable[[ml_collections.ConfigDict, Start], dict[str, Any]]
StageRun = Callable[..., dict[str, Any]]


def stage_run(
    name: str,
    defaults: Callable[[], ml_collections.ConfigDict],
    validate: Callable[[ml_collections.ConfigDict], None],
) -> Callable[[StageBody], StageRun]:
    """Decorator: ``body(config, start)`` as stage ``name``'s ``run(config, workdir, *,
    model=None, variables=None, splits=None)``, ``start`` being :func:`start_stage` of section
    ``name`` (the starting point: ``model`` / ``variables``, else
    ``config.<name>.variables_dir``, else the baseline in ``config.<name>.trained_workdir``)."""

    def decorate(body: StageBody) -> StageRun:
        def run(
            config: ml_collections.ConfigDict,
            workdir: epath.PathLike,
            *,
            model: nn.Module | None = None,
            variables: Variables | None = None,
            splits: data.Splits | None = None,
        ) -> dict[str, Any]:
            start = start_stage(
                config, name, defaults(), validate, workdir, model, variables, splits
            )
            return body(config, start)

        run.__name__, run.__qualname__, run.__module__ = "run", "run", body.__module__
        run.__doc__ = (
            f"{body.__doc__}\n\n    The starting point (``model`` / ``variables``, else "
            f"``config.{name}.variables_dir``, else the baseline in "
            f"``config.{name}.trained_workdir``) and ``splits``: ``common.start_stage``."
        )
        return run

    return decorate


def start_digest(
    config: ml_collections.ConfigDict,
    variables: Variables | None,
    saved: epath.PathLike | None = None,
) -> str:
    """The identity of an experiment's starting point (as :func:`starting_point` picks it):
    the digest of ``variables`` or of the variables at ``saved``, else that of the baseline's
    fingerprint (which determines the variables it trains), without training anything."""
    if variables is None and saved is not None:
        variables = load_variables(saved)
    if variables is not None:
        return provenance.variables_digest(variables)
    return f"baseline:{baseline_fingerprint(config).digest}"


def load_variables(path: epath.PathLike) -> dict:
    """Variables saved with ``checkpoint.save_variables``, as host numpy arrays."""
    return jax.tree.map(np.asarray, checkpoint.load_variables(path))


def finetune_settings(
    config: ml_collections.ConfigDict,
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int | None = None,
    schedule: str = "constant",
    seed_offset: int = 0,
) -> dict[str, Any]:
    """Every field that determines a :func:`finetune` run besides its model and variables.

    The ``config.finetune`` options enter only when they are on (``recipe.recipe``), with the
    original schedule's fields under ``rewound_schedule`` when rewinding, so a run without them
    keeps the fingerprint it had before the options existed."""
    settings = {
        "epochs": epochs,
        "learning_rate": float(learning_rate),
        "batch_size": batch_size or config.train.batch_size,
        "schedule": schedule,
        "seed": config.train.seed + seed_offset,
        "optimizer": plain(config.optimizer, ("learning_rate", "schedule", "warmup_epochs")),
        "data": config.data,
    }
    options = recipe.recipe(config)
    if options.get("lr_rewind"):
        settings["rewound_schedule"] = {
            "learning_rate": float(config.optimizer.learning_rate),
            "schedule": config.optimizer.get("schedule", "constant"),
            "warmup_epochs": float(config.optimizer.get("warmup_epochs", 0.0)),
            "train_epochs": config.train.epochs,
        }
    return {**settings, **options}


def finetune(
    config: ml_collections.ConfigDict,
    model: nn.Module,
    splits: data.Splits,
    variables: Variables,
    *,
    workdir: epath.PathLike,
    unit: provenance.Fingerprint,
    epochs: int,
    learning_rate: float,
    batch_size: int | None = None,
    schedule: str = "constant",
    mask: Any = None,
    gradient_transform: optax.GradientTransformation | None = None,
    seed_offset: int = 0,
    teacher: tuple[nn.Module, Variables] | None = None,
) -> dict:
    """Fine-tune ``variables`` of ``model`` with the config's optimizer at ``learning_rate``
    (``recipe.finetune_optimizer``; ``config.finetune.lr_rewind``: the original schedule
    rewound).

    ``gradient_transform`` (e.g. weight sharing's tied cluster gradients) runs before the
    optimizer and ``xaijax.pruning.keep_pruned(mask)`` after it, so masked weights stay zero.
    With ``config.finetune.distill_weight > 0`` the loss distills from ``teacher`` (a model and
    its variables: the dense model the stage starts from), which is then required.
    Resumable in ``workdir``, which is tied to ``unit`` (the caller's unit of work: model and
    method) extended by :func:`finetune_settings`, the digests of ``variables`` and ``mask``
    and, when distilling, the teacher's model and digest.
    Returns the fine-tuned variables on the host (``variables`` unchanged when ``epochs == 0``).
    """
    options = recipe.finetune_section(config)
    distill = options.distill_weight > 0
    if distill and teacher is None:
        raise ValueError(
            "config.finetune.distill_weight > 0 needs a teacher: pass teacher=(model, variables)"
        )
    if epochs == 0:
        return dict(variables)
    settings = finetune_settings(
        config,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        schedule=schedule,
        seed_offset=seed_offset,
    )
    run_parts: dict[str, Any] = {
        "run": settings,
        "run_start": provenance.variables_digest(variables),
        "run_mask": None if mask is None else provenance.variables_digest(mask),
    }
    if distill:
        teacher_model, teacher_variables = teacher
        run_parts["run_teacher"] = {
            "model": provenance.model_identity(teacher_model),
            "variables": provenance.variables_digest(teacher_variables),
        }
    provenance.claim(
        workdir,
        unit.extend(**run_parts),
        what=f"the fine-tuning in {workdir}",
        policy=resume_policy(config),
    )
    batch_size = settings["batch_size"]
    tx = recipe.finetune_optimizer(
        config,
        steps_per_epoch=splits.train.num_examples // batch_size,
        epochs=epochs,
        learning_rate=learning_rate,
        schedule=schedule,
    )
    parts = [
        *([] if gradient_transform is None else [gradient_transform]),
        tx,
        *([] if mask is None else [pruning.keep_pruned(mask)]),
    ]
    tx = parts[0] if len(parts) == 1 else optax.chain(*parts)
    sample = (1, *splits.train.images.shape[1:])
    seed = settings["seed"]
    state = training.create_train_state(model, tx, seed, sample, variables=variables)
    state, _ = training.fit(
        state,
        splits.train,
        splits.validation if splits.validation is not None else splits.test,
        workdir=workdir,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        eval_batch_size=config.train.eval_batch_size,
        log_every_steps=config.train.log_every_steps,
        augment=training.augment_from_config(config),
        teacher=None
        if not distill
        else training.make_teacher(
            *teacher, weight=options.distill_weight, temperature=options.distill_temperature
        ),
    )
    return jax.device_get(state.variables)


def evaluate_test(model: nn.Module, variables: Variables, splits: data.Splits, batch_size: int):
    """``{'accuracy', 'loss'}`` on the test split."""
    return training.evaluate(model, splits.test, batch_size, variables=variables)


def zero_mask(params: Any) -> Any:
    """0/1 kernels marking the non-zero weights (None for other leaves), or None when no kernel has
    an exact zero: fine-tuning with it keeps pruned weights pruned."""

    def is_kernel(path: Any) -> bool:
        return jax.tree_util.keystr(path).endswith("['kernel']")

    leaves = jax.tree_util.tree_leaves_with_path(params)
    if not any(is_kernel(path) and np.any(np.asarray(leaf) == 0) for path, leaf in leaves):
        return None
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: (np.asarray(leaf) != 0).astype(np.float32) if is_kernel(path) else None,
        params,
    )


class Timer:
    """Wall time per named phase, accumulated over repeated phases."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            logging.info("%s: %.1f s", name, self.seconds[name])
