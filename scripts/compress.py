"""The main job: train (or load), explain, prune, share weights, quantize, report.

    python scripts/compress.py --config configs/lenet5_fmnist.py --workdir runs/lenet5_fmnist \\
        [--config.compress.stages="('prune', 'quantize')" --config.prune.conv_sparsity=0.6 ...]

Rerunning the same command in the same workdir resumes: finished stages are skipped and an
interrupted stage continues from its checkpoints. The report is ``<workdir>/report.md``.
"""

from __future__ import annotations

from absl import app, flags
from etils import epath
from ml_collections import config_flags

from xaijax import logs, pipeline, report, runtime, sharding

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, results and report.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logs.setup_logging()
    runtime.enable_compilation_cache()
    config = _CONFIG.value
    sharding.initialize_distributed(config)
    workdir = epath.Path(_WORKDIR.value)
    results = pipeline.run(config, workdir)
    print(report.markdown_table(results["summary"]["stages"]), flush=True)
    print(f"report: {workdir / 'report.md'}", flush=True)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
