"""The training config schema and its validation.

A training config is an ``ml_collections.ConfigDict`` with four sections; :func:`training_config`
builds one with every field and its default (``xaijax.defaults.base_config``, which the
``configs/*.py`` files start from, adds the experiment sections):

* ``data``: ``name`` (see ``xaijax.data.DATASETS``), ``data_dir`` (None: environment variable or
  default location), ``validation_size`` (examples held out of the training split; 0: evaluate on
  the test split during training), ``standardize`` (per-channel mean/std of the training split),
  ``augment`` (``none`` | ``flip`` | ``crop_flip``) and ``crop_padding`` (pixels, for crops).
* ``model``: ``name`` (a key of ``xaijax.models.MODELS``, or a user's model by import path,
  ``"package.module:ClassName"``), ``num_classes``, ``widths`` (None or a mapping layer name ->
  output units; only for a model with a ``widths`` field) and, optionally (the field is absent by
  default, so existing fingerprints do not change), ``kwargs``: further constructor arguments of
  the model, e.g. ``config.model.kwargs = {"width": 16}``. A user model must take ``train`` in
  its ``__call__`` (training runs ``model(x, train=True)``) and return ``num_classes`` logits.
* ``optimizer``: see :func:`xaijax.training.make_optimizer`.
* ``train``: ``epochs``, ``batch_size`` (global), ``eval_batch_size``, ``seed``,
  ``log_every_steps``, ``checkpoint_every_steps`` (0: only at epoch ends), ``keep_checkpoints``,
  ``eval_every_epochs``, ``multihost`` (call ``jax.distributed.initialize()``).
* ``resume``: what a rerun in the same workdir does with a cached result whose inputs differ
  from the config's (``xaijax.provenance``): ``recompute`` it and everything after it (logged
  and reported), or refuse (``strict``) with an error naming the changed fields.

:func:`validate_config` checks all of it before any work and raises ``ValueError`` naming the
offending field. A config file that starts from another (``configs/study_*.py``) loads it with
:func:`sibling_config`.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections
from ml_collections import config_dict

from xaijax import data
from xaijax.provenance import POLICIES as RESUME_POLICIES

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")
AUGMENTATIONS = ("none", "flip", "crop_flip")
_DATASETS_WITH_FILES = ("fashion_mnist", "cifar10")


def training_config() -> ml_collections.ConfigDict:
    """The training sections (``data``, ``model``, ``optimizer``, ``train``) and ``resume``, every
    field at its default; ``xaijax.defaults.base_config`` adds the experiment sections."""
    config = ml_collections.ConfigDict()
    config.resume = "recompute"
    config.data = ml_collections.ConfigDict(
        {
            "name": "fashion_mnist",
            "data_dir": config_dict.placeholder(str),
            "validation_size": 0,
            "standardize": False,
            "augment": "none",
            "crop_padding": 0,
        }
    )
    config.model = ml_collections.ConfigDict(
        {"name": "lenet5", "num_classes": 10, "widths": config_dict.placeholder(dict)}
    )
    config.optimizer = ml_collections.ConfigDict(
        {
            "name": "adam",
            "learning_rate": 1e-3,
            "momentum": 0.9,
            "nesterov": False,
            "weight_decay": 0.0,
            "schedule": "constant",
            "warmup_epochs": 0.0,
            "decay_epochs": (),
            "decay_factor": 0.1,
            "grad_clip_norm": 0.0,
        }
    )
    config.train = ml_collections.ConfigDict(
        {
            "epochs": 10,
            "batch_size": 128,
            "eval_batch_size": 500,
            "seed": 0,
            "log_every_steps": 100,
            "checkpoint_every_steps": 0,
            "keep_checkpoints": 3,
            "eval_every_epochs": 1,
            "multihost": False,
        }
    )
    return config


def _fail(field: str, requirement: str, value: Any) -> None:
    raise ValueError(f"config.{field} {requirement}, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _require_int(config: Any, field: str, minimum: int) -> int:
    value = _get(config, field)
    if not _is_int(value) or value < minimum:
        _fail(field, f"must be an integer >= {minimum}", value)
    return value


def _require_number(config: Any, field: str, low: float, high: float | None = None) -> float:
    value = _get(config, field)
    if not _is_number(value) or value < low or (high is not None and value >= high):
        bound = f"in [{low}, {high})" if high is not None else f">= {low}"
        _fail(field, f"must be a number {bound}", value)
    return float(value)


def _require_choice(config: Any, field: str, choices: tuple[str, ...]) -> str:
    value = _get(config, field)
    if value not in choices:
        _fail(field, f"must be one of {choices}", value)
    return value


def _get(config: Any, field: str) -> Any:
    node = config
    for part in field.split("."):
        try:
            node = node[part]
        except (KeyError, AttributeError, TypeError):
            raise ValueError(f"config.{field} is missing") from None
    return node


def validate_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Check every field a training run reads; raise ``ValueError`` naming the first bad one."""
    from xaijax import models  # Late import: models is heavier and not needed for the schema.

    name = _require_choice(config, "data.name", data.DATASETS)
    if name in _DATASETS_WITH_FILES:
        directory = (
            data.fashion_mnist_dir(config.data.data_dir)
            if name == "fashion_mnist"
            else data.cifar10_dir(config.data.data_dir)
        )
        if directory is None:
            _fail(
                "data.data_dir",
                f"must name the local {name} directory (or set ${data.CIFAR10_ENV})",
                config.data.data_dir,
            )
        if not directory.is_dir():
            _fail(
                "data.data_dir",
                f"must be an existing directory ({directory} is missing)",
                config.data.data_dir,
            )
    _require_int(config, "data.validation_size", 0)
    _get(config, "data.standardize")
    augment = _require_choice(config, "data.augment", AUGMENTATIONS)
    crop_padding = _require_int(config, "data.crop_padding", 0)
    if augment == "crop_flip" and crop_padding < 1:
        _fail("data.crop_padding", "must be >= 1 with augment='crop_flip'", crop_padding)

    model_name = _get(config, "model.name")
    known = isinstance(model_name, str) and (model_name in models.MODELS or ":" in model_name)
    if not known:
        _fail(
            "model.name",
            f"must be one of {tuple(models.MODELS)} or an import path 'package.module:ClassName'",
            model_name,
        )
    num_classes = _require_int(config, "model.num_classes", 1)
    if num_classes != data.NUM_CLASSES[name]:
        _fail(
            "model.num_classes",
            f"must equal the {data.NUM_CLASSES[name]} classes of {name}",
            num_classes,
        )
    widths = _get(config, "model.widths")
    if widths is not None:
        if not isinstance(widths, Mapping | ml_collections.ConfigDict):  # deepcopy makes one
            _fail("model.widths", "must be None or a mapping layer name -> width", widths)
        for layer, width in widths.items():
            if not _is_int(width) or width < 1:
                _fail(f"model.widths.{layer}", "must be an integer >= 1", width)
    _check_model_builds(
        model_name, num_classes, _as_dict(widths), model_kwargs(config), data.IMAGE_SHAPES[name]
    )

    _require_choice(config, "optimizer.name", OPTIMIZERS)
    learning_rate = _get(config, "optimizer.learning_rate")
    if not _is_number(learning_rate) or learning_rate <= 0:
        _fail("optimizer.learning_rate", "must be a number > 0", learning_rate)
    _require_number(config, "optimizer.momentum", 0.0, 1.0)
    _get(config, "optimizer.nesterov")
    _require_number(config, "optimizer.weight_decay", 0.0)
    schedule = _require_choice(config, "optimizer.schedule", SCHEDULES)
    _require_number(config, "optimizer.grad_clip_norm", 0.0)

    epochs = _require_int(config, "train.epochs", 1)
    warmup = _require_number(config, "optimizer.warmup_epochs", 0.0)
    if warmup >= epochs:
        _fail("optimizer.warmup_epochs", f"must be < train.epochs ({epochs})", warmup)
    if schedule == "step":
        boundaries = _get(config, "optimizer.decay_epochs")
        if (
            not isinstance(boundaries, tuple | list)
            or not boundaries
            or not all(_is_number(b) and 0 < b < epochs for b in boundaries)
            or list(boundaries) != sorted(boundaries)
        ):
            _fail(
                "optimizer.decay_epochs",
                f"must be increasing epochs in (0, {epochs}) for schedule='step'",
                boundaries,
            )
        factor = _get(config, "optimizer.decay_factor")
        if not _is_number(factor) or not 0 < factor <= 1:
            _fail("optimizer.decay_factor", "must be a number in (0, 1]", factor)

    _require_int(config, "train.batch_size", 1)
    _require_int(config, "train.eval_batch_size", 1)
    _require_int(config, "train.seed", 0)
    _require_int(config, "train.log_every_steps", 1)
    _require_int(config, "train.checkpoint_every_steps", 0)
    _require_int(config, "train.keep_checkpoints", 1)
    _require_int(config, "train.eval_every_epochs", 1)
    _get(config, "train.multihost")
    _require_choice(config, "resume", RESUME_POLICIES)
    return config


def _check_model_builds(
    name: str,
    num_classes: int,
    widths: dict[str, int] | None,
    kwargs: dict[str, Any],
    image_shape: tuple[int, ...],
) -> None:
    """Build the model and trace ``model.init`` and ``model.apply(..., train=True)`` on one input
    of the dataset's shape (no compilation, no FLOPs); the logits must have ``num_classes``."""
    import inspect

    import jax
    import jax.numpy as jnp

    from xaijax import models

    try:
        model = models.get_model(
            name, num_classes=num_classes, widths=widths, model_kwargs=kwargs or None
        )
    except ValueError as err:
        raise ValueError(f"config.model: {err}") from err
    if "train" not in inspect.signature(model.__call__).parameters:
        _fail(
            "model.name",
            "must name a model whose __call__ takes `train` (training runs model(x, train=True))",
            name,
        )
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)

    def forward(x):
        variables = model.init(jax.random.key(0), x, train=False)
        rngs = {"dropout": jax.random.key(0)}
        return model.apply(variables, x, train=True, mutable=True, rngs=rngs)[0]

    try:
        logits = jax.eval_shape(forward, x)
    except Exception as err:  # Any failure to trace the model is a configuration error.
        raise ValueError(
            f"config.model: {name!r} with widths={widths} and kwargs={kwargs} cannot be built "
            f"for inputs of shape {image_shape}: {err}"
        ) from err
    if getattr(logits, "shape", None) != (1, num_classes):
        raise ValueError(
            f"config.model: {name!r} must return logits of shape (batch, {num_classes}) "
            f"(config.model.num_classes), got {jax.tree.map(lambda a: a.shape, logits)}"
        )


def _as_dict(widths: Any) -> dict[str, int] | None:
    return None if widths is None else {str(k): int(v) for k, v in widths.items()}


def model_widths(config: ml_collections.ConfigDict) -> dict[str, int] | None:
    """``config.model.widths`` as a plain dict (or None)."""
    return _as_dict(config.model.widths)


def model_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """``config.model.kwargs`` (absent or None: none) as a plain dict of constructor arguments."""
    kwargs = config.model.get("kwargs")
    if kwargs is None:
        return {}
    if isinstance(kwargs, ml_collections.ConfigDict):
        kwargs = kwargs.to_dict()
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        _fail("model.kwargs", "must be None or a mapping argument name -> value", kwargs)
    return dict(kwargs)


def sibling_config(config_file: str | os.PathLike, name: str) -> ml_collections.ConfigDict:
    """``get_config()`` of the config file ``<name>.py`` in the folder of ``config_file`` (a config
    file's ``__file__``), loaded as a module of its own: how a config starts from another."""
    path = Path(config_file).with_name(f"{name}.py")
    if not path.is_file():
        raise ValueError(f"no config file {name!r} beside {config_file}: {path} is missing")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
