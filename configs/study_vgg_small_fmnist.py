"""The DeepLIFT study on the small VGG / Fashion-MNIST, sized for about 15-20 minutes per seed on
2 CPU cores.

Starts from ``configs/vgg_small_fmnist.py`` (SGD Nesterov, cosine, weight decay, flips). The full
model trains at about 400 images/s on 2 busy cores (its 10 epochs took 52 minutes in
docs/results.md), so the study halves every width (conv 16-16-32-32, fc 128: 1,080 images/s
measured at load 4, about a minute an epoch) and trains 6 epochs instead of 10. A seed then
spends about 6 epochs training, 4 fine-tuning the four pruned models (1 round of prune + 1 epoch
each; hybrid 50% filters / 90% dense weights, as for LeNet-5) and 14 short epochs on the shrunk
model (a quarter of the conv FLOPs): weight sharing at 2 and 4 bits for three importances and
QAT for the four bit-allocation strategies at 3 and 4 bits. Scoring uses 2,000 training
examples. That is about 15 full-width-epoch equivalents at twice LeNet-5's cost per epoch, about
two thirds of a LeNet-5 seed (21.7 minutes measured under load 5-8): an estimate, not yet timed
end to end.

Equal size: every pruning criterion keeps 7% of the dense model's 218,682 parameters (15,308;
``prune.param_budget``), about what the 50% / 90% targets leave (15,500), met exactly by the
dense sparsity.

Quantization-aware training runs through the ``reference`` backend (see ``get_config``).

Fine-tuning learning rates are for SGD with momentum (the defaults suit Adam): 5e-3 for pruning
and QAT (a tenth of the training rate, the QAT default), 1e-3 for weight sharing.
"""

import ml_collections

from xaijax.config_utils import sibling_config


def get_config() -> ml_collections.ConfigDict:
    config = sibling_config(__file__, "vgg_small_fmnist")
    config.model.widths = {"conv1": 16, "conv2": 16, "conv3": 32, "conv4": 32, "fc1": 128}
    config.train.epochs = 6

    config.compress.criteria = ("deeplift", "magnitude", "taylor", "random")
    config.compress.importance_examples = 1000
    config.prune.granularity = "hybrid"
    config.prune.conv_sparsity = 0.5
    config.prune.dense_sparsity = 0.9
    config.prune.importance.num_examples = 2000
    config.prune.iterations = 1
    config.prune.finetune_epochs = 1
    config.prune.finetune_learning_rate = 5e-3
    config.prune.param_budget = 0.07
    config.share.bits = (2, 4)
    config.share.importances = ("uniform", "magnitude", "deeplift")
    config.share.importance.num_examples = 2000
    config.share.finetune_epochs = 1
    config.share.finetune_learning_rate = 1e-3
    config.quantize.budgets = (3.0, 4.0)
    config.quantize.finetune_epochs = 1
    config.quantize.importance.num_examples = 1000
    config.quantize.hessian_examples = 1000
    # Weight-only QAT through the plain-JAX reference backend: the same numerics and straight-
    # through gradients as AQT (tests/test_quantization*.py), but a plain convolution. AQT runs
    # a conv as patches + dot_general, whose patch extraction costs 9 C_in / C_out times the
    # conv's FLOPs on a 3x3 kernel: one QAT epoch of this VGG took 1,016 s with AQT on the
    # loaded 2-core machine (about 60 images/s), so 16 QAT runs per seed were out of reach.
    config.quantize.backend = "reference"
    return config
