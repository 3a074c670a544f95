"""Regenerate a study's tables, summary JSON and figures from its raw rows alone.

    python scripts/study_tables.py --rows=runs/study_lenet5/rows.jsonl \\
        [--output=runs/study_lenet5/study.md] [--interval=t|bootstrap] [--confidence=0.95] \\
        [--sequential_rows=docs/study/lenet5_fmnist/rows.jsonl]

Writes ``--output`` (Markdown), ``<output stem>.json`` and ``<output stem>_<stage>.png`` beside
it. No JAX, no training: only ``xaijax.study`` over the rows.
"""

from __future__ import annotations

from absl import flags
from etils import epath

from xaijax import cli, report, study
from xaijax.study import sequential

_ROWS = flags.DEFINE_string("rows", None, "A study's rows.jsonl.")
_OUTPUT = flags.DEFINE_string(
    "output", None, "Markdown file to write (default: study.md beside --rows)."
)
_INTERVAL = flags.DEFINE_enum("interval", "t", list(study.INTERVALS), "Paired interval method.")
_CONFIDENCE = flags.DEFINE_float("confidence", 0.95, "Confidence level of the intervals.")
_SEQUENTIAL = flags.DEFINE_string(
    "sequential_rows",
    None,
    "A study's rows.jsonl whose quantize rows are the sequential pipeline: joint rows are "
    "compared with them at about equal bytes (xaijax.study.sequential), appended to --output.",
)


def main(argv: list[str]) -> None:
    cli.check_no_arguments(argv)
    rows_path = epath.Path(_ROWS.value)
    output = epath.Path(_OUTPUT.value) if _OUTPUT.value else rows_path.parent / "study.md"
    rows = study.read_rows(rows_path)
    options = {"interval_method": _INTERVAL.value, "confidence": _CONFIDENCE.value}
    study.write_report(rows, output, **options)
    if _SEQUENTIAL.value:
        seeds = {row["seed"] for row in rows}
        others = [r for r in study.read_rows(_SEQUENTIAL.value) if r["seed"] in seeds]
        text = sequential.table(rows + [r for r in others if r["stage"] == "quantize"], **options)
        report.write_text_atomic(output, output.read_text() + "\n" + text + "\n")
    print(f"report: {output}", flush=True)


if __name__ == "__main__":
    cli.run(main, required=["rows"])
