"""Prune a trained model by importance scores, fine-tune it with the mask, evaluate, report.

    python scripts/prune.py --config configs/lenet5_fmnist.py --workdir runs/lenet5_prune \\
        [--config.prune.criterion=taylor --config.prune.granularity=hybrid ...]

See ``xaijax.experiments.prune`` for the settings (``config.prune``) and the outputs.
"""

from __future__ import annotations

from absl import app, flags
from etils import epath
from ml_collections import config_flags

from xaijax import logs, runtime
from xaijax.experiments import prune

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the pruning run's outputs.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logs.setup_logging()
    runtime.enable_compilation_cache()
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
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
