"""Compression experiments (prune, share, quantize): resumable stages over a config, registered in
``xaijax.experiments.stage.STAGES`` (importing this package registers them)."""

from xaijax.experiments import prune, quantize, share
from xaijax.experiments.stage import STAGES, Stage, get_stage, register

__all__ = ["STAGES", "Stage", "get_stage", "prune", "quantize", "register", "share"]
