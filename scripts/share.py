"""Weight sharing sweep (see ``xaijax.experiments.share``).

    python scripts/share.py --config configs/lenet5_fmnist.py --workdir runs/lenet5_share \\
        [--config.share.bits="(2, 4)" --config.share.importances="('uniform', 'deeplift')"]
"""

from __future__ import annotations

from absl import app, flags
from etils import epath
from ml_collections import config_flags

from xaijax import logs, runtime
from xaijax.experiments import share

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the weight sharing run's outputs.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logs.setup_logging()
    runtime.enable_compilation_cache()
    results = share.run(_CONFIG.value, epath.Path(_WORKDIR.value))
    print(f"dense test accuracy {results['accuracy_dense']:.4f}")
    print(results["table"], flush=True)
    print(f"results in {epath.Path(_WORKDIR.value) / 'results.json'}", flush=True)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
