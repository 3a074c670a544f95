"""Joint pruning and bit allocation under one byte budget, over the LeNet-5 / Fashion-MNIST
study's seeds (``scripts/study.py``; ``xaijax.experiments.joint``).

The study's baselines (``configs/study_lenet5_fmnist.py``; copy each seed's ``baseline`` and
``explain`` stage into the new workdir to reuse them) and only the ``joint`` stage: at 14,900 and
19,100 bytes, the sizes the study's sequential pipeline reaches (DeepLIFT pruning to 10% of the
parameters, then DeepLIFT-sensitivity allocation at 3 and 4 average bits: 14,897 ± 139 and
19,095 bytes), DeepLIFT damage and Hessian damage solved exactly, against one uniform level and
width for every layer, each fine-tuned with QAT for 1 epoch (as the study's quantize stage).
(4% of the float model's bytes is infeasible: the cheapest choice of every layer needs 10.7 KB.)
"""

import ml_collections

from xaijax.config_utils import sibling_config


def get_config() -> ml_collections.ConfigDict:
    config = sibling_config(__file__, "study_lenet5_fmnist")
    config.compress.stages = ("joint",)
    config.compress.export_artifact = False
    config.compress.explain_consistency = False
    config.joint = ml_collections.ConfigDict(
        {"budgets": (14_900, 19_100), "budget_unit": "bytes", "finetune_epochs": 1, "seed": 0}
    )
    return config
