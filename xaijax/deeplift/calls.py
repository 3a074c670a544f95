"""Custom-derivative calls kept whole: a linear call's own rule pulls the multipliers back.

Through a linear operation, DeepLIFT's multipliers (the linear rule) and LRP's (LRP-0) are pulled
back exactly like a gradient. So a ``custom_jvp`` / ``custom_vjp`` call whose body is linear in its
input-dependent operands can be bound whole instead of interpreting its inlined body: its value is
the body's, and under ``jax.vjp`` the call's own derivative rule computes the pull-back. A call
whose rule is faster than JAX's derivative of its body (``xaijax.models.ops``: the unfolded input
gradient of small VALID convolutions) then speeds DeepLIFT and LRP up as much as a gradient.

A call is bound whole (:func:`linear_calls`) when every equation of its inlined body is classified
``linear`` or ``const`` by the plan (no nonlinearity, pool or, for LRP, layer inside), at least one
is ``linear``, its results are computed in the body, and no input-dependent value enters it as a
closed-over constant (the leading ``num_consts`` operands, which its rule does not differentiate).
An elementwise linear op that joins a nonlinearity's elementwise group (a scale before a ReLU)
makes its call interpreted inlined too. Anything else is interpreted inlined,
as before: ``jax.nn.relu`` (a ``custom_jvp`` around ``max``) stays a nonlinearity with DeepLIFT's
or LRP's rule, and a body with a primitive no rule covers raises ``UnsupportedOperationError``
naming the primitive and the call.

* DeepLIFT's Rescale rule binds linear calls whole. RevealCancel does not: it propagates the
  positive and negative parts of the deltas through each linear op with the constant factor split
  by sign (``W+ x+ + W- x-``), which a call cannot compute, so it interprets the body.
* LRP binds whole the linear calls without a layer inside. A call whose body is exactly one
  ``conv_general_dilated`` / ``dot_general`` on the call's explicit operands (a convolution given a
  custom derivative) is that layer (:func:`layer_call`): the rule's terms bind the call with the
  sign-split input and kernel, so the layer's pull-back uses the call's rule too. A kernel the
  call closes over is not replaced (its rule would still use the closed-over kernel).

The call's rule is trusted to be the derivative of its body, as training trusts it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, MutableMapping, Sequence
from typing import Any

from xaijax.deeplift.program import _bind_call, _Call, _Program, _read

_WHOLE_KINDS = frozenset({"linear", "const"})


def _explicit_inputs(call: _Call) -> tuple[Any, ...]:
    """The call's operands after the constants it closes over (which its rule treats as fixed)."""
    return call.inputs[call.params.get("num_consts", 0) :]


def _is_linear_call(
    program: _Program,
    kinds: Sequence[str],
    varying: Collection[int],
    call: _Call,
    excluded: Collection[int],
) -> bool:
    closed_over = call.inputs[: len(call.inputs) - len(_explicit_inputs(call))]
    if any(isinstance(a, int) and a in varying for a in closed_over):
        return False
    body = range(call.start, call.stop)
    body_kinds = {kinds[i] for i in body}
    if "linear" not in body_kinds or not body_kinds <= _WHOLE_KINDS:
        return False
    if any(i in excluded for i in body):
        return False
    produced = {slot for i in body for slot in program.eqns[i].outputs}
    return all(isinstance(a, int) and a in produced for a in call.outputs)


def linear_calls(
    program: _Program,
    kinds: Sequence[str],
    varying: Collection[int],
    excluded: Collection[int] = frozenset(),
) -> dict[int, _Call]:
    """The outermost custom-derivative calls to bind whole, keyed by their first equation.
    ``kinds``: the plan's kind of every equation; ``varying``: the input-dependent slots;
    ``excluded``: equations a whole call must not hold (LRP's layers and bias additions)."""
    chosen: dict[int, _Call] = {}
    covered = 0  # equations before this index belong to a chosen call
    for call in sorted(program.calls, key=lambda c: (c.start, -c.stop)):
        if call.start >= covered and _is_linear_call(program, kinds, varying, call, excluded):
            chosen[call.start] = call
            covered = call.stop
    return chosen


def run_call(call: _Call, env: MutableMapping[int, Any]) -> int:
    """Bind ``call`` on its operands in ``env``, store its results there, and return the index of
    the first equation after its body (where the interpreter resumes)."""
    results = _bind_call(call, [_read(env, a) for a in call.inputs])
    env.update(zip(call.outputs, results, strict=True))
    return call.stop


def layer_call(program: _Program, index: int, positions: Sequence[int]) -> _Call | None:
    """The call whose body is exactly equation ``index`` on the call's operands, or None. The
    operands at ``positions`` (an LRP layer's input and kernel) must each be one explicit operand
    of the call, so that replacing them in the call replaces them in the equation and its rule."""
    eqn = program.eqns[index]
    for call in program.calls:
        if (call.start, call.stop) != (index, index + 1) or call.outputs != eqn.outputs:
            continue
        explicit = _explicit_inputs(call)
        atoms = [eqn.inputs[j] for j in positions]
        if all(
            isinstance(a, int) and call.inputs.count(a) == 1 and eqn.inputs.count(a) == 1
            for a in atoms
        ) and all(a in explicit for a in atoms):
            return call
    return None


def call_operands(
    call: _Call, eqn_inputs: Sequence[Any], env: Mapping[int, Any], replace: Mapping[int, Any]
) -> list[Any]:
    """The call's operands from ``env`` with the equation operands at the positions in
    ``replace`` (position -> value) replaced (see :func:`layer_call`)."""
    by_slot = {eqn_inputs[j]: value for j, value in replace.items()}
    return [
        by_slot[a] if isinstance(a, int) and a in by_slot else _read(env, a) for a in call.inputs
    ]
