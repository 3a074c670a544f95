"""LeNet-5 on Fashion-MNIST: Adam with a cosine schedule, and the README's main job.

The compression sections are sized so that ``scripts/compress.py`` runs the whole pipeline
(train, explain, prune with four criteria, share weights, quantize) in minutes on 2 CPU cores.
"""

import ml_collections

from xaijax.defaults import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.data.name = "fashion_mnist"
    config.model.name = "lenet5"
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 2e-3
    config.optimizer.schedule = "cosine"
    config.train.epochs = 15
    config.train.batch_size = 128

    config.compress.criteria = ("deeplift", "magnitude", "taylor", "random")
    config.compress.importance_examples = 2000
    # Half of the conv filters (structured) and 90% of the fully connected weights, in two
    # rounds of prune + fine-tune.
    config.prune.granularity = "hybrid"
    config.prune.conv_sparsity = 0.5
    config.prune.dense_sparsity = 0.9
    config.prune.importance.num_examples = 5000
    config.prune.iterations = 2
    config.prune.finetune_epochs = 2
    config.prune.finetune_learning_rate = 1e-3
    config.share.bits = (2, 4)
    config.share.importances = ("uniform", "magnitude", "deeplift")
    config.share.importance.num_examples = 5000
    config.share.finetune_epochs = 1
    config.quantize.budgets = (3.0, 4.0)
    config.quantize.finetune_epochs = 1
    return config
