"""DeepLIFT as a JAX transform: Rescale and RevealCancel multipliers for any traceable function.

DeepLIFT (Shrikumar et al., ICML 2017) explains ``t(x) - t(x_ref)`` for a scalar target ``t`` by
*multipliers* ``m`` that follow the chain rule like gradients, except at nonlinearities:

* Rescale: an elementwise nonlinearity ``y = f(z)`` passes the secant slope
  ``m = (f(z) - f(z_ref)) / (z - z_ref)``, or ``f'(z)`` where ``|z - z_ref| <= SECANT_EPS``.
* RevealCancel: ``dz`` is split into the sums of its positive and its negative terms, ``dz+`` and
  ``dz-``, propagated separately through linear operations (a term ``w * da`` counts as positive
  when ``w * da > 0``, where ``da`` is the delta of an input, a nonlinearity's or a pool's output).
  With ``z0 = z_ref``::

      dy+ = (f(z0 + dz+) - f(z0)) / 2 + (f(z0 + dz+ + dz-) - f(z0 + dz-)) / 2,   m+ = dy+ / dz+
      dy- = (f(z0 + dz-) - f(z0)) / 2 + (f(z0 + dz+ + dz-) - f(z0 + dz+)) / 2,   m- = dy- / dz-

  Going back, an input ``a`` of a linear operation passes ``w * m+`` through its positive terms
  and ``w * m-`` through its negative ones; where ``da`` is exactly 0 it passes
  ``w * (m+ + m-) / 2``, as the reference implementation (kundajelab/deeplift) does.

* Max pooling (windowed or a ``max`` over axes) uses the cross-max rule: in each window the
  position ``c`` holding ``max(y, y_ref)`` (the first maximum of ``max(x, x_ref)``) receives the
  whole delta with multiplier ``(y - y_ref) / (x_c - x_ref_c)``, which lies in ``[0, 1]``.
  The original DeepLIFT code routes the multiplier through the argmax of the input, like a
  gradient; that loses summation-to-delta wherever the maxima of the input and of the reference
  lie at different positions. The cross-max rule keeps it exact (Captum uses one too); see
  docs/design.md.
* Linear operations (dense, convolution, sums, average pooling, inference-mode BatchNorm, reshapes,
  concatenations, residual additions, ...) pass multipliers exactly like gradients.

Contributions are ``C_i = (x_i - x_ref_i) * m_i`` and sum to ``t(x) - t(x_ref)``
(summation-to-delta); the same conservation holds for the units of any layer that every path from
input to output crosses.

How it works: ``fn`` is traced to a jaxpr, calls (``jit``, ``custom_jvp``/``custom_vjp``
functions such as ``jax.nn.relu``, ``checkpoint``) are inlined, and each maximal elementwise
sub-computation of one input-dependent value (``relu``, ``gelu``, ``leaky_relu``,
``x * sigmoid(x)`` ...) is treated as ONE nonlinearity. The reference side is evaluated first
(once, at batch 1, when the batch shares one reference); the input side is then interpreted under
``jax.vjp`` with every nonlinearity carried by a ``jax.custom_vjp`` op whose backward multiplies by
its DeepLIFT multiplier (the carriers and the cross-max rule: ``xaijax.deeplift.carriers``; the
interpreter: ``xaijax.deeplift.interpreter``). A ``custom_jvp``/``custom_vjp`` call whose body
is linear is bound whole under the Rescale rule, so its own derivative rule (a faster convolution
gradient, say) pulls the multipliers back (``xaijax.deeplift.calls``). A nonlinear operation with
no rule raises ``UnsupportedOperationError`` naming the primitive (and the call whose body holds
it); nothing silently falls back to the gradient. The examples of a batch must not interact
(inference mode).
"""

from xaijax.deeplift.attribution import RULES, Rule, attribute, attribute_shap
from xaijax.deeplift.carriers import SECANT_EPS
from xaijax.deeplift.layers import layer_attributions, parameter_contributions
from xaijax.deeplift.program import UnsupportedOperationError

__all__ = [
    "RULES",
    "SECANT_EPS",
    "Rule",
    "UnsupportedOperationError",
    "attribute",
    "attribute_shap",
    "layer_attributions",
    "parameter_contributions",
]
