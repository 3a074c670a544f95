"""The main job: one resumable compression pipeline and its report.

``run(config, workdir)`` goes, in order, through

1. ``baseline``: train the float model (or load it) and measure it;
2. ``explain``: DeepLIFT heatmaps of test images and per-layer unit importance under every
   criterion of ``config.compress.criteria``;
3. ``prune``: for every criterion, importance-driven pruning (``config.prune``) with fine-tuning;
   the model pruned by ``config.compress.carry`` (DeepLIFT by default), physically shrunk, feeds
   the next stages;
4. ``share``: weight sharing of the pruned model (``config.share``), DeepLIFT-weighted k-means
   against plain and magnitude-weighted k-means;
5. ``quantize``: mixed-precision integer quantization of the pruned model (``config.quantize``),
   bit allocation strategies side by side;
6. ``report``: ``report.md``, ``results.json`` and figures in ``workdir``;
7. ``artifact`` (``config.compress.export_artifact``, default on): the final compressed model as a
   deployable artifact in ``workdir/artifact`` (``xaijax.artifact``: which model it holds is
   documented in ``xaijax.artifact.final``); the report gives its accuracy, measured with the
   artifact itself, and its size on disk next to the computed size. It is rewritten on every
   run (a few seconds) and is no stage: it has no fingerprint and changes none.
8. ``consistency`` (``config.compress.explain_consistency``, default on, with ``prune``): how far
   each pruned model's DeepLIFT explanations moved from the dense model's on the first
   ``config.compress.consistency_examples`` test images (``xaijax.experiments.consistency``);
   like the artifact it reruns every time (seconds), with no fingerprint.

Each stage lives in ``workdir/<stage>`` and is finished when its ``stage.json`` exists (written
atomically, last). ``stage.json`` records the stage's fingerprint (``xaijax.provenance``): the
config fields the stage reads and the digest of the variables it starts from, which chains it to
the stage before. A rerun skips a finished stage whose fingerprint is unchanged, resumes
unfinished ones from their own checkpoints and per-run result files, and recomputes a stage whose
inputs changed (so everything after a changed stage is recomputed too, unless its starting
variables come out bit-identical), or refuses with ``config.resume='strict'``. The report lists
each stage as reused, computed or recomputed, with the changed fields.

Modules: ``section`` (the ``config.compress`` section: :func:`defaults`, :func:`validate`, and
:func:`check_config` over every section the pipeline reads), ``runner`` (:func:`run_stage`,
:func:`run`: the stages in order, each reused or computed under its fingerprint) and ``summary``
(the report: :func:`stage_rows`, :func:`criteria_tables`, :func:`write_report`).
"""

from xaijax.pipeline.runner import run, run_stage
from xaijax.pipeline.section import check_config, defaults, validate
from xaijax.pipeline.summary import (
    accuracy_vs_compression,
    criteria_tables,
    provenance_rows,
    stage_rows,
    write_report,
)

__all__ = [
    "accuracy_vs_compression",
    "check_config",
    "criteria_tables",
    "defaults",
    "provenance_rows",
    "run",
    "run_stage",
    "stage_rows",
    "validate",
    "write_report",
]
