"""Custom-derivative calls in xaijax.deeplift and xaijax.lrp (``xaijax.deeplift.calls``).

A ``custom_jvp`` / ``custom_vjp`` call that is linear in its input-dependent operands is bound
whole, so its own rule pulls the multipliers back. Oracles: the same model with XLA's plain
convolution (DeepLIFT and LRP must agree to float precision), and the rule's trace count (it must
run where the call is bound whole, and not where the body is interpreted). A nonlinear call keeps
DeepLIFT's and LRP's own rules (a deliberately wrong backward must not leak into the result), and
an unsupported primitive in a call's body is named with the call.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from reference_nets import draw_variables

from xaijax import deeplift, lrp
from xaijax.deeplift.calls import linear_calls
from xaijax.deeplift.program import _plan, _trace
from xaijax.models import get_model

NHWC = ("NHWC", "HWIO", "NHWC")
TARGET = np.array([0, 3, 7, 9])
LRP_RULES = ("epsilon", "zplus", "alpha2beta1", "composite")


def _close(actual, expected):
    """Equal to float32 precision: the rules are the same, only summation orders differ."""
    jax.tree.map(
        lambda a, e: np.testing.assert_allclose(
            a, e, rtol=1e-5, atol=1e-6 * max(1.0, float(np.abs(e).max()))
        ),
        actual,
        expected,
    )


class _Counter:
    """Counts how often a derivative rule is traced."""

    def __init__(self):
        self.count = 0

    def wrap(self, fn):
        def counted(*args, **kwargs):
            self.count += 1
            return fn(*args, **kwargs)

        return counted


def _vjp_conv(counter: _Counter):
    """A VALID NHWC convolution as a ``custom_vjp`` with a counted backward (XLA's gradients),
    usable as Flax ``nn.Conv``'s ``conv_general_dilated`` for a VALID layer."""

    def plain(x, k):
        return lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=NHWC)

    @jax.custom_vjp
    def conv(x, k):
        return plain(x, k)

    def fwd(x, k):
        return plain(x, k), (x, k)

    @counter.wrap
    def bwd(residuals, g):
        x, k = residuals
        return jax.vjp(plain, x, k)[1](g)

    conv.defvjp(fwd, bwd)

    def conv_general_dilated(lhs, rhs, window_strides, padding, *args, **kwargs):
        assert tuple(window_strides) == (1, 1) and padding == "VALID", (window_strides, padding)
        return conv(lhs, rhs)

    return conv_general_dilated


def _lenet(conv2=None):
    """LeNet-5 with XLA's own convolutions, or with ``conv2`` for its second layer."""
    plain = {"conv_general_dilated": lax.conv_general_dilated}
    second = plain if conv2 is None else {"conv_general_dilated": conv2}
    return get_model("lenet5", layer_kwargs={"conv1": plain, "conv2": second})


def _inputs():
    model = get_model("lenet5")
    variables = draw_variables(model, (28, 28, 1), seed=5, bias_scale=0.2, train=False)
    generator = np.random.default_rng(6)
    x = generator.uniform(size=(4, 28, 28, 1)).astype(np.float32)
    reference = (0.2 * generator.uniform(size=(28, 28, 1))).astype(np.float32)
    return variables, x, reference


def _deeplift_all(model, variables, x, reference, rule, counter=None):
    """Input, layer and weight contributions, and the summation-to-delta error. With
    ``counter``, also whether the rule it counts was traced for the input attributions (the
    weight contributions differentiate the kernel, which traces a custom_vjp's backward too)."""
    fn = lambda v: model.apply(variables, v, train=False)
    before = 0 if counter is None else counter.count
    inputs, delta = jax.jit(
        lambda x, r: deeplift.attribute(fn, x, r, target=TARGET, rule=rule, return_delta=True)
    )(x, reference)
    used = counter is not None and counter.count > before

    @jax.jit
    def layers(x, reference):
        kwargs = {"target": TARGET, "rule": rule}
        units = deeplift.layer_attributions(model, variables, x, reference, **kwargs)
        weights = deeplift.parameter_contributions(
            model, variables, x, reference, reduce="mean", **kwargs
        )
        return units, weights

    return (inputs, delta, *layers(x, reference)), used


def _lrp_all(model, variables, x, rules, counter=None):
    """Input, layer and weight relevances; with ``counter``, whether the rule it counts was
    traced for the input relevances."""
    fn = lambda v: model.apply(variables, v, train=False)
    before = 0 if counter is None else counter.count
    inputs = jax.jit(lambda x: lrp.relevance(fn, x, target=TARGET, rules=rules))(x)
    used = counter is not None and counter.count > before

    @jax.jit
    def layers(x):
        units = lrp.layer_relevances(model, variables, x, target=TARGET, rules=rules)
        weights = lrp.parameter_relevances(model, variables, x, target=TARGET, rules=rules)
        return units, weights

    return (inputs, *layers(x)), used


# ----------------------------------------------------------------------------------------------
# The zoo's custom_jvp convolution (xaijax.models.ops: one input channel) against XLA's own.


def _whole_call_bodies(model, variables, x, rule):
    """The primitives of the bodies of the calls DeepLIFT binds whole for ``model``."""
    fn = lambda v: model.apply(variables, v, train=False)
    program = _trace(fn, jax.tree.structure((x,)), [jax.ShapeDtypeStruct(x.shape, x.dtype)])
    plan = _plan(program)
    if rule == "reveal_cancel":
        return []
    calls = linear_calls(program, plan.kinds, plan.varying)
    return [{e.primitive.name for e in program.eqns[c.start : c.stop]} for c in calls.values()]


@pytest.mark.parametrize("rule", deeplift.RULES)
def test_deeplift_through_the_zoo_conv_equals_the_plain_conv(rule):
    variables, x, reference = _inputs()
    model = get_model("lenet5")
    # Rescale binds conv1's call (the matmul of stacked windows) whole; nothing else is a call.
    bodies = _whole_call_bodies(model, variables, x, rule)
    assert len(bodies) == (rule == "rescale") and all("dot_general" in b for b in bodies)
    fast, _ = _deeplift_all(model, variables, x, reference, rule)
    _close(fast, _deeplift_all(_lenet(), variables, x, reference, rule)[0])
    np.testing.assert_allclose(fast[1], 0.0, atol=2e-5)  # summation-to-delta


@pytest.mark.parametrize("rules", LRP_RULES)
def test_lrp_through_the_zoo_conv_equals_the_plain_conv(rules):
    """conv1 (one input channel: a matmul of stacked windows on the CPU) is a ``conv`` layer, as
    XLA's convolution is (the ``composite`` rules differ by kind)."""
    variables, x, _ = _inputs()
    fast, _ = _lrp_all(get_model("lenet5"), variables, x, rules)
    _close(fast, _lrp_all(_lenet(), variables, x, rules)[0])


# ----------------------------------------------------------------------------------------------
# A custom_vjp convolution.


@pytest.mark.parametrize("rule", deeplift.RULES)
def test_deeplift_through_a_custom_vjp_conv_equals_the_plain_conv(rule):
    counter = _Counter()
    variables, x, reference = _inputs()
    got, used = _deeplift_all(_lenet(_vjp_conv(counter)), variables, x, reference, rule, counter)
    assert used == (rule == "rescale")
    _close(got, _deeplift_all(_lenet(), variables, x, reference, rule)[0])


def test_lrp_through_a_custom_vjp_conv_equals_the_plain_conv():
    counter = _Counter()
    variables, x, _ = _inputs()
    model = _lenet(_vjp_conv(counter))
    for rules in LRP_RULES:
        got, used = _lrp_all(model, variables, x, rules, counter)
        assert used
        _close(got, _lrp_all(_lenet(), variables, x, rules)[0])


# ----------------------------------------------------------------------------------------------
# Linear calls that are not layers, nested calls, nonlinear calls.


def _linear_call(fn, transpose, counter: _Counter):
    """``fn`` as a ``custom_vjp`` whose (counted) backward is ``transpose``."""
    call = jax.custom_vjp(fn)
    call.defvjp(lambda v: (fn(v), None), counter.wrap(lambda _, g: (transpose(g),)))
    return call


def _wrong_vjp(fn):
    """``fn`` as a ``custom_vjp`` whose backward is not its derivative."""
    call = jax.custom_vjp(fn)
    call.defvjp(lambda v: (fn(v), None), lambda _, g: (3.0 * g,))
    return call


def _roll(v):
    return jnp.concatenate([v[:, 1:], v[:, :1]], axis=1)


def _unroll(g):
    return jnp.concatenate([g[:, -1:], g[:, :-1]], axis=1)


def _mlp(counters=None):
    """An MLP with ``relu(mix(.))`` for its first activation and ``roll(sin(.))`` after its
    second layer, where ``mix`` multiplies by a constant matrix and ``roll`` rotates the features.
    With ``counters`` (mix's, roll's), ``mix`` and ``roll`` are linear custom_vjp calls with
    counted backwards, and ``relu(mix(.))`` and ``sin`` are nonlinear custom_vjp calls with wrong
    backwards; without, all are plain functions."""
    generator = np.random.default_rng(11)
    shapes = ((5, 6), (6, 6), (6, 4), (4, 3))
    w1, mixing, w2, w3 = (generator.standard_normal(s).astype(np.float32) for s in shapes)
    mix, roll, sin = (lambda v: v @ mixing), _roll, jnp.sin
    if counters is not None:
        mix = _linear_call(mix, lambda g: g @ mixing.T, counters[0])
        roll = _linear_call(roll, _unroll, counters[1])
        sin = _wrong_vjp(jnp.sin)
    activation = lambda v: jax.nn.relu(mix(v))
    if counters is not None:
        activation = _wrong_vjp(activation)

    def fn(x):
        h = activation(x @ w1 + 0.1)
        return roll(sin(h @ w2)) @ w3

    return fn


def test_linear_calls_use_their_rule_and_nonlinear_calls_keep_the_methods_rules():
    mix, roll = _Counter(), _Counter()
    called, plain = _mlp((mix, roll)), _mlp()
    x = np.random.default_rng(12).standard_normal((4, 5)).astype(np.float32)
    reference = np.zeros(5, np.float32)
    for rule in deeplift.RULES:
        got, delta = deeplift.attribute(
            called, x, reference, target=1, rule=rule, return_delta=True
        )
        _close(got, deeplift.attribute(plain, x, reference, target=1, rule=rule))
        np.testing.assert_allclose(delta, 0.0, atol=1e-5)
    # Rescale binds both linear calls whole, the one inside the nonlinear call too.
    assert mix.count > 0 and roll.count > 0
    counts = (mix.count, roll.count)
    for rules in ("epsilon", "zplus"):
        _close(
            lrp.relevance(called, x, target=1, rules=rules),
            lrp.relevance(plain, x, target=1, rules=rules),
        )
    # LRP binds roll whole; mix is a dense layer (its kernel a constant of the call), whose rule
    # is applied inside the call's body.
    assert roll.count > counts[1] and mix.count == counts[0]


def _sort_call(kind: str):
    def body(v):
        return jnp.sort(v, axis=1)

    if kind == "custom_vjp_call":
        call = jax.custom_vjp(body)
        call.defvjp(lambda v: (body(v), None), lambda _, g: (g,))
    else:
        call = jax.custom_jvp(body)
        call.defjvp(lambda primals, tangents: (body(*primals), tangents[0]))
    return call


@pytest.mark.parametrize("kind", ["custom_vjp_call", "custom_jvp_call"])
def test_an_unsupported_op_in_a_call_is_named_with_the_call(kind):
    fn = _sort_call(kind)
    x = jnp.asarray(np.random.default_rng(13).standard_normal((2, 3)), jnp.float32)
    pattern = f"`sort` \\(in the body of a `{kind}`\\)"
    with pytest.raises(deeplift.UnsupportedOperationError, match=f"DeepLIFT cannot .*{pattern}"):
        deeplift.attribute(fn, x, jnp.zeros(3), target=0)
    with pytest.raises(lrp.UnsupportedOperationError, match=f"LRP cannot .*{pattern}"):
        lrp.relevance(fn, x, target=0)
