"""The stage interface and its registry.

A stage is one kind of compression experiment, named for its config section: ``defaults()`` gives
the section's fields, ``validate(section)`` raises ``ValueError`` naming a bad field before any
work, and ``run(config, workdir, *, model, variables, splits)`` runs it resumably in ``workdir``
from ``model`` / ``variables`` (or the config's own starting point when they are None) and returns
its results. For the pipeline a stage also says

* ``fingerprint(config, model, start_digest)``: what determines its results (default:
  :func:`section_fingerprint`), so a finished stage is reused only under the same inputs;
* ``varies``: a field of its section that the pipeline sets to each of ``config.compress.criteria``
  in turn (pruning compares criteria), or None;
* ``load_result(model, workdir)``: the model and variables it leaves for the stages after it
  (pruning's shrunk model), or None when later stages start from what it started from.

Adding a stage is one module that builds a :class:`Stage` and :func:`register`s it;
``xaijax.defaults.base_config`` then carries its section and ``config.compress.stages`` can
enable it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from xaijax import provenance
from xaijax.experiments import common


def section_fingerprint(
    name: str,
    starting_point_fields: tuple[str, ...] = (),
    neutral: Mapping[str, Any] | None = None,
) -> Callable[[ml_collections.ConfigDict, Any, str], provenance.Fingerprint]:
    """The default fingerprint of stage ``name``: the model, the digest of its starting
    variables, the data, optimizer and result-bearing training fields, and its whole section
    except the fields that only locate a starting point (the digest stands for them) and the
    ``neutral`` fields at their neutral values (``common.plain``)."""

    def fingerprint(
        config: ml_collections.ConfigDict, model: Any, start_digest: str
    ) -> provenance.Fingerprint:
        return provenance.fingerprint(
            unit=name,
            model=provenance.model_identity(model),
            start=start_digest,
            data=config.data,
            optimizer=config.optimizer,
            train=common.plain(config.train, common.NON_RESULT_TRAIN_FIELDS),
            **{name: common.plain(config[name], starting_point_fields, neutral)},
        )

    return fingerprint


@dataclasses.dataclass(frozen=True)
class Stage:
    """A registered experiment: its config section's name, defaults, validation and runner, and
    what the pipeline needs to chain it (see the module docstring)."""

    name: str
    defaults: Callable[[], ml_collections.ConfigDict]
    validate: Callable[[ml_collections.ConfigDict], None]
    run: Callable[..., dict[str, Any]]
    fingerprint: Callable[[ml_collections.ConfigDict, Any, str], provenance.Fingerprint]
    varies: str | None = None
    load_result: Callable[[Any, Any], tuple[Any, dict[str, Any]]] | None = None

    def section(self, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
        """This stage's section of ``config``, defaults merged in and validated."""
        return common.section(config, self.name, self.defaults(), self.validate)


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
