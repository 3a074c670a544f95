"""Do compressed models still explain themselves the same way? Over a finished study's seeds.

    python scripts/consistency.py --study_workdir=runs/study_lenet5 [--seeds=0,1,2,3,4] \\
        [--output=runs/study_lenet5/consistency] [--examples=10000] [--top_fraction=0.1]

Per seed: the dense model's DeepLIFT maps (true label, zero reference) against each pruning
criterion's model, and against the next seed's dense model (the yardstick of "same"); see
``xaijax.experiments.consistency_study``. Writes ``<output>/rows.jsonl`` (one row per seed x
method), ``<output>/consistency.md`` (per-method means, paired t intervals DeepLIFT-pruned vs
the other pruned models and every pruned model vs the yardstick, per-seed and per-class tables)
and the figures (heatmaps side by side, agreement against non-zero parameters). Trains nothing.
``--tables_only`` rewrites the Markdown and the size figures from ``<output>/rows.jsonl``.
"""

from __future__ import annotations

import json

import ml_collections
from absl import flags
from etils import epath

from xaijax import cli, study

_STUDY_WORKDIR = flags.DEFINE_string("study_workdir", None, "A finished study's workdir.")
_SEEDS = flags.DEFINE_list("seeds", [], "Seeds, comma separated (default: the study's).")
_OUTPUT = flags.DEFINE_string("output", None, "Output folder (default: <study>/consistency).")
_EXAMPLES = flags.DEFINE_integer("examples", None, "Test images compared (default: all).")
_BATCH = flags.DEFINE_integer("batch_size", 256, "DeepLIFT batch size.")
_FRACTION = flags.DEFINE_float("top_fraction", 0.1, "Fraction of pixels in the top-k overlap.")
_RULE = flags.DEFINE_enum("rule", "rescale", ["rescale", "reveal_cancel"], "DeepLIFT rule.")
_IMAGES = flags.DEFINE_integer("num_images", 6, "Test images in the heatmap figure.")
_CONFIDENCE = flags.DEFINE_float("confidence", 0.95, "Confidence of the paired t intervals.")
_TABLES_ONLY = flags.DEFINE_bool("tables_only", False, "Only rewrite tables from rows.jsonl.")

ROWS_FILE = "rows.jsonl"


def main(argv: list[str]) -> None:
    cli.check_no_arguments(argv)
    from xaijax.experiments import consistency_study

    study_dir = epath.Path(_STUDY_WORKDIR.value)
    output = epath.Path(_OUTPUT.value) if _OUTPUT.value else study_dir / "consistency"
    if _TABLES_ONLY.value:
        rows = study.read_rows(output / ROWS_FILE)
        path = consistency_study.write_report(output, rows, _CONFIDENCE.value)
        print(f"report: {path}", flush=True)
        return
    recorded = json.loads((study_dir / study.CONFIG_FILE).read_text())
    config = ml_collections.ConfigDict(recorded["config"])
    seeds = cli.integers(_SEEDS.value, "--seeds") if _SEEDS.value else list(recorded["seeds"])
    cli.set_up()
    rows = consistency_study.study_rows(
        study_dir,
        study.check_seeds(seeds),
        lambda seed: study.seed_config(config, seed),
        num_examples=_EXAMPLES.value,
        batch_size=_BATCH.value,
        fraction=_FRACTION.value,
        rule=_RULE.value,
        figure_dir=output,
        num_images=_IMAGES.value,
    )
    study.write_rows(output / ROWS_FILE, rows)
    path = consistency_study.write_report(output, rows, _CONFIDENCE.value)
    print(f"rows: {output / ROWS_FILE}\nreport: {path}", flush=True)


if __name__ == "__main__":
    cli.run(main, required=["study_workdir"])
