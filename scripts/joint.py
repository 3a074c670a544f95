"""Joint pruning and bit allocation under byte budgets (see ``xaijax.experiments.joint``).

    python scripts/joint.py --config configs/lenet5_fmnist.py --workdir runs/lenet5_joint \\
        [--config.joint.variables_dir=runs/lenet5/baseline/variables \\
         --config.joint.budgets='(0.03,0.06)' --config.joint.finetune_epochs=2]

Without ``--config.joint.variables_dir`` it trains (or reuses) the float baseline in
``--config.joint.trained_workdir`` (default ``<workdir>/trained``).
"""

from __future__ import annotations

from etils import epath

from xaijax import cli
from xaijax.experiments import joint

_CONFIG = cli.config_flag()
_WORKDIR = cli.workdir_flag("Directory for results and fine-tuning runs.")


def main(argv: list[str]) -> None:
    cli.start(argv)
    results = joint.run(_CONFIG.value, epath.Path(_WORKDIR.value))
    float_row = results["float"]
    print(f"float test accuracy {float_row['accuracy']:.4f}, {float_row['bytes'] / 1024:.1f} KiB")
    cli.print_table(results, _WORKDIR.value)


if __name__ == "__main__":
    cli.run(main)
