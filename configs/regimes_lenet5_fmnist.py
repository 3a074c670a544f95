"""The regimes of Yeom et al. (2021) on the LeNet-5 / Fashion-MNIST study's seeds.

Run with ``scripts/ablation.py`` (tables: ``regimes.md``, ``xaijax.study.regimes``). Every
pruning regime runs DeepLIFT, LRP, Taylor and magnitude at one equal size (``prune.param_budget``,
the fraction of the dense model's parameters kept):

* ``oneshot``: one round of pruning at the study's size (50% of the conv filters, 10% of the
  parameters kept), no fine-tuning;
* ``oneshot+keep30``: one round at a milder size (25% of the filters, 30% of the parameters
  kept), no fine-tuning;
* ``oneshot+keep30+<k>pc``: the same, scored from ``k`` = 1, 5, 20 examples of every class
  (``prune.importance.examples_per_class``, drawn by the seed), the scarce-data regime;
* ``fine-tuned``: LRP in the study's own recipe (two rounds of prune + 2 epochs), paired with the
  study's DeepLIFT, Taylor and magnitude rows.

Weight sharing (study recipe, 2 and 4 bits), ``fine-tuned`` regime: ECQ assignment with DeepLIFT
and with LRP relevances (``share.assignments = ("ecq",)``; LRP with its composite rule and with
the epsilon rule everywhere, ``ecq+lrp[epsilon]``), paired with the study's plain k-means
(``uniform``), magnitude- and DeepLIFT-weighted k-means.
"""

import ml_collections

from xaijax.config_utils import sibling_config

CRITERIA = ("deeplift", "lrp", "taylor", "magnitude")
ONE_SHOT = {"iterations": 1, "finetune_epochs": 0}
MILD = {"conv_sparsity": 0.25, "dense_sparsity": 0.7, "param_budget": 0.3}


def regimes() -> dict:
    """``{regime: overrides}`` of the pruning regimes (without the criterion)."""
    found = {
        "oneshot": {"prune": dict(ONE_SHOT)},
        "oneshot+keep30": {"prune": {**ONE_SHOT, **MILD}},
    }
    for per_class in (1, 5, 20):
        found[f"oneshot+keep30+{per_class}pc"] = {
            "prune": {**ONE_SHOT, **MILD, "importance": {"examples_per_class": per_class}}
        }
    return found


def get_config() -> ml_collections.ConfigDict:
    from xaijax.study import regimes as regimes_study

    config = sibling_config(__file__, "study_lenet5_fmnist")
    variants = regimes_study.variants(regimes(), CRITERIA)
    variants["fine-tuned+lrp"] = {
        "stage": "prune",
        "overrides": {"prune": {"criterion": "lrp"}},
        "regime": regimes_study.STUDY_REGIME,
    }
    for relevance in ("deeplift", "lrp"):
        variants[f"ecq+{relevance}"] = {
            "stage": "share",
            "overrides": {"share": {"assignments": ("ecq",), "importances": (relevance,)}},
            "regime": regimes_study.STUDY_REGIME,
        }
    # The composite rule (alpha1-beta0 on convolutions) gives a negative contribution no
    # relevance, so ECQ zeroes every negative conv weight; the epsilon rule does not.
    variants["ecq+lrp+epsilon"] = {
        "stage": "share",
        "overrides": {
            "share": {
                "assignments": ("ecq",),
                "importances": ("lrp",),
                "importance": {"rule": "epsilon"},
            }
        },
        "regime": regimes_study.STUDY_REGIME,
    }
    ordered = ml_collections.ConfigDict(variants, sort_keys=False)  # Run in the order written.
    config.ablation = ml_collections.ConfigDict({"variants": ordered})
    return config
