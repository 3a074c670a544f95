"""What an importance criterion is: the :class:`Criterion` record and the shape of scores.

Every criterion maps a model and its variables (and, for data-driven criteria, examples) to

* ``granularity="unit"``: ``{layer_name: float32[units]}`` for every prunable layer (the classifier
  included: it is scored, the pruning functions exclude it by default), or
* ``granularity="weight"``: ``{layer_name: {"kernel": float32[*kernel.shape]}}``, a pytree shaped
  like the kernels of ``params``.

All scores are non-negative. A data-driven criterion gives per-example scores (a leading batch
axis) that ``xaijax.importance.engine`` sums over the data and divides by the number of examples;
a data-free one gives the scores directly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal

Granularity = Literal["unit", "weight"]
Scores = dict[str, Any]
Variables = Mapping[str, Any]

GRANULARITIES = ("unit", "weight")


@dataclasses.dataclass(frozen=True)
class Criterion:
    """An importance criterion.

    Attributes:
      name: registry key.
      per_example: for data-driven criteria, ``fn(model, variables, images, targets, references,
        *, granularity, rule) -> scores with a leading batch axis`` (non-negative), where
        ``targets`` is int32 ``[B]`` and ``references`` is ``[K, 1 or B, H, W, C]``; None for
        data-free criteria.
      data_free: for data-free criteria, ``fn(model, variables, *, granularity, seed) -> scores``.
      default_reference: the reference used when :func:`score` gets ``reference=None``.
      fixed_reference: if set, the only reference the criterion accepts.
      times: the name of a data-free criterion combined with this one by the geometric mean
        ``S = sqrt(S_self * S_times)`` elementwise (e.g. DeepLIFT with magnitude); None: alone.
    """

    name: str
    per_example: Callable[..., Scores] | None = None
    data_free: Callable[..., Scores] | None = None
    default_reference: str = "zeros"
    fixed_reference: str | None = None
    times: str | None = None

    @property
    def uses_data(self) -> bool:
        return self.per_example is not None
