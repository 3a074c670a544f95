"""DeepLIFT variants on the LeNet-5 / Fashion-MNIST study's seeds (``scripts/ablation.py``).

The study's config (``configs/study_lenet5_fmnist.py``: hybrid 50% filters / 90% dense weights at
an equal budget of 10% of the parameters, two rounds of prune + 2 epochs; sharing at 2 and 4 bits)
plus ``config.ablation.variants``: each changes one thing of the default DeepLIFT method and is
compared, paired per seed, with the default and with the strongest baseline. In order of run:

* ``deeplift_magnitude``: DeepLIFT combined with magnitude (geometric mean of the scores);
* ``deeplift+sqrt_importance``: weight sharing with k-means weights sqrt(DeepLIFT)
  (``share.importance_exponent=0.5``);
* ``deeplift+rerun``: the default DeepLIFT pruning run again by the current code, a control:
  its paired difference from the study's own DeepLIFT rows is the noise floor of comparing runs
  of different code versions (the study's rows come from an earlier commit);
* ``deeplift+reference=mean``, ``deeplift_shap`` (8 data samples as references, DeepSHAP),
  ``deeplift+reference=blur``: the reference (default: zeros, Fashion-MNIST's background);
* ``deeplift+target=all``, ``deeplift+target=predicted``: the explained logit (default: label);
* ``deeplift+global+normalize=mean`` and ``deeplift+global+normalize=l2``: one ranking over all
  layers after per-layer normalisation, instead of the default per-layer sparsity.
"""

import ml_collections

from xaijax.config_utils import sibling_config


def _prune(**fields) -> dict:
    return {"stage": "prune", "overrides": {"prune": fields}}


def _scored(**importance) -> dict:
    """A pruning variant that changes how DeepLIFT scores (``prune.importance``)."""
    return _prune(importance=importance)


def get_config() -> ml_collections.ConfigDict:
    config = sibling_config(__file__, "study_lenet5_fmnist")
    variants = ml_collections.ConfigDict(
        {
            "deeplift_magnitude": _prune(criterion="deeplift_magnitude"),
            "deeplift+sqrt_importance": {
                "stage": "share",
                "overrides": {"share": {"importance_exponent": 0.5}},
            },
            "deeplift+rerun": _prune(),
            "deeplift+reference=mean": _scored(reference="mean"),
            "deeplift_shap": _prune(criterion="deeplift_shap"),
            "deeplift+target=all": _scored(target="all"),
            "deeplift+target=predicted": _scored(target="predicted"),
            "deeplift+reference=blur": _scored(reference="blur"),
            "deeplift+global+normalize=mean": _prune(scope="global", normalize="mean"),
            "deeplift+global+normalize=l2": _prune(scope="global", normalize="l2"),
        },
        sort_keys=False,  # Run in the order written.
    )
    config.ablation = ml_collections.ConfigDict({"variants": variants})
    return config
