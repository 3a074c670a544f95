"""DeepLIFT heatmaps of a few test images for a trained model, as a PNG grid.

    python scripts/explain.py --config configs/lenet5_fmnist.py --workdir runs/lenet5 \\
        [--num_images 8 --rule rescale --output runs/lenet5/explanations.png]

Loads ``<workdir>/variables`` (written by ``scripts/train.py``), explains the predicted class of
the first ``--num_images`` test images against an all-zero reference
(``xaijax.experiments.explain``) and prints each image's summation-to-delta error.
"""

from __future__ import annotations

import numpy as np
from absl import flags
from etils import epath

from xaijax import cli, deeplift, training
from xaijax.experiments import common, explain

_CONFIG = cli.config_flag("Training config file.", lock_config=True)
_WORKDIR = cli.workdir_flag("Training workdir holding variables/.")
_NUM_IMAGES = flags.DEFINE_integer(
    "num_images", 8, "Number of test images to explain.", lower_bound=1
)
_RULE = flags.DEFINE_enum("rule", "rescale", list(deeplift.RULES), "DeepLIFT rule.")
_OUTPUT = flags.DEFINE_string("output", None, "PNG path (default <workdir>/explanations.png).")


def main(argv: list[str]) -> None:
    cli.start(argv)
    config, workdir = _CONFIG.value, epath.Path(_WORKDIR.value)
    variables = common.load_variables(workdir / "variables")
    model = training.model_from_config(config)
    test = training.datasets_from_config(config).test
    images, labels = test.images[: _NUM_IMAGES.value], test.labels[: _NUM_IMAGES.value]
    explained = explain.explain_images(model, variables, images, rule=_RULE.value)
    output = epath.Path(_OUTPUT.value) if _OUTPUT.value else workdir / "explanations.png"
    explain.heatmap_grid(output, images, labels, explained)
    for i, error in enumerate(explained["errors"]):
        print(
            f"image {i}: label {labels[i]} predicted {explained['predictions'][i]} "
            f"summation-to-delta error {error:.2e}"
        )
    print(f"max |error| {np.abs(explained['errors']).max():.2e}; grid written to {output}")


if __name__ == "__main__":
    cli.run(main)
