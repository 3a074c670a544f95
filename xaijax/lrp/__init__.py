"""Layer-wise Relevance Propagation (LRP) as a JAX transform, beside ``xaijax.deeplift``.

LRP (Bach et al., 2015; Montavon et al., 2019) explains the value ``f(x)[t]`` of the selected
output: that value is the output's relevance, and each layer ``z = L(a; W) + b`` (a dense layer:
``dot_general``; a convolution: ``conv_general_dilated``) redistributes the relevances ``R_j`` of
its outputs onto its inputs by a rule, chosen per layer kind (``xaijax.lrp.rules``):

* epsilon: ``R_i = sum_j a_i w_ij / (z_j + eps * sign(z_j)) * R_j``;
* z+: ``R_i = sum_j a_i w_ij+ / (sum_i' a_i' w_i'j+ + b_j+) * R_j``;
* alpha-beta (``alpha - beta = 1``, e.g. ``(2, 1)`` or ``(1, 0)``):
  ``R_i = sum_j (alpha (a_i w_ij)+ / (sum_i' (a_i' w_i'j)+ + b_j+)
  - beta (a_i w_ij)- / (sum_i' (a_i' w_i'j)- + b_j-)) * R_j``.

Elementwise activations pass relevance unchanged (``R_x = R_y``), max pooling passes it to each
window's maximum, reshapes pass it through, and other linear operations (sums, average pooling,
residual additions, inference BatchNorm) redistribute it in proportion to their terms (LRP-0).
A bias, the epsilon stabiliser, and the additive constants of other linear operations absorb
their share; without them, z+ and alpha-beta conserve relevance exactly: the input relevances
sum to ``f(x)[t]`` (where the rules' denominators are non-zero).

Like DeepLIFT, LRP is computed as multipliers ``m`` that are pulled back like gradients, with
``R = value * m``: ``fn`` is traced to a jaxpr by the same interpreter as ``xaijax.deeplift``
(calls inlined, elementwise sub-computations grouped, any traceable function, no model edits),
each layer's result is replaced by a value-preserving surrogate whose gradient is the rule's, and
each activation by a carrier whose backward multiplies by ``f(x) / x``. One backward pass gives
the relevances of every input. A nonlinear operation with no rule (a product of two
input-dependent values, a division by one, a sort) raises ``UnsupportedOperationError`` naming
the primitive.

Public API (mirroring ``xaijax.deeplift``): :func:`relevance` (input relevances),
:func:`layer_relevances` (relevances of the output units of Flax Conv/Dense layers),
:func:`parameter_relevances` (relevance of each kernel weight), the rules :func:`epsilon`,
:func:`zplus`, :func:`alpha_beta` and the named :data:`PRESETS`.
"""

from xaijax.deeplift.program import UnsupportedOperationError
from xaijax.lrp.attribution import relevance
from xaijax.lrp.layers import layer_relevances, parameter_relevances
from xaijax.lrp.rules import (
    DEFAULT_EPSILON,
    LAYER_KINDS,
    PRESETS,
    Rule,
    alpha_beta,
    epsilon,
    resolve,
    zplus,
)

__all__ = [
    "DEFAULT_EPSILON",
    "LAYER_KINDS",
    "PRESETS",
    "Rule",
    "UnsupportedOperationError",
    "alpha_beta",
    "epsilon",
    "layer_relevances",
    "parameter_relevances",
    "relevance",
    "resolve",
    "zplus",
]
