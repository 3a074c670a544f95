"""LeNet-5 on Fashion-MNIST: Adam with a cosine schedule (the README's main run)."""

import ml_collections

from xaijax.config_utils import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.data.name = "fashion_mnist"
    config.model.name = "lenet5"
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 2e-3
    config.optimizer.schedule = "cosine"
    config.train.epochs = 15
    config.train.batch_size = 128
    return config
