"""A narrow small VGG on scikit-learn's 8x8 digits: a few seconds of training, for smoke tests."""

import ml_collections

from xaijax.defaults import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.data.name = "digits"
    config.model.name = "vgg_small"
    config.model.widths = {"conv1": 8, "conv2": 8, "conv3": 16, "conv4": 16, "fc1": 32}
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 3e-3
    config.optimizer.schedule = "cosine"
    config.train.epochs = 3
    config.train.batch_size = 64
    config.train.eval_batch_size = 200
    config.train.log_every_steps = 10
    return config
