"""VGG-16 (BatchNorm) on CIFAR-10: the small VGG's recipe (``configs/vgg_small_fmnist.py``: SGD
0.05 with Nesterov momentum 0.9, weight decay 5e-4, cosine schedule, batch 128) with a 1-epoch
warm-up for 160 epochs, on ResNet-20's CIFAR-10 data (``configs/resnet20_cifar10.py``: standardized,
random crops and flips) from a local copy of the python-pickle batches
(``--config.data.data_dir=/path/to/cifar-10-batches-py`` or ``$XAIJAX_CIFAR10_DIR``)."""

import ml_collections

from xaijax.config_utils import sibling_config


def get_config() -> ml_collections.ConfigDict:
    config = sibling_config(__file__, "vgg_small_fmnist")
    config.data = sibling_config(__file__, "resnet20_cifar10").data
    config.model.name = "vgg16"
    config.optimizer.warmup_epochs = 1.0
    config.train.epochs = 160
    config.train.checkpoint_every_steps = 2000
    return config
