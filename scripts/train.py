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
from absl import app, flags
from etils import epath
from ml_collections import config_flags

from xaijax import logs, runtime
from xaijax.experiments import common

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logs.setup_logging()
    runtime.enable_compilation_cache()
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
    app.run(main)
