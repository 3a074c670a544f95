"""Fingerprints of cached work: a result is reused only when all that produced it is unchanged.

A unit of work (a trained baseline, one fine-tuning run, one sweep point, one pipeline stage) is
determined by its *inputs*: the config fields it reads, the digest of the variables it starts from
(which chains it to the unit that produced them) and the xaijax version. Its fingerprint is

    digest = sha256(canonical JSON of the flat mapping  dotted field -> value)

so two runs share a digest exactly when every input field is equal. A directory that holds a unit's
partial state (checkpoints) is *claimed* for a fingerprint (:func:`claim`): the fingerprint is
written into it first, and a rerun whose fingerprint differs clears the directory and starts over
(policy ``"recompute"``) or refuses with :class:`StaleResultError` naming the changed fields
(policy ``"strict"``). Finished results carry their digest (:func:`stamp`) and are reused only
under the same digest (:func:`matches`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from typing import Any, Literal

import jax
import numpy as np

from xaijax import paths
from xaijax._version import __version__
from xaijax.checkpoint import write_json_atomic

POLICIES: tuple[str, ...] = ("recompute", "strict")
Policy = Literal["recompute", "strict"]
FINGERPRINT_FILE = "fingerprint.json"
UNRECORDED = "(no fingerprint recorded)"


class StaleResultError(RuntimeError):
    """A cached unit of work was produced by other inputs and the policy is ``"strict"``."""


def _canonical(value: Any) -> Any:
    """``value`` as plain JSON types (tuples -> lists, numpy scalars -> Python numbers)."""
    if hasattr(value, "to_dict"):  # ml_collections.ConfigDict
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot fingerprint a value of type {type(value).__name__}: {value!r}")


def flatten(parts: Mapping[str, Any]) -> dict[str, Any]:
    """Nested mappings as one flat mapping with dotted keys (``{'a': {'b': 1}} -> {'a.b': 1}``)."""
    flat: dict[str, Any] = {}

    def visit(prefix: str, value: Any) -> None:
        value = _canonical(value)
        if isinstance(value, dict) and value:
            for key, item in value.items():
                visit(f"{prefix}.{key}" if prefix else key, item)
        else:
            flat[prefix] = value

    for key, value in parts.items():
        visit(key, value)
    return flat


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """The inputs of a unit of work (flat, dotted keys) and their digest."""

    inputs: Mapping[str, Any]

    @functools.cached_property
    def digest(self) -> str:
        text = json.dumps(dict(self.inputs), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def extend(self, **parts: Any) -> Fingerprint:
        """This fingerprint with more inputs (a unit derived from this one); an input already
        present must keep its value."""
        more = flatten(parts)
        conflicts = sorted(k for k in more if k in self.inputs and self.inputs[k] != more[k])
        if conflicts:
            raise ValueError(f"extending a fingerprint would change its inputs {conflicts}")
        return Fingerprint({**self.inputs, **more})


def fingerprint(**parts: Any) -> Fingerprint:
    """The fingerprint of a unit of work whose inputs are ``parts`` (nested mappings allowed)."""
    return Fingerprint(flatten({"xaijax_version": __version__, **parts}))


def variables_digest(variables: Any) -> str:
    """sha256 over every leaf's path, dtype, shape and bytes: the identity of a set of weights."""
    hasher = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(variables)):
        array = np.ascontiguousarray(np.asarray(leaf))
        hasher.update(f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}|".encode())
        hasher.update(array.tobytes())
    return hasher.hexdigest()[:16]


def model_identity(model: Any) -> str:
    """A stable description of a model object (its class and fields; no memory addresses)."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(model))


def changed_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The keys whose values differ between two flat input mappings (added or removed included)."""
    return sorted(key for key in set(old) | set(new) if old.get(key, UNRECORDED) != new.get(key))


def describe_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """``field: old -> new`` for every changed field, for logs and errors."""
    parts = []
    for key in changed_fields(old, new):
        parts.append(f"{key}: {old.get(key, UNRECORDED)!r} -> {new.get(key, UNRECORDED)!r}")
    return "; ".join(parts)


@dataclasses.dataclass(frozen=True)
class Claim:
    """What :func:`claim` found: ``new`` (nothing there), ``resumed`` (same fingerprint: any
    partial or finished state in the directory is valid) or ``recomputed`` (other inputs had
    produced it: cleared), with the changed fields."""

    status: Literal["new", "resumed", "recomputed"]
    changed: tuple[str, ...] = ()


def check_policy(policy: str) -> Policy:
    if policy not in POLICIES:
        raise ValueError(f"config.resume must be one of {POLICIES}, got {policy!r}")
    return policy  # type: ignore[return-value]


def recorded_inputs(directory: paths.PathLike) -> dict[str, Any] | None:
    """The inputs recorded in ``directory`` (local or an object-store URL) by :func:`claim`, or
    None."""
    path = paths.as_path(directory) / FINGERPRINT_FILE
    if not path.exists():
        return None
    try:
        return dict(json.loads(path.read_text())["inputs"])
    except (json.JSONDecodeError, KeyError, TypeError):
        return None  # A corrupt record cannot vouch for anything: treated as unrecorded.


def reconcile(old: Mapping[str, Any] | None, fp: Fingerprint, *, what: str, policy: str) -> Claim:
    """Compare recorded inputs ``old`` (None: nothing recorded) with ``fp``; log a change, or
    raise :class:`StaleResultError` under the ``"strict"`` policy."""
    policy = check_policy(policy)
    if old is None:
        return Claim("new")
    if dict(old) == dict(fp.inputs):
        return Claim("resumed")
    changes = describe_changes(old, fp.inputs)
    if policy == "strict":
        raise StaleResultError(
            f"{what} was produced by other inputs ({changes}); rerun with --config.resume="
            "recompute to recompute it and everything after it, or use another workdir"
        )
    logging.warning("%s: inputs changed (%s): recomputing it", what, changes)
    return Claim("recomputed", tuple(changed_fields(old, fp.inputs)))


def claim(directory: paths.PathLike, fp: Fingerprint, *, what: str, policy: str) -> Claim:
    """Make ``directory`` hold the work of ``fp``.

    Same recorded fingerprint: nothing changes (partial state resumes, finished state is reused).
    Otherwise (other inputs, or files without a record) the directory is emptied, or
    :class:`StaleResultError` raised under ``"strict"``; then ``fp`` is recorded in it.
    """
    directory = paths.as_path(directory)
    old = recorded_inputs(directory)
    has_files = directory.is_dir() and any(directory.iterdir())
    if old is None and has_files:
        old = {}  # Files of unknown origin: every input counts as changed.
    found = reconcile(old, fp, what=what, policy=policy)
    if found.status == "resumed":
        return found
    if jax.process_index() == 0:
        if has_files:
            for child in directory.iterdir():
                paths.remove(child)
        write_json_atomic(
            directory / FINGERPRINT_FILE, {"digest": fp.digest, "inputs": dict(fp.inputs)}
        )
    return found


def stamp(result: Mapping[str, Any], fp: Fingerprint) -> dict[str, Any]:
    """``result`` carrying the digest of what produced it."""
    return {**result, "fingerprint": fp.digest}


def matches(result: Mapping[str, Any] | None, fp: Fingerprint) -> bool:
    """Whether a stamped ``result`` was produced by ``fp``'s inputs."""
    return result is not None and result.get("fingerprint") == fp.digest
