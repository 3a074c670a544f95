"""Prune a trained model by importance scores, fine-tune it with the mask, evaluate, report.

    python scripts/prune.py --config configs/lenet5_fmnist.py --workdir runs/lenet5_prune \\
        [--config.prune.criterion=taylor --config.prune.granularity=hybrid ...]

See ``xaijax.experiments.prune`` for the settings (``config.prune``) and the outputs.
"""

from __future__ import annotations

from etils import epath

from xaijax import cli
from xaijax.experiments import prune

_CONFIG = cli.config_flag()
_WORKDIR = cli.workdir_flag("Directory for the pruning run's outputs.")


def main(argv: list[str]) -> None:
    cli.start(argv)
    workdir = epath.Path(_WORKDIR.value)
    results = prune.run(_CONFIG.value, workdir)
    acc = results["accuracy"]
    print(
        f"accuracy dense {acc['dense']:.4f}, pruned {acc['pruned_before_finetune']:.4f}, "
        f"fine-tuned {acc['after_finetune']:.4f}; FLOPs {results['flops']['masked']} / "
        f"{results['flops']['dense']}; results in {workdir / 'results.json'}",
        flush=True,
    )


if __name__ == "__main__":
    cli.run(main)
