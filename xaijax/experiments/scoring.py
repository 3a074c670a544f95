"""The importance sub-section every stage reads, ``config.<stage>.importance``: how the stage's
importance criterion scores the model it starts from.

Fields (:func:`defaults`; every stage has the same ones, a stage only changes default sizes):

* ``target``: the explained logit, one of ``xaijax.importance.TARGETS`` (``"label"``);
* ``reference``: the DeepLIFT reference, one of ``xaijax.importance.REFERENCES``, or None for
  the criterion's default (zeros; data samples for ``deeplift_shap``);
* ``num_references``: how many data samples a ``"samples"`` reference averages over (8);
* ``num_examples``: score on the first ``min(num_examples, N)`` training examples;
* ``examples_per_class``: scarce data: score instead on this many examples of every class,
  drawn by the stage's ``seed`` (``data.balanced_subset``); None (the default): off;
* ``batch_size``: examples per jit-compiled scoring batch;
* ``rule``: the explanation rule, None (the default) for the criterion's own (DeepLIFT's
  ``rescale``; LRP's ``composite``: alpha1-beta0 for convolutions, epsilon for dense layers), a
  DeepLIFT rule of ``xaijax.deeplift.RULES`` or, for ``lrp``, a preset of ``xaijax.lrp.PRESETS``
  (e.g. ``epsilon``).

The stage's own ``seed`` (``config.<stage>.seed``, which a study sets) draws the references,
the balanced examples and the ``random`` criterion. :func:`validate` names a bad field;
:func:`score_arguments` turns the section into the keyword arguments of
``xaijax.importance.score``.
"""

from __future__ import annotations

from typing import Any

import ml_collections
from ml_collections import config_dict

from xaijax import data, deeplift, importance, lrp
from xaijax.experiments import sections

#: Fields added after results were cached, at the value that computes what they computed before:
#: fingerprints leave them out at that value (``common.plain``).
NEUTRAL_FIELDS = {"examples_per_class": None, "rule": None}


def defaults(**sizes: int) -> ml_collections.ConfigDict:
    """The importance sub-section with every field at its default; ``sizes`` changes the
    defaults of ``num_examples`` and ``batch_size`` for one stage."""
    unknown = sorted(set(sizes) - {"num_examples", "batch_size"})
    if unknown:
        raise TypeError(f"a stage may only size num_examples and batch_size, got {unknown}")
    section = ml_collections.ConfigDict(
        {
            "target": "label",
            "reference": config_dict.placeholder(str),  # None: the criterion's default
            "num_references": 8,
            "num_examples": 10_000,
            "examples_per_class": config_dict.placeholder(int),  # None: off
            "batch_size": 128,
            "rule": config_dict.placeholder(str),  # None: the criterion's own
        }
    )
    section.update(sizes)
    return section


def validate(section: ml_collections.ConfigDict, where: str) -> None:
    """Raise ``ValueError`` naming the first bad field of ``config.<where>`` (an importance
    sub-section, e.g. ``where="prune.importance"``)."""
    sections.check_choice(section, where, "target", importance.TARGETS)
    sections.check_choice(section, where, "reference", importance.REFERENCES, optional=True)
    minimums = {"num_references": 1, "num_examples": 1, "batch_size": 1}
    sections.check_integers(section, where, minimums)
    if section.examples_per_class is not None:
        sections.check_integers(section, where, {"examples_per_class": 1})
    rules = (*deeplift.RULES, *lrp.PRESETS)
    sections.check_choice(section, where, "rule", rules, optional=True)


def score_arguments(
    section: ml_collections.ConfigDict, train: data.Dataset | None, *, seed: int
) -> dict[str, Any]:
    """The keyword arguments of ``xaijax.importance.score`` under ``section``: the training
    examples to score on (the balanced sample when ``examples_per_class`` is set; None for a
    data-free criterion), their count and the scoring options."""
    num_examples = None
    if train is not None and section.examples_per_class is not None:
        train = data.balanced_subset(train, section.examples_per_class, seed=seed)
        num_examples = train.num_examples
    elif train is not None:
        num_examples = min(section.num_examples, train.num_examples)
    rule = {} if section.rule is None else {"rule": section.rule}
    return {
        **rule,
        "data": train,
        "batch_size": section.batch_size,
        "num_examples": num_examples,
        "target": section.target,
        "reference": section.reference,
        "num_references": section.num_references,
        "seed": seed,
    }
