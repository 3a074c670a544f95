"""DeepLIFT variants on the seeds of a finished study, paired with the study's methods.

    python scripts/ablation.py --config configs/ablation_lenet5_fmnist.py \\
        --study_workdir runs/study_lenet5 --workdir runs/ablation_lenet5 [--seeds=0,1,2,3,4] \\
        [--variants=deeplift_magnitude,...]

Each variant x seed runs in ``<workdir>/<variant>/seed_<s>`` from copies of the study seed's
finished stages; rerunning resumes. ``<workdir>/rows.jsonl`` holds the variants' raw rows and
``<workdir>/ablation.md`` the paired comparisons; variants that belong to a regime
(``xaijax.study.regimes``, e.g. ``configs/regimes_lenet5_fmnist.py``) are compared per regime in
``<workdir>/regimes.md`` instead. ``--tables_only`` regenerates the tables from
``--rows`` and ``--study_rows`` without running anything.
"""

from __future__ import annotations

from absl import app, flags
from etils import epath

from xaijax import cli, report, study
from xaijax.study import ablation, regimes

_CONFIG = cli.config_flag()
_STUDY_WORKDIR = flags.DEFINE_string("study_workdir", None, "The finished study's workdir.")
_WORKDIR = cli.workdir_flag("Directory of the ablation.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"], "Seeds, comma separated.")
_VARIANTS = flags.DEFINE_list("variants", [], "Run only these variants (default: all).")
_INTERVAL = flags.DEFINE_enum("interval", "t", list(study.INTERVALS), "Paired interval method.")
_TABLES_ONLY = flags.DEFINE_bool("tables_only", False, "Only regenerate the tables.")
_ROWS = flags.DEFINE_string("rows", None, "--tables_only: the ablation's rows.jsonl.")
_STUDY_ROWS = flags.DEFINE_string("study_rows", None, "The study's rows.jsonl (default: in it).")
_OUTPUT = flags.DEFINE_string("output", None, "Tables file (default: beside the rows).")


def write_tables(rows: list[dict], study_rows_path: epath.Path, output: epath.Path) -> None:
    """``output`` (ablation.md) for plain variants; ``regimes.md`` beside it for regime variants
    (``xaijax.study.regimes``)."""
    seeds = {row["seed"] for row in rows}
    study_rows = [row for row in study.read_rows(study_rows_path) if row["seed"] in seeds]
    plain = [row for row in rows if "regime" not in row]
    in_regimes = [row for row in rows if "regime" in row]
    written = []
    if plain:
        text = ablation.tables(study_rows + plain, interval_method=_INTERVAL.value)
        written.append(report.write_text_atomic(output, text))
    if in_regimes:
        text = regimes.tables(study_rows, in_regimes, interval_method=_INTERVAL.value)
        written.append(report.write_text_atomic(output.with_name("regimes.md"), text))
    print(f"tables: {', '.join(map(str, written))}", flush=True)


def main(argv: list[str]) -> None:
    cli.check_no_arguments(argv)
    if _TABLES_ONLY.value:
        if not (_ROWS.value and _STUDY_ROWS.value):
            raise app.UsageError("--tables_only needs --rows and --study_rows")
        rows_path = epath.Path(_ROWS.value)
        output = epath.Path(_OUTPUT.value or rows_path.with_name("ablation.md"))
        write_tables(study.read_rows(rows_path), epath.Path(_STUDY_ROWS.value), output)
        return
    if not (_CONFIG.value and _STUDY_WORKDIR.value and _WORKDIR.value):
        raise app.UsageError("running needs --config, --study_workdir and --workdir")
    cli.set_up()
    config = _CONFIG.value
    variants = ablation.variants_from_config(config.ablation.variants)
    if _VARIANTS.value:
        unknown = set(_VARIANTS.value) - {v.name for v in variants}
        if unknown:
            raise app.UsageError(f"unknown variants {sorted(unknown)}")
        variants = tuple(v for v in variants if v.name in _VARIANTS.value)
    seeds = cli.integers(_SEEDS.value, "--seeds")
    workdir = epath.Path(_WORKDIR.value)
    rows = ablation.run(config, _STUDY_WORKDIR.value, workdir, variants, seeds)
    study_rows = epath.Path(_STUDY_ROWS.value or epath.Path(_STUDY_WORKDIR.value) / study.ROWS_FILE)
    write_tables(rows, study_rows, epath.Path(_OUTPUT.value or workdir / "ablation.md"))


if __name__ == "__main__":
    cli.run(main, required=())
