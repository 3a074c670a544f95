"""Config sections of the stages: merged with their defaults and validated in one idiom, and as
plain dicts for fingerprints.

Every stage reads its section through :func:`section` (unknown fields, sub-sections included,
raise ``ValueError`` naming them) and validates it with :func:`check_integers` and
:func:`check_choice`, whose errors name the field as ``config.<stage>.<field>``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections


def plain(
    section: Any, drop: tuple[str, ...] = (), neutral: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A config section as a plain dict without the fields ``drop``, and without each field of
    ``neutral`` whose value is its neutral one.

    ``neutral`` names fields added after results were cached, at the value that reproduces the
    computation they had before (e.g. ``quantize.backend="aqt"``): a fingerprint then leaves them
    out, so those results stay valid, and includes them as soon as they change anything. A
    mapping as neutral value names the neutral fields of a sub-section (e.g.
    ``{"importance": {"examples_per_class": None}}``)."""
    given = section.to_dict() if hasattr(section, "to_dict") else dict(section)
    neutral = neutral or {}
    found = {}
    for key, value in given.items():
        if key in drop:
            continue
        if key in neutral and isinstance(neutral[key], Mapping) and isinstance(value, Mapping):
            value = plain(value, neutral=neutral[key])
        elif key in neutral and value == neutral[key]:
            continue
        found[key] = value
    return found


def _unknown_fields(given: Mapping[str, Any], known: Mapping[str, Any], prefix: str) -> list[str]:
    """Dotted names of the fields of ``given`` that ``known`` lacks, sub-sections included."""
    found = []
    for key, value in given.items():
        if key not in known:
            found.append(f"{prefix}{key}")
        elif isinstance(known[key], Mapping) and isinstance(value, Mapping):
            found += _unknown_fields(value, known[key], f"{prefix}{key}.")
    return found


def section(
    config: ml_collections.ConfigDict,
    name: str,
    defaults: ml_collections.ConfigDict,
    validate: Callable[[ml_collections.ConfigDict], None],
) -> ml_collections.ConfigDict:
    """``defaults`` updated by ``config.<name>`` (sub-sections field by field; unknown fields
    rejected), then validated."""
    merged = copy.deepcopy(defaults)
    if name in config:
        given = config[name].to_dict() if hasattr(config[name], "to_dict") else dict(config[name])
        unknown = _unknown_fields(given, merged.to_dict(), "")
        if unknown:
            raise ValueError(f"config.{name} has unknown fields {unknown}; known: {sorted(merged)}")
        merged.update(given)
    validate(merged)
    return merged


def check_integers(section: Mapping[str, Any], where: str, minimums: Mapping[str, int]) -> None:
    """Raise ``ValueError`` naming ``config.<where>.<field>`` unless every field of ``minimums``
    is an integer (not a bool) at least its minimum."""
    for field, minimum in minimums.items():
        value = section[field]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(
                f"config.{where}.{field} must be an integer >= {minimum}, got {value!r}"
            )


def check_choice(
    section: Mapping[str, Any],
    where: str,
    field: str,
    allowed: Sequence[Any],
    *,
    optional: bool = False,
) -> None:
    """Raise ``ValueError`` naming ``config.<where>.<field>`` unless it is one of ``allowed``
    (or None when ``optional``)."""
    value = section[field]
    if not (optional and value is None) and value not in tuple(allowed):
        none = "None or " if optional else ""
        raise ValueError(
            f"config.{where}.{field} must be {none}one of {tuple(allowed)}, got {value!r}"
        )
