"""Studies: does explaining a network with DeepLIFT make it compress better, over seeds?

``run(config, workdir, seeds)`` runs the whole pipeline (``xaijax.pipeline``) once per seed in
``workdir/seed_<s>``, with the seed driving everything random (:func:`seed_config`: weight
initialisation, data order, validation split, reference samples, random scores, fine-tuning).
Each replicate has its own baseline. Rerunning resumes: the pipeline reuses a finished stage
when its fingerprint is unchanged, so a finished seed costs only its reload.

After every seed, ``workdir/rows.jsonl`` is rewritten atomically from the per-seed
``results.json`` files (never edited by hand). One JSON object per line and per seed x stage x
method x setting:

* ``seed``, ``model``, ``dataset``, ``stage`` (``baseline`` | ``prune`` | ``share`` |
  ``quantize``), ``method`` (``float32``; the pruning criterion; the weight-sharing importance;
  the bit-allocation strategy), ``setting`` (what the methods are compared at: the pruning
  sparsities and schedule; ``{"bits"}``; ``{"budget"}`` average bits), ``recipe`` (the
  fine-tuning every method of the stage gets), ``fingerprint`` (the stage's, from
  ``results["provenance"]``);
* ``accuracy``: test accuracy after fine-tuning (quantize: after QAT), and
  ``accuracy_before_finetune`` (pruned / shared / PTQ; None for the baseline);
* ``params`` (stored parameters: the physically shrunk model after structured pruning),
  ``nonzero_params``, ``flops`` (masked), ``size_bytes`` (storage, as in the pipeline's report);
  params and FLOPs are None for ``share`` and ``quantize``, which keep the carried pruned model;
* ``quantize`` only: ``layer_bits`` (bits per layer) and ``avg_bits``.

:func:`summarize` turns rows into per-cell statistics (JSON for figures), :func:`tables` into
Markdown, :func:`plot` into accuracy ± std figures; :func:`write_report` does all three. Cells are
mean ± sample std over seeds; DeepLIFT (:data:`DEEPLIFT_METHOD`) is compared with every other
method of its cell on paired per-seed differences (``xaijax.statistics``).

Layout (each module imports only the ones above it): ``rows`` (the row schema, reading and writing
``rows.jsonl``), ``runner`` (:func:`run`, :func:`seed_config`), ``summary`` (:func:`summarize`,
paired :func:`compare`), ``tables`` (Markdown, figures, :func:`write_report`), ``ablation``
(DeepLIFT variants run against a finished study's seeds).
"""

from xaijax.study.rows import (
    PRUNE_SETTING,
    RECIPE_FIELDS,
    ROWS_FILE,
    STAGES,
    check_seeds,
    read_rows,
    recorded_seeds,
    rows_from_results,
    rows_from_workdir,
    seed_dir,
    write_rows,
)
from xaijax.study.runner import CONFIG_FILE, SEED_FIELDS, run, seed_config, seed_fields
from xaijax.study.summary import (
    BOOTSTRAP_RESAMPLES,
    COMPARED,
    DEEPLIFT_METHOD,
    INTERVALS,
    MEASURES,
    compare,
    interval,
    interval_name,
    is_deeplift,
    setting_label,
    summarize,
)
from xaijax.study.tables import (
    COLUMN_LABELS,
    LABELS,
    allocation_differences,
    method_table,
    plot,
    tables,
    verdict_words,
    write_report,
)

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "COLUMN_LABELS",
    "COMPARED",
    "CONFIG_FILE",
    "DEEPLIFT_METHOD",
    "INTERVALS",
    "LABELS",
    "MEASURES",
    "PRUNE_SETTING",
    "RECIPE_FIELDS",
    "ROWS_FILE",
    "SEED_FIELDS",
    "STAGES",
    "allocation_differences",
    "check_seeds",
    "compare",
    "interval",
    "interval_name",
    "is_deeplift",
    "method_table",
    "plot",
    "read_rows",
    "recorded_seeds",
    "rows_from_results",
    "rows_from_workdir",
    "run",
    "seed_config",
    "seed_dir",
    "seed_fields",
    "setting_label",
    "summarize",
    "tables",
    "verdict_words",
    "write_report",
    "write_rows",
]
