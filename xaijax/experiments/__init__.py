"""Compression experiments (prune, share, quantize, joint): resumable stages over a config,
registered in ``xaijax.experiments.stage.STAGES`` (importing this package registers them).
``joint`` (pruning levels and bit widths under one byte budget) runs only when listed in
``config.compress.stages``."""

from xaijax.experiments import joint, prune, quantize, share
from xaijax.experiments.stage import STAGES, Stage, get_stage, register

__all__ = ["STAGES", "Stage", "get_stage", "joint", "prune", "quantize", "register", "share"]
