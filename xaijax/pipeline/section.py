"""The pipeline's own config section, ``config.compress``, and the check of a whole config."""

from __future__ import annotations

import ml_collections

from xaijax import config_utils, experiments, importance
from xaijax.experiments import common, recipe, sections


def defaults() -> ml_collections.ConfigDict:
    """The ``config.compress`` section and its defaults."""
    return ml_collections.ConfigDict(
        {
            "stages": ("prune", "share", "quantize"),  # Registered stages, in the paper's order.
            "criteria": ("deeplift", "magnitude", "taylor", "random"),
            "carry": "deeplift",
            "explain_examples": 8,
            "importance_examples": 1000,
            # Write <workdir>/artifact (xaijax.artifact) last; no stage's fingerprint reads it.
            "export_artifact": True,
            # Dense vs pruned DeepLIFT maps in the report; no stage's fingerprint reads these.
            "explain_consistency": True,
            "consistency_examples": 500,
        }
    )


def validate(section: ml_collections.ConfigDict) -> None:
    """Raise ``ValueError`` naming the first bad ``config.compress`` field."""
    unknown = [stage for stage in section.stages if stage not in experiments.STAGES]
    if unknown:
        raise ValueError(
            f"config.compress.stages has unknown stages {unknown}; "
            f"registered: {tuple(experiments.STAGES)}"
        )
    if not section.criteria:
        raise ValueError("config.compress.criteria must name at least one criterion")
    for name in section.criteria:
        importance.get_criterion(name)
    if section.carry not in section.criteria:
        raise ValueError(
            f"config.compress.carry ({section.carry!r}) must be one of config.compress.criteria "
            f"{tuple(section.criteria)}"
        )
    minimums = {"explain_examples": 1, "importance_examples": 1, "consistency_examples": 1}
    sections.check_integers(section, "compress", minimums)
    for field in ("export_artifact", "explain_consistency"):
        if not isinstance(section[field], bool):
            raise ValueError(
                f"config.compress.{field} must be True or False, got {section[field]!r}"
            )


def check_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Raise ``ValueError`` naming the first bad field of ``config`` (every section the pipeline
    reads); returns the ``compress`` section."""
    section = common.section(config, "compress", defaults(), validate)
    config_utils.validate_config(config)
    recipe.finetune_section(config)
    for name in section.stages:
        experiments.get_stage(name).section(config)
    return section
