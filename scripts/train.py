"""Train a model from a config file and write ``workdir/results.json``.

    python scripts/train.py --config configs/lenet5_fmnist.py --workdir runs/lenet5 \
        [--config.train.epochs=2 ...]

Rerunning the same command in the same workdir resumes from the latest checkpoint, or reuses the
finished model, as long as every field that determines the training is unchanged; otherwise the
workdir is cleared and the model retrained (``--config.resume=strict`` refuses instead, naming the
changed fields; see ``xaijax.provenance``). Writes
``metrics.jsonl``, TensorBoard events, ``checkpoints/``, the final model variables
(``variables/``, for later stages: ``xaijax.checkpoint.load_variables``) and ``results.json``
(test accuracy and loss, parameters, FLOPs, epochs, wall time, config).
"""

from __future__ import annotations

import json

import jax
from etils import epath

from xaijax import cli
from xaijax.experiments import common

_CONFIG = cli.config_flag("Training config file.", lock_config=True)
_WORKDIR = cli.workdir_flag("Directory for checkpoints, metrics and results.")


def main(argv: list[str]) -> None:
    cli.start(argv)
    workdir = epath.Path(_WORKDIR.value)
    common.load_or_train(_CONFIG.value, workdir)
    if jax.process_index() != 0:
        return  # Process 0 wrote the results.
    results = json.loads((workdir / "results.json").read_text())
    test = results["test"]
    print(
        f"test accuracy {test['accuracy']:.4f} (loss {test['loss']:.4f}) after "
        f"{results['epochs']} epochs; {results['params']} params, {results['flops']} FLOPs; "
        f"results in {workdir / 'results.json'}",
        flush=True,
    )


if __name__ == "__main__":
    cli.run(main)
