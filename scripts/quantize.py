"""Mixed-precision quantization experiment (see ``xaijax.experiments.quantize``).

    python scripts/quantize.py --config configs/lenet5_fmnist.py --workdir runs/lenet5_quant \\
        [--config.quantize.variables_dir=runs/lenet5/baseline/variables \\
         --config.quantize.finetune_epochs=2]

Without ``--config.quantize.variables_dir`` it trains (or reuses) the float baseline in
``--config.quantize.trained_workdir`` (default ``<workdir>/trained``).
"""

from __future__ import annotations

from absl import app, flags
from etils import epath
from ml_collections import config_flags

from xaijax import logs, runtime
from xaijax.experiments import quantize

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results, fine-tuning and exports.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logs.setup_logging()
    runtime.enable_compilation_cache()
    results = quantize.run(_CONFIG.value, epath.Path(_WORKDIR.value))
    print(f"float test accuracy {results['float']['accuracy']:.4f}")
    print(results["table"], flush=True)
    print(f"results in {epath.Path(_WORKDIR.value) / 'results.json'}", flush=True)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
