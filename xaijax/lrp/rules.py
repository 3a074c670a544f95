"""The LRP rules of one linear layer ``z = L(a; W) + b`` and the per-layer-kind composites.

With ``R_j`` the relevance of output ``j`` (``R = z * m``, ``m`` the multiplier passed down), a rule
writes ``R_i = sum_j sum_k c_k * zeta_k[i, j] / d_k[j] * R_j``, where each term ``k`` has a
numerator ``zeta_k[i, j]`` (a share of ``a_i w_ij``) and a denominator ``d_k[j]`` (the sum of
the shares over ``i`` plus the term's part of the bias, and the stabiliser):

* ``epsilon(eps)``: one term, ``zeta = a_i w_ij``, ``d = z_j + eps * sign(z_j)`` (``sign(0) = 1``).
* ``zplus()``: one term, ``zeta = a_i w_ij+``, ``d = sum_i a_i w_ij+ + b_j+`` (Montavon et al.'s
  z+ rule: positive weights only; meant for non-negative ``a``).
* ``alpha_beta(alpha, beta)`` with ``alpha - beta = 1``: ``c = alpha`` on
  ``zeta = (a_i w_ij)+``, ``d = sum_i (a_i w_ij)+ + b_j+``, and ``c = -beta`` on
  ``zeta = (a_i w_ij)-``, ``d = sum_i (a_i w_ij)- + b_j-``. ``(a w)+ = a+ w+ + a- w-`` and
  ``(a w)- = a+ w- + a- w+``, so each term is a sum of linear maps of a part of ``a`` by a part
  of ``W``.

``x+ = max(x, 0)``, ``x- = min(x, 0)``. A term whose denominator is exactly 0 passes nothing.
Summing over ``i``: ``sum_i R_i = sum_j R_j - sum_j A_j`` with the absorbed relevance
``A_j = sum_k c_k * (bias part_k[j] + stabiliser_k[j]) / d_k[j] * R_j`` (a term with
``d_k[j] = 0`` absorbs its whole ``c_k * R_j``), so a
bias-free layer with non-zero denominators conserves relevance exactly under z+ and alpha-beta,
and under epsilon up to ``eps * sign(z_j) / (z_j + eps * sign(z_j)) * R_j``.

Every term is linear in its part of ``a`` (``a -> a+`` and ``a -> a-`` are positively homogeneous),
so ``R_i = a_i * d/da_i <sum_k c_k s_k, zeta_k(a)>`` with ``s_k = R / d_k`` held constant: the rule
is the gradient of a surrogate (:func:`surrogate`), and the relevance of weight ``w_ij`` (the
message through it, summed over positions) is ``sum_k c_k * W_part * G(a_part, s_k)``, where
``G(x, g)`` is the kernel gradient of ``<g, L(x; W)>`` (``xaijax.lrp.layers``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
LayerKind = Literal["dense", "conv"]
LAYER_KINDS: tuple[str, ...] = ("dense", "conv")
#: The epsilon of the ``"epsilon"`` and ``"composite"`` presets: a stabiliser small enough that
#: the epsilon rule conserves relevance to float precision away from ``z = 0``.
DEFAULT_EPSILON = 1e-6


@dataclasses.dataclass(frozen=True)
class Rule:
    """One LRP rule (build it with :func:`epsilon`, :func:`zplus` or :func:`alpha_beta`)."""

    name: Literal["epsilon", "zplus", "alpha_beta"]
    epsilon: float = 0.0
    alpha: float = 1.0
    beta: float = 0.0


def epsilon(eps: float = DEFAULT_EPSILON) -> Rule:
    """LRP-epsilon: ``R_i = sum_j a_i w_ij / (z_j + eps * sign(z_j)) * R_j``; ``eps = 0`` is
    LRP-0."""
    if not isinstance(eps, int | float) or isinstance(eps, bool) or not eps >= 0:
        raise ValueError(f"epsilon must be a non-negative number, got {eps!r}")
    return Rule("epsilon", epsilon=float(eps))


def zplus() -> Rule:
    """LRP-z+: ``R_i = sum_j a_i w_ij+ / (sum_i' a_i' w_i'j+ + b_j+) * R_j``."""
    return Rule("zplus")


def alpha_beta(alpha: float, beta: float) -> Rule:
    """LRP-alpha-beta: positive shares weighted ``alpha``, negative ones ``-beta``."""
    if not (isinstance(alpha, int | float) and isinstance(beta, int | float)):
        raise ValueError(f"alpha and beta must be numbers, got {alpha!r}, {beta!r}")
    if beta < 0 or abs(alpha - beta - 1.0) > 1e-12:
        raise ValueError(f"alpha-beta needs beta >= 0 and alpha - beta = 1, got {alpha}, {beta}")
    return Rule("alpha_beta", alpha=float(alpha), beta=float(beta))


Composite = Mapping[str, Rule]  # layer kind ("dense", "conv") -> rule

#: Named rule choices: one rule for every layer, or ``"composite"``: alpha1-beta0 for
#: convolutions and epsilon for dense layers (the split of common LRP practice).
PRESETS: dict[str, dict[str, Rule]] = {
    "epsilon": {"dense": epsilon(), "conv": epsilon()},
    "zplus": {"dense": zplus(), "conv": zplus()},
    "alpha1beta0": {"dense": alpha_beta(1, 0), "conv": alpha_beta(1, 0)},
    "alpha2beta1": {"dense": alpha_beta(2, 1), "conv": alpha_beta(2, 1)},
    "composite": {"dense": epsilon(), "conv": alpha_beta(1, 0)},
}


def resolve(rules: str | Rule | Mapping[str, Rule]) -> dict[str, Rule]:
    """``{"dense": Rule, "conv": Rule}`` from a preset name, one rule, or a mapping by kind."""
    if isinstance(rules, str):
        if rules not in PRESETS:
            raise ValueError(f"unknown LRP rules {rules!r}; presets are {sorted(PRESETS)}")
        return dict(PRESETS[rules])
    if isinstance(rules, Rule):
        return dict.fromkeys(LAYER_KINDS, rules)
    if isinstance(rules, Mapping):
        unknown = sorted(set(rules) - set(LAYER_KINDS))
        missing = sorted(set(LAYER_KINDS) - set(rules))
        if unknown or missing:
            raise ValueError(
                f"LRP rules by layer kind need exactly the keys {LAYER_KINDS}; "
                f"unknown {unknown}, missing {missing}"
            )
        bad = [k for k, r in rules.items() if not isinstance(r, Rule)]
        if bad:
            raise ValueError(f"LRP rules for {bad} are not Rule objects")
        return dict(rules)
    raise ValueError(
        f"rules must be a preset name, a Rule or a mapping by layer kind, got {rules!r}"
    )


# --------------------------------------------------------------------------------------------
# Terms of a rule.


def _identity(x: Array) -> Array:
    return x


def positive(x: Array) -> Array:
    """``max(x, 0)`` with derivative 1 where ``x > 0``, else 0."""
    return jnp.where(x > 0, x, jnp.zeros_like(x))


def negative(x: Array) -> Array:
    """``min(x, 0)`` with derivative 1 where ``x < 0``, else 0."""
    return jnp.where(x < 0, x, jnp.zeros_like(x))


Part = Callable[[Array], Array]


@dataclasses.dataclass(frozen=True)
class Term:
    """``coefficient * sum over pairs of L(input_part(a); weight_part(W)) + bias_part(b)``."""

    coefficient: float
    pairs: tuple[tuple[Part, Part], ...]  # (input part, weight part)
    bias_part: Part
    stabilised: bool  # epsilon: the denominator adds eps * sign(z)


def terms(rule: Rule) -> tuple[Term, ...]:
    """The terms of ``rule`` (module docstring)."""
    if rule.name == "epsilon":
        return (Term(1.0, ((_identity, _identity),), _identity, True),)
    if rule.name == "zplus":
        return (Term(1.0, ((_identity, positive),), positive, False),)
    plus = Term(rule.alpha, ((positive, positive), (negative, negative)), positive, False)
    if rule.beta == 0:
        return (plus,)
    minus = Term(-rule.beta, ((positive, negative), (negative, positive)), negative, False)
    return (plus, minus)


def _safe_divide(numerator: Array, denominator: Array) -> Array:
    zero = denominator == 0
    return jnp.where(zero, jnp.zeros_like(numerator), numerator / jnp.where(zero, 1.0, denominator))


def _sign(z: Array) -> Array:
    return jnp.where(z >= 0, jnp.ones_like(z), -jnp.ones_like(z))


Linear = Callable[[Array, Array], Array]  # (a, W) -> L(a; W), no bias


def evaluate_terms(
    rule: Rule, linear: Linear, a: Array, kernel: Array, bias: Array | None, z: Array
) -> list[tuple[Term, Array, Array]]:
    """Per term: ``(term, numerator(a), 1 / d)`` where ``numerator(a)`` is the term's linear part
    (differentiable in ``a``) and ``1 / d`` its inverse denominator (0 where ``d = 0``, constant).
    ``z`` is the layer's output, bias included."""
    out = []
    for term in terms(rule):
        numerator = sum(linear(part_a(a), part_w(kernel)) for part_a, part_w in term.pairs)
        denominator = lax.stop_gradient(numerator)
        if bias is not None:
            denominator = denominator + term.bias_part(bias)
        if term.stabilised:
            denominator = denominator + rule.epsilon * _sign(z)
        inverse = _safe_divide(jnp.ones_like(denominator), denominator)
        out.append((term, numerator, lax.stop_gradient(inverse)))
    return out


def surrogate(
    rule: Rule, linear: Linear, a: Array, kernel: Array, bias: Array | None, z: Array
) -> Array:
    """Equals ``z``; its gradient with respect to ``a`` is the rule's: with ``m`` the cotangent,
    ``a * grad = R_i`` for ``R = z * m`` (module docstring)."""
    z = lax.stop_gradient(z)
    g = sum(
        term.coefficient * numerator * (z * inverse)
        for term, numerator, inverse in evaluate_terms(rule, linear, a, kernel, bias, z)
    )
    return z + (g - lax.stop_gradient(g))
