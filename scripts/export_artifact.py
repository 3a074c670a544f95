"""Export the final compressed model of a finished pipeline workdir as a deployable artifact.

    python scripts/export_artifact.py --config configs/lenet5_fmnist.py \\
        --workdir runs/lenet5_fmnist [--out runs/lenet5_fmnist/artifact] \\
        [--strategy deeplift_sensitivity --budget 4]

Reads ``<workdir>/results.json`` (written by ``scripts/compress.py`` with the same config) and the
stages' saved variables; writes the artifact (``xaijax.artifact``; which model it holds by default
is documented in ``xaijax.artifact.final``) and prints its accuracy, measured with the artifact
itself on the test set, and its sizes. ``xaijax.artifact.load(path)`` runs it, and so does
``xaijax/artifact/loader.py`` loaded on its own (numpy and jax only): no model code is needed.
"""

from __future__ import annotations

import json

from absl import app, flags
from etils import epath

from xaijax import artifact, cli, pipeline, report, training
from xaijax.experiments import common

_CONFIG = cli.config_flag()
_WORKDIR = cli.workdir_flag("A finished pipeline's workdir.")
_OUT = flags.DEFINE_string("out", None, "Artifact directory (default: <workdir>/artifact).")
_STRATEGY = flags.DEFINE_string("strategy", None, "Bit allocation strategy of the quantize run.")
_BUDGET = flags.DEFINE_float("budget", None, "Average bits of the quantize run.")


def main(argv: list[str]) -> None:
    cli.start(argv)
    config = _CONFIG.value
    workdir = epath.Path(_WORKDIR.value)
    results_file = workdir / "results.json"
    if not results_file.is_file():
        raise app.UsageError(f"{results_file} is missing: run scripts/compress.py to the end first")
    results = json.loads(results_file.read_text())
    section = common.section(config, "compress", pipeline.defaults(), pipeline.validate)
    model, variables = artifact.carried_model(config, workdir, section.stages, section.carry)
    entry = artifact.export_final(
        workdir,
        results,
        carry=section.carry,
        model=model,
        variables=variables,
        test=training.datasets_from_config(config).test,
        batch_size=config.train.eval_batch_size,
        strategy=_STRATEGY.value,
        budget=_BUDGET.value,
        out=_OUT.value,
    )
    print("\n".join(artifact.final.report_lines(entry)[-1:]), flush=True)
    print(report.markdown_table([entry["source"]]), flush=True)


if __name__ == "__main__":
    cli.run(main)
