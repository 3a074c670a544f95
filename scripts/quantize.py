"""Mixed-precision quantization experiment (see ``xaijax.experiments.quantize``).

    python scripts/quantize.py --config configs/lenet5_fmnist.py --workdir runs/lenet5_quant \\
        [--config.quantize.variables_dir=runs/lenet5/baseline/variables \\
         --config.quantize.finetune_epochs=2]

Without ``--config.quantize.variables_dir`` it trains (or reuses) the float baseline in
``--config.quantize.trained_workdir`` (default ``<workdir>/trained``).
"""

from __future__ import annotations

from etils import epath

from xaijax import cli
from xaijax.experiments import quantize

_CONFIG = cli.config_flag()
_WORKDIR = cli.workdir_flag("Directory for results, fine-tuning and exports.")


def main(argv: list[str]) -> None:
    cli.start(argv)
    results = quantize.run(_CONFIG.value, epath.Path(_WORKDIR.value))
    print(f"float test accuracy {results['float']['accuracy']:.4f}")
    cli.print_table(results, _WORKDIR.value)


if __name__ == "__main__":
    cli.run(main)
