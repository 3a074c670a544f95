"""The small VGG (BatchNorm) on Fashion-MNIST: SGD with Nesterov momentum, cosine schedule,
weight decay and random horizontal flips."""

import ml_collections

from xaijax.defaults import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.data.name = "fashion_mnist"
    config.data.augment = "flip"
    config.model.name = "vgg_small"
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.05
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = True
    config.optimizer.weight_decay = 5e-4
    config.optimizer.schedule = "cosine"
    config.optimizer.warmup_epochs = 0.5
    config.train.epochs = 10
    config.train.batch_size = 128
    return config
