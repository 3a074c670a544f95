"""Joint pruning and bit allocation under byte budgets (see ``xaijax.experiments.joint``).

    python scripts/joint.py --config configs/lenet5_fmnist.py --workdir runs/lenet5_joint \\
        [--config.joint.variables_dir=runs/lenet5/baseline/variables \\
         --config.joint.budgets='(0.03,0.06)' --config.joint.finetune_epochs=2]

Without ``--config.joint.variables_dir`` it trains (or reuses) the float baseline in
``--config.joint.trained_workdir`` (default ``<workdir>/trained``).
"""

from __future__ import annotations

from absl import app, flags
from etils import epath
from ml_collections import config_flags

from xaijax import logs, runtime
from xaijax.experiments import joint

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results and fine-tuning runs.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logs.setup_logging()
    runtime.enable_compilation_cache()
    results = joint.run(_CONFIG.value, epath.Path(_WORKDIR.value))
    float_row = results["float"]
    print(f"float test accuracy {float_row['accuracy']:.4f}, {float_row['bytes'] / 1024:.1f} KiB")
    print(results["table"], flush=True)
    print(f"results in {epath.Path(_WORKDIR.value) / 'results.json'}", flush=True)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
