"""VGG-16 (BatchNorm) on CIFAR-10 from a local copy of the python-pickle batches
(``--config.data.data_dir=/path/to/cifar-10-batches-py`` or ``$XAIJAX_CIFAR10_DIR``)."""

import ml_collections

from xaijax.defaults import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.data.name = "cifar10"
    config.data.standardize = True
    config.data.augment = "crop_flip"
    config.data.crop_padding = 4
    config.model.name = "vgg16"
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.05
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = True
    config.optimizer.weight_decay = 5e-4
    config.optimizer.schedule = "cosine"
    config.optimizer.warmup_epochs = 1.0
    config.train.epochs = 160
    config.train.batch_size = 128
    config.train.checkpoint_every_steps = 2000
    return config
