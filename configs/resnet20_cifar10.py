"""ResNet-20 on CIFAR-10 (He et al. 2016 recipe: SGD 0.1, momentum 0.9, weight decay 1e-4, step
decay by 10x at epochs 91 and 137 of 182) from a local copy of the python-pickle batches
(``--config.data.data_dir=/path/to/cifar-10-batches-py`` or ``$XAIJAX_CIFAR10_DIR``)."""

import ml_collections

from xaijax.defaults import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.data.name = "cifar10"
    config.data.standardize = True
    config.data.augment = "crop_flip"
    config.data.crop_padding = 4
    config.model.name = "resnet20"
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.1
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 1e-4
    config.optimizer.schedule = "step"
    config.optimizer.decay_epochs = (91, 137)
    config.optimizer.decay_factor = 0.1
    config.train.epochs = 182
    config.train.batch_size = 128
    config.train.checkpoint_every_steps = 2000
    return config
