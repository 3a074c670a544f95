"""The stage interface and its registry.

A stage is one kind of compression experiment, named for its config section: ``defaults()`` gives
the section's fields, ``validate(section)`` raises ``ValueError`` naming a bad field before any
work, and ``run(config, workdir, *, model, variables, splits)`` runs it resumably in ``workdir``
from ``model`` / ``variables`` (or the config's own starting point when they are None) and returns
its results. Adding a stage is one module that builds a :class:`Stage` and :func:`register`s it;
``xaijax.defaults.base_config`` then carries its section and the pipeline can enable it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import ml_collections


@dataclasses.dataclass(frozen=True)
class Stage:
    """A registered experiment: its config section's name, defaults, validation and runner."""

    name: str
    defaults: Callable[[], ml_collections.ConfigDict]
    validate: Callable[[ml_collections.ConfigDict], None]
    run: Callable[..., dict[str, Any]]


STAGES: dict[str, Stage] = {}


def register(stage: Stage) -> Stage:
    """Add ``stage`` to :data:`STAGES` (a name is registered once)."""
    if stage.name in STAGES and STAGES[stage.name] != stage:
        raise ValueError(f"a stage named {stage.name!r} is already registered")
    STAGES[stage.name] = stage
    return stage


def get_stage(name: str) -> Stage:
    """The registered stage ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; registered: {tuple(STAGES)}")
    return STAGES[name]
