"""The main job: train (or load), explain, prune, share weights, quantize, report.

    python scripts/compress.py --config configs/lenet5_fmnist.py --workdir runs/lenet5_fmnist \\
        [--config.compress.stages="('prune', 'quantize')" --config.prune.conv_sparsity=0.6 ...]

Rerunning the same command in the same workdir resumes: finished stages are skipped and an
interrupted stage continues from its checkpoints. The report is ``<workdir>/report.md``.
"""

from __future__ import annotations

from etils import epath

from xaijax import cli, pipeline, report, sharding

_CONFIG = cli.config_flag()
_WORKDIR = cli.workdir_flag("Directory for checkpoints, results and report.")


def main(argv: list[str]) -> None:
    cli.start(argv)
    config = _CONFIG.value
    sharding.initialize_distributed(config)
    workdir = epath.Path(_WORKDIR.value)
    results = pipeline.run(config, workdir)
    print(report.markdown_table(results["summary"]["stages"]), flush=True)
    print(f"report: {workdir / 'report.md'}", flush=True)


if __name__ == "__main__":
    cli.run(main)
