"""Data-free criteria: they read the kernels (or only their shapes), never the data.

* ``magnitude``: ``S_k = sum |kernel[..., k]|`` (L1 norm of the unit's kernel slice); ``|w|`` per
  weight.
* ``random``: i.i.d. uniform scores in ``[0, 1)``, drawn on the host from
  ``np.random.default_rng([seed, layer_index])`` (independent per layer, reproducible).

Signature of both: ``fn(model, variables, *, granularity, seed) -> scores``
(``Criterion.data_free``).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from xaijax.importance.criterion import Granularity, Scores, Variables
from xaijax.importance.layers import kernel_tree, layer_names
from xaijax.models.common import layer_variables


def magnitude_scores(
    model: nn.Module, variables: Variables, *, granularity: Granularity, seed: int = 0
) -> Scores:
    """``sum |kernel[..., k]|`` per unit, ``|w|`` per weight."""
    del seed
    params, names = variables["params"], layer_names(model, variables)
    if granularity == "unit":
        kernels = {name: layer_variables(params, name)["kernel"] for name in names}
        return {name: jnp.abs(k).reshape(-1, k.shape[-1]).sum(0) for name, k in kernels.items()}
    return kernel_tree(params, names, jnp.abs)


def random_scores(
    model: nn.Module, variables: Variables, *, granularity: Granularity, seed: int = 0
) -> Scores:
    """Uniform ``[0, 1)`` scores, independent per layer, reproducible from ``seed`` (host RNG)."""
    params = variables["params"]
    scores = {}
    for index, name in enumerate(layer_names(model, variables)):
        kernel_shape = layer_variables(params, name)["kernel"].shape
        shape = kernel_shape[-1:] if granularity == "unit" else kernel_shape
        draw = jnp.asarray(np.random.default_rng([seed, index]).random(shape, np.float32))
        scores[name] = draw if granularity == "unit" else {"kernel": draw}
    return scores
