"""``importance.score`` with the DeepLIFT criteria, against values computed another way.

* ``deeplift``: the plain-numpy Rescale of ``deeplift_oracle`` (secant multipliers per ReLU,
  cross-max pooling, transposed linear maps) and the definitions of ``xaijax.importance``: target
  the true-label logit, reference zeros, unit score ``S_k = mean_n |sum_positions dh * m|``,
  weight score ``S = mean_n |C(W_ij)|`` with ``C(W_ij) = da_i * W_ij * m_j`` summed over
  positions. The same oracle with gradient multipliers (gradient x delta) must fail the
  comparison on the hidden layers.
* ``deeplift_shap``: the mean over the drawn reference samples of single-reference DeepLIFT from
  the public ``xaijax.deeplift`` API, one explicit reference at a time.
"""

from __future__ import annotations

import functools
from typing import Any

import deeplift_oracle as oracle
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference_nets import (
    SmallCNN,
    assert_close,
    assert_far,
    draw_variables,
    numpy_params,
    one_hot,
)

from xaijax import deeplift, importance

SHAPE = (8, 8, 2)
NUM_CLASSES = 3
GRANULARITIES = ("unit", "weight")


@functools.cache
def _case(pool: bool):
    """The conv net (with or without max pooling), its variables and six labelled images (seed 4:
    on every hidden layer some ReLU is on at the input and off at the reference or vice versa)."""
    model = SmallCNN(pool=pool, num_classes=NUM_CLASSES)
    variables = draw_variables(model, SHAPE, seed=4)
    generator = np.random.default_rng(4)
    images = generator.uniform(size=(6, *SHAPE)).astype(np.float32)
    labels = np.array([0, 2, 1, 1, 0, 2], np.int32)
    return model, variables, images, labels


@functools.cache
def _xaijax_scores(pool: bool, granularity: str):
    model, variables, images, labels = _case(pool)
    # batch_size 4: the second batch is padded, and its padding must weigh nothing.
    scores = importance.score(
        "deeplift", model, variables, (images, labels), granularity=granularity, batch_size=4
    )
    return jax.tree.map(np.asarray, scores)


def _position_sum(contributions: Any) -> Any:
    """``[B, ..., K] -> [B, K]`` (numpy or jax arrays)."""
    return contributions.reshape(contributions.shape[0], -1, contributions.shape[-1]).sum(axis=1)


def _oracle_scores(pool: bool, granularity: str, rule: oracle.Rule) -> dict:
    """The importance scores from the numpy oracle, shaped like ``importance.score``'s."""
    model, variables, images, labels = _case(pool)
    layers = model.oracle_layers(numpy_params(variables))
    reference = np.zeros((1, *SHAPE))
    explained = oracle.explain(layers, images, reference, one_hot(labels, NUM_CLASSES), rule)
    scores = {}
    for name, index in zip(model.names, oracle.parametrized(layers), strict=True):
        if granularity == "unit":
            contributions = oracle.unit_contributions(explained, index)
            scores[name] = np.abs(_position_sum(contributions)).mean(axis=0)
        else:
            contributions = oracle.weight_contributions(layers[index], explained, index)
            scores[name] = {"kernel": np.abs(contributions).mean(axis=0)}
    return scores


def _assert_scores_close(actual: Any, expected: Any) -> float:
    """Every score to the shared tolerance; returns the largest absolute error."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    errors = jax.tree.map(assert_close, actual, expected)
    return max(jax.tree.leaves(errors))


def _tenth_of_largest(scores: Any) -> float:
    """A margin for "clearly different": 10% of the largest score."""
    return 0.1 * max(float(np.abs(leaf).max()) for leaf in jax.tree.leaves(scores))


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("pool", [True, False], ids=["maxpool", "nopool"])
def test_deeplift_scores_match_numpy_rescale(pool, granularity):
    _assert_scores_close(
        _xaijax_scores(pool, granularity), _oracle_scores(pool, granularity, "rescale")
    )


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("pool", [True, False], ids=["maxpool", "nopool"])
def test_gradient_times_delta_fails_the_comparison(pool, granularity):
    """The comparison above is discriminative: the same chain with gradient multipliers
    (gradient x delta-activation, what Taylor-style criteria compute) is far from the DeepLIFT
    scores on every hidden layer, and equal on the classifier (its multiplier is 1 either way)."""
    model = _case(pool)[0]
    actual = _xaijax_scores(pool, granularity)
    gradient = _oracle_scores(pool, granularity, "gradient")
    with pytest.raises(AssertionError):
        _assert_scores_close(actual, gradient)
    for name in model.names[:-1]:
        assert_far(actual[name], gradient[name], _tenth_of_largest(actual[name]))
    _assert_scores_close(actual[model.names[-1]], gradient[model.names[-1]])


# ----------------------------------------------------------------------------------------------
# DeepSHAP: the average over references of single-reference DeepLIFT.


@functools.cache
def _single_reference(granularity: str):
    """``reference -> per-example signed contributions`` (per unit summed over positions, or per
    weight), through the public ``xaijax.deeplift`` API with that one reference."""
    model, variables, images, labels = _case(True)

    @jax.jit
    def contributions(reference):
        if granularity == "unit":
            per_layer = deeplift.layer_attributions(
                model, variables, images, reference, layers=model.names, target=labels
            )
            return {name: _position_sum(c) for name, c in per_layer.items()}
        per_weight = deeplift.parameter_contributions(
            model, variables, images, reference, target=labels, reduce="none"
        )
        return {name: {"kernel": c} for name, c in per_weight.items()}

    return contributions


def _shap_from_single_references(granularity: str, references: np.ndarray, average: str):
    """``mean_n |mean_r C_r|`` (``average="signed"``, the DeepSHAP definition) or
    ``mean_n mean_r |C_r|`` (``"absolute"``, a wrong one)."""
    single = _single_reference(granularity)
    per_reference = [jax.tree.map(np.asarray, single(jnp.asarray(r))) for r in references]
    stacked = jax.tree.map(lambda *c: np.stack(c), *per_reference)
    if average == "signed":
        return jax.tree.map(lambda c: np.abs(c.mean(axis=0)).mean(axis=0), stacked)
    return jax.tree.map(lambda c: np.abs(c).mean(axis=(0, 1)), stacked)


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_deeplift_shap_is_the_mean_of_single_reference_deeplift(granularity):
    model, variables, images, labels = _case(True)
    num_references, seed = 3, 5
    scores = importance.score(
        "deeplift_shap",
        model,
        variables,
        (images, labels),
        granularity=granularity,
        num_references=num_references,
        seed=seed,
    )
    references = importance.shared_references("samples", images, num_references, seed)
    # The references are distinct examples of the data.
    rows = [int(np.flatnonzero((images == r).all(axis=(1, 2, 3)))[0]) for r in references]
    assert len(set(rows)) == num_references
    expected = _shap_from_single_references(granularity, references, "signed")
    _assert_scores_close(jax.tree.map(np.asarray, scores), expected)
    # Discriminative: other samples, or averaging |C| instead of C, give other scores.
    others = images[[i for i in range(len(images)) if i not in rows][:num_references]]
    margin = _tenth_of_largest(expected)
    assert_far(_shap_from_single_references(granularity, others, "signed"), expected, margin)
    assert_far(_shap_from_single_references(granularity, references, "absolute"), expected, margin)
