"""The registry of criteria by name: :data:`CRITERIA`, :func:`get_criterion`,
:func:`register_criterion`.

A criterion is registered by an entry in :data:`CRITERIA` below (built in) or, from outside the
package, by :func:`register_criterion`.
"""

from __future__ import annotations

from xaijax.importance.criterion import Criterion
from xaijax.importance.data_free import magnitude_scores, random_scores
from xaijax.importance.deeplift_scores import deeplift_per_example
from xaijax.importance.lrp_scores import lrp_per_example
from xaijax.importance.taylor import taylor_per_example

CRITERIA: dict[str, Criterion] = {
    "deeplift": Criterion("deeplift", per_example=deeplift_per_example),
    "deeplift_shap": Criterion(
        "deeplift_shap",
        per_example=deeplift_per_example,
        default_reference="samples",
        fixed_reference="samples",
    ),
    "deeplift_magnitude": Criterion(
        "deeplift_magnitude", per_example=deeplift_per_example, times="magnitude"
    ),
    "lrp": Criterion("lrp", per_example=lrp_per_example),
    "taylor": Criterion("taylor", per_example=taylor_per_example),
    "magnitude": Criterion("magnitude", data_free=magnitude_scores),
    "random": Criterion("random", data_free=random_scores),
}


def get_criterion(name: str) -> Criterion:
    """The registered criterion ``name``."""
    if name not in CRITERIA:
        raise ValueError(
            f"unknown importance criterion {name!r}; known criteria: {sorted(CRITERIA)}"
        )
    return CRITERIA[name]


def register_criterion(criterion: Criterion) -> None:
    """Add a criterion to the registry (its name must be new)."""
    if criterion.name in CRITERIA:
        raise ValueError(f"criterion {criterion.name!r} is already registered")
    if (criterion.per_example is None) == (criterion.data_free is None):
        raise ValueError("a criterion needs exactly one of per_example and data_free")
    if criterion.times is not None and (
        criterion.times not in CRITERIA or CRITERIA[criterion.times].uses_data
    ):
        raise ValueError(
            f"criterion {criterion.name!r}: times={criterion.times!r} must name a registered "
            "data-free criterion"
        )
    CRITERIA[criterion.name] = criterion
