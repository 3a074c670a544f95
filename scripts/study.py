"""A study: the whole pipeline once per seed, then tables with paired intervals and figures.

    python scripts/study.py --config configs/study_lenet5_fmnist.py --workdir runs/study_lenet5 \\
        [--seeds=0,1,2,3,4] [--interval=t|bootstrap] [--config.prune.conv_sparsity=0.6 ...]

Each seed runs in ``<workdir>/seed_<s>``; rerunning the same command resumes (finished stages
are reused while their inputs are unchanged). After every seed ``<workdir>/rows.jsonl`` holds the
raw rows; at the end ``<workdir>/study.md``, ``study.json`` (the numbers for figures) and
``study_<stage>.png`` are written from those rows (``scripts/study_tables.py`` regenerates them).
"""

from __future__ import annotations

from absl import flags
from etils import epath

from xaijax import cli, sharding, study

_CONFIG = cli.config_flag()
_WORKDIR = cli.workdir_flag("Directory of the study (one folder per seed).")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"], "Seeds, comma separated.")
_INTERVAL = flags.DEFINE_enum("interval", "t", list(study.INTERVALS), "Paired interval method.")
_CONFIDENCE = flags.DEFINE_float("confidence", 0.95, "Confidence level of the intervals.")


def main(argv: list[str]) -> None:
    cli.start(argv)
    config = _CONFIG.value
    sharding.initialize_distributed(config)
    seeds = cli.integers(_SEEDS.value, "--seeds")
    workdir = epath.Path(_WORKDIR.value)
    rows = study.run(config, workdir, seeds)
    output = workdir / "study.md"
    study.write_report(rows, output, interval_method=_INTERVAL.value, confidence=_CONFIDENCE.value)
    print(f"rows: {workdir / study.ROWS_FILE}\nreport: {output}", flush=True)


if __name__ == "__main__":
    cli.run(main)
