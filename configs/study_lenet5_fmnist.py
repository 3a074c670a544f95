"""The DeepLIFT study on LeNet-5 / Fashion-MNIST: the main job's settings, once per seed.

Everything comes from ``configs/lenet5_fmnist.py`` (15 training epochs; four pruning criteria,
hybrid 50% filters / 90% dense weights in two rounds of prune + 2 epochs; sharing at 2 and 4 bits;
every bit-allocation strategy at 3 and 4 average bits). ``scripts/study.py --seeds=...`` sets
every seed field (``xaijax.study.seed_config``); the seed here is only the default.

Equal size: every pruning criterion keeps the same number of non-zero parameters,
``prune.param_budget`` = 10% of the dense model's 61,706 (6,171; the 50% / 90% targets alone
leave 5,200-6,300 depending on the criterion), met by the last round's dense sparsity.
"""

import ml_collections

from xaijax.config_utils import sibling_config


def get_config() -> ml_collections.ConfigDict:
    config = sibling_config(__file__, "lenet5_fmnist")
    config.prune.param_budget = 0.1
    return config
