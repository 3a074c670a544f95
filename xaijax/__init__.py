"""xaijax: explainable-AI (DeepLIFT) guided compression of neural networks in JAX.

The transforms work on any Flax linen model whose prunable layers are described by a
``layer_specs()`` method (see ``xaijax.models.LayerSpec``) and on plain parameter pytrees:

* ``attribute`` / ``layer_attributions`` / ``parameter_contributions``: DeepLIFT (``deeplift``);
* ``score``: importance of units or weights under a named criterion (``importance``);
* ``unit_masks`` / ``weight_masks`` / ``params_mask`` / ``shrink``: pruning (``pruning``);
* ``cluster_params`` / ``decode`` / ``shared_gradients``: weight sharing (``weight_sharing``);
* ``allocate_bits`` / ``quantized_model``: mixed-precision quantization (``quantization``).
"""

from xaijax import runtime
from xaijax._version import __version__
from xaijax.deeplift import attribute, attribute_shap, layer_attributions, parameter_contributions
from xaijax.importance import score
from xaijax.pruning import params_mask, shrink, unit_masks, weight_masks
from xaijax.quantization import allocate_bits, quantized_layer_kwargs, quantized_model
from xaijax.weight_sharing import cluster_params, decode, shared_gradients

runtime.set_default_xla_flags()  # Before any backend starts: XLA reads them once.

__all__ = [
    "__version__",
    "allocate_bits",
    "attribute",
    "attribute_shap",
    "cluster_params",
    "decode",
    "layer_attributions",
    "parameter_contributions",
    "params_mask",
    "quantized_layer_kwargs",
    "quantized_model",
    "score",
    "shared_gradients",
    "shrink",
    "unit_masks",
    "weight_masks",
]
