"""A stronger fine-tuning recipe on the LeNet-5 / Fashion-MNIST study's seeds, for the paper's
pruning target (at least 50% of the conv filters and 90% of the dense weights pruned, at most 1
point lost).

Run with ``scripts/ablation.py`` (tables: ``regimes.md``). The study's pruning (hybrid 50% filters,
10% of the parameters kept, two rounds) with, for DeepLIFT and magnitude alike, ``recipe``:
4 epochs per round instead of 2, distillation from the dense model (``finetune.distill_weight``
0.5, temperature 4) and learning-rate rewinding (``finetune.lr_rewind``: the last 4 epochs of
the training schedule instead of a constant 1e-3).
"""

import importlib.util
from pathlib import Path

import ml_collections

CRITERIA = ("deeplift", "magnitude")
RECIPE = {
    "prune": {"finetune_epochs": 4},
    "finetune": {"distill_weight": 0.5, "distill_temperature": 4.0, "lr_rewind": True},
}


def get_config() -> ml_collections.ConfigDict:
    from xaijax.study import regimes

    path = Path(__file__).with_name("study_lenet5_fmnist.py")
    spec = importlib.util.spec_from_file_location("study_lenet5_fmnist", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    variants = regimes.variants({"recipe": RECIPE}, CRITERIA)
    config.ablation = ml_collections.ConfigDict(
        {"variants": ml_collections.ConfigDict(variants, sort_keys=False)}
    )
    return config
