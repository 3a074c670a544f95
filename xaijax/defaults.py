"""The full config with every field at its default: what the ``configs/*.py`` files start from.

It holds the training sections (``xaijax.config_utils.training_config``), one section per
registered stage (``xaijax.experiments.STAGES``: ``prune``, ``share``, ``quantize``, ``joint``),
the fine-tuning recipe every stage shares (``finetune``: ``xaijax.experiments.recipe``) and the
pipeline's ``compress`` section, so that any field can be overridden from the command line
(``--config.prune.conv_sparsity=0.6``). This module sits above the experiments and the pipeline;
the training stack below never imports it.
"""

from __future__ import annotations

import ml_collections

from xaijax import config_utils, pipeline
from xaijax.experiments import STAGES, recipe


def base_config() -> ml_collections.ConfigDict:
    """Every section with every field at its default."""
    config = config_utils.training_config()
    for name, stage in STAGES.items():
        config[name] = stage.defaults()
    config.finetune = recipe.finetune_defaults()
    config.compress = pipeline.defaults()
    return config
