"""Sweep importance criteria x sparsities x granularities of one-shot pruning: CSV and plots.

    python scripts/prune_sweep.py --config configs/lenet5_fmnist.py --workdir runs/lenet5_sweep \\
        [--criteria deeplift,taylor,magnitude,random] [--sparsities 0.3,0.5,0.7,0.9] \\
        [--granularities unit,weight] [--config.prune.finetune_epochs=1 ...]

See ``xaijax.experiments.sweep.sweep``: rows in ``<workdir>/sweep.csv`` (a rerun skips finished
rows), plots in ``<workdir>/sweep_<granularity>_{sparsity,flops}.png``.
"""

from __future__ import annotations

from absl import app, flags
from etils import epath

from xaijax import cli, report
from xaijax.experiments import sweep

_CONFIG = cli.config_flag()
_WORKDIR = cli.workdir_flag("Directory for the sweep's outputs.")
_CRITERIA = flags.DEFINE_list("criteria", "deeplift,taylor,magnitude,random", "Criteria to sweep.")
_SPARSITIES = flags.DEFINE_list("sparsities", "0.3,0.5,0.7,0.9", "Fractions to remove.")
_GRANULARITIES = flags.DEFINE_list("granularities", "unit,weight", "unit, weight and/or hybrid.")


def main(argv: list[str]) -> None:
    cli.start(argv)
    try:
        sparsities = [float(s) for s in _SPARSITIES.value]
    except ValueError as error:
        raise app.UsageError(f"--sparsities must be numbers: {error}") from error
    workdir = epath.Path(_WORKDIR.value)
    rows = sweep.sweep(
        _CONFIG.value,
        workdir,
        criteria=_CRITERIA.value,
        sparsities=sparsities,
        granularities=_GRANULARITIES.value,
    )
    columns = (
        "granularity",
        "criterion",
        "sparsity",
        "accuracy_before_finetune",
        "accuracy_after_finetune",
        "flops",
        "flops_dense",
    )
    print(report.markdown_table(rows, columns), flush=True)
    print(f"rows in {workdir / 'sweep.csv'}", flush=True)


if __name__ == "__main__":
    cli.run(main)
