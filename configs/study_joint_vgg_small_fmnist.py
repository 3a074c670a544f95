"""Joint pruning and bit allocation under one byte budget, over the small VGG / Fashion-MNIST
study's seeds (``scripts/study.py``; ``xaijax.experiments.joint``).

The study's baselines (``configs/study_vgg_small_fmnist.py``, half widths; copy each seed's
``baseline`` and ``explain`` stage into the new workdir to reuse them) and only the ``joint``
stage, at 32,344 and 44,888 bytes: the sizes the study's sequential pipeline reaches (DeepLIFT
pruning to 7% of the parameters, then DeepLIFT-sensitivity allocation at 3 and 4 average bits).
DeepLIFT damage and Hessian damage solved exactly, against one uniform level and width for every
layer, each fine-tuned with QAT for 1 epoch through the ``reference`` backend, as the study's
quantize stage (AQT's patch convolution is far slower on this model's convolutions).
"""

import ml_collections

from xaijax.config_utils import sibling_config


def get_config() -> ml_collections.ConfigDict:
    config = sibling_config(__file__, "study_vgg_small_fmnist")
    config.compress.stages = ("joint",)
    config.compress.export_artifact = False
    config.compress.explain_consistency = False
    config.joint = ml_collections.ConfigDict(
        {
            "budgets": (32_344, 44_888),
            "budget_unit": "bytes",
            "backend": "reference",
            "finetune_epochs": 1,
            "seed": 0,
        }
    )
    return config
