"""Weight sharing sweep (see ``xaijax.experiments.share``).

    python scripts/share.py --config configs/lenet5_fmnist.py --workdir runs/lenet5_share \\
        [--config.share.bits="(2, 4)" --config.share.importances="('uniform', 'deeplift')"]
"""

from __future__ import annotations

from etils import epath

from xaijax import cli
from xaijax.experiments import share

_CONFIG = cli.config_flag()
_WORKDIR = cli.workdir_flag("Directory for the weight sharing run's outputs.")


def main(argv: list[str]) -> None:
    cli.start(argv)
    results = share.run(_CONFIG.value, epath.Path(_WORKDIR.value))
    print(f"dense test accuracy {results['accuracy_dense']:.4f}")
    cli.print_table(results, _WORKDIR.value)


if __name__ == "__main__":
    cli.run(main)
