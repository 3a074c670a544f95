"""Load and run a deployable artifact with nothing but numpy and jax.

An artifact is a directory of three files:

* ``manifest.json``: format and version, the jax version that wrote it, the input shape and
  dtype of one example, the class names, the test accuracy measured with the artifact itself, the
  computed and on-disk sizes, the shape and dtype of every packed weight array, and the size and
  sha256 of the two files below;
* ``weights.npz``: the packed weights (uint8 bit streams of codebook indices or integers, float32
  codebooks and scales, float biases), the arrays the program takes as its first argument;
* ``program.jaxexport``: the inference program serialized by ``jax.export``,
  ``logits = program(weights, images)``, with a symbolic batch dimension; it unpacks and decodes
  the weights itself, so no model code or config is needed to run it.

This module imports nothing from ``xaijax`` (only the standard library, numpy and jax), so it can
be copied beside an artifact or loaded by file path. :func:`load` checks the manifest, both
checksums, and that the weights and the program agree with the manifest, raising
:class:`ArtifactError` naming what is wrong.

An artifact may lie on a local disk or in an object store (``gs://bucket/run/artifact``): URL
paths are read through ``etils.epath`` (with its backend for the scheme), imported only for them.
Each file is read once, whole, and checked and parsed from memory.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax import export

FORMAT = "xaijax-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.npz"
PROGRAM = "program.jaxexport"
REQUIRED_FIELDS = {
    "format": str,
    "format_version": int,
    "jax_version": str,
    "encoding": str,
    "input": dict,
    "classes": list,
    "files": dict,
    "weights": dict,
    "size": dict,
}


# A URL such as gs://bucket/x (xaijax.paths has the same test; this module imports no xaijax).
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class ArtifactError(ValueError):
    """The artifact is missing, corrupt, or its parts do not match each other."""


def _as_path(path: str | os.PathLike) -> Any:
    """``path`` as a ``pathlib.Path``, or for a URL (``gs://...``) as an ``etils.epath.Path``."""
    if _URL.match(os.fspath(path)) is None:
        return Path(path)
    from etils import epath  # Only URLs need it.

    return epath.Path(path)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with _as_path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the artifact directory ``path``, its fields and version checked."""
    file = _as_path(path) / MANIFEST
    if not file.is_file():
        raise ArtifactError(f"{path} is not an artifact: {MANIFEST} is missing")
    try:
        manifest = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArtifactError(f"corrupt manifest {file}: not valid JSON ({error})") from error
    if not isinstance(manifest, dict):
        raise ArtifactError(f"corrupt manifest {file}: not a JSON object")
    for field, kind in REQUIRED_FIELDS.items():
        if not isinstance(manifest.get(field), kind):
            raise ArtifactError(
                f"corrupt manifest {file}: field {field!r} missing or not a {kind.__name__}"
            )
    if manifest["format"] != FORMAT:
        raise ArtifactError(f"{file} is a {manifest['format']!r} manifest, not {FORMAT!r}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise ArtifactError(
            f"{file} has format version {manifest['format_version']}; this loader reads "
            f"version {FORMAT_VERSION}"
        )
    for name in ("program", "weights"):
        entry = manifest["files"].get(name)
        if not isinstance(entry, dict) or not {"name", "sha256", "bytes"} <= set(entry):
            raise ArtifactError(f"corrupt manifest {file}: files.{name} needs name, sha256, bytes")
    shape = manifest["input"].get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ArtifactError(f"corrupt manifest {file}: input.shape must list positive ints")
    return manifest


def _checked_file(root: Any, manifest: Mapping[str, Any], name: str) -> tuple[Any, bytes]:
    """The path and bytes of the file ``files[name]`` of the artifact, size and sha256 checked."""
    entry = manifest["files"][name]
    file = root / entry["name"]
    if Path(entry["name"]).name != entry["name"] or not file.is_file():
        raise ArtifactError(f"artifact {root}: the {name} file {entry['name']!r} is missing")
    content = file.read_bytes()
    if len(content) != entry["bytes"]:
        raise ArtifactError(
            f"artifact {root}: the {name} file {file.name} has {len(content)} bytes, the "
            f"manifest says {entry['bytes']} (corrupt or replaced)"
        )
    if hashlib.sha256(content).hexdigest() != entry["sha256"]:
        raise ArtifactError(
            f"artifact {root}: checksum mismatch for the {name} file {file.name} "
            "(corrupt or replaced)"
        )
    return file, content


def _read_weights(file: Any, content: bytes, expected: Mapping[str, Any]) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(content), allow_pickle=False) as npz:
            weights = {name: npz[name] for name in npz.files}
    except (OSError, ValueError) as error:
        raise ArtifactError(f"corrupt weights file {file}: {error}") from error
    if set(weights) != set(expected):
        raise ArtifactError(
            f"weights file {file} holds {sorted(weights)}, the manifest lists {sorted(expected)}"
        )
    for name, array in weights.items():
        spec = expected[name]
        if list(array.shape) != list(spec["shape"]) or str(array.dtype) != spec["dtype"]:
            raise ArtifactError(
                f"weights file {file}: {name!r} is {array.dtype}{list(array.shape)}, the manifest "
                f"says {spec['dtype']}{list(spec['shape'])}"
            )
    return weights


def _read_program(file: Any, content: bytes) -> export.Exported:
    try:
        return export.deserialize(bytearray(content))
    except Exception as error:  # The deserializer raises many kinds on bad bytes.
        raise ArtifactError(f"cannot deserialize the program {file}: {error}") from error


def _check_program(
    root: Any, program: export.Exported, weights: Mapping[str, np.ndarray], manifest: Mapping
) -> None:
    """The program takes ``(weights, images[b, *input_shape])`` and runs on this backend."""
    dtype = manifest["input"].get("dtype", "float32")
    images = jax.ShapeDtypeStruct((1, *manifest["input"]["shape"]), np.dtype(dtype))
    expected = jax.tree.structure(((dict(weights), images), {}))
    if program.in_tree != expected:
        raise ArtifactError(
            f"artifact {root}: the program's arguments {program.in_tree} do not match the "
            f"weights file and manifest ({expected})"
        )
    leaves = [*jax.tree.leaves(dict(weights)), images]
    for aval, leaf in zip(program.in_avals, leaves, strict=True):
        shape = tuple(aval.shape)
        symbolic_batch = leaf is images and not isinstance(shape[0], int)
        wanted = tuple(leaf.shape[1:]) if symbolic_batch else tuple(leaf.shape)
        got = shape[1:] if symbolic_batch else shape
        if got != wanted or aval.dtype != leaf.dtype:
            raise ArtifactError(
                f"artifact {root}: the program expects {aval.dtype}{list(shape)}, the manifest "
                f"and weights give {leaf.dtype}{list(leaf.shape)}"
            )
    if jax.default_backend() not in program.platforms:
        raise ArtifactError(
            f"artifact {root} was exported for {program.platforms}, this process runs on "
            f"{jax.default_backend()!r}"
        )


class Artifact:
    """A loaded artifact: ``predict(images)`` gives logits, ``classify(images)`` class indices."""

    def __init__(self, path: Any, manifest: dict[str, Any], program: export.Exported, weights):
        self.path = path
        self.manifest = manifest
        self.program = program
        self.input_shape = tuple(manifest["input"]["shape"])
        self.input_dtype = np.dtype(manifest["input"].get("dtype", "float32"))
        self.classes = tuple(manifest["classes"])
        self._weights = jax.device_put(weights)
        self._run = jax.jit(program.call)

    def predict(self, images: Any, batch_size: int | None = None) -> np.ndarray:
        """Logits ``[N, num_classes]`` of ``images [N, *input_shape]``, ``batch_size`` at a time
        (all at once when None)."""
        images = np.asarray(images, self.input_dtype)
        if images.ndim != 1 + len(self.input_shape) or images.shape[1:] != self.input_shape:
            raise ValueError(
                f"images must have shape [N, {', '.join(map(str, self.input_shape))}], "
                f"got {list(images.shape)}"
            )
        if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
            raise ValueError(f"batch_size must be None or >= 1, got {batch_size!r}")
        step = batch_size or max(images.shape[0], 1)
        outputs = [
            np.asarray(self._run(self._weights, images[start : start + step]))
            for start in range(0, images.shape[0], step)
        ]
        if not outputs:
            return np.zeros((0, len(self.classes)), np.float32)
        return np.concatenate(outputs)

    def classify(self, images: Any, batch_size: int | None = None) -> np.ndarray:
        """The predicted class index of every image."""
        return np.argmax(self.predict(images, batch_size), axis=-1)

    def accuracy(self, images: Any, labels: Any, batch_size: int | None = None) -> float:
        """Fraction of ``images`` classified as ``labels``."""
        labels = np.asarray(labels)
        if labels.shape != (np.shape(images)[0],):
            raise ValueError(f"labels must have shape [{np.shape(images)[0]}]")
        if not labels.size:
            raise ValueError("accuracy of no examples")
        return float(np.mean(self.classify(images, batch_size) == labels))

    __call__ = predict


def load(path: str | os.PathLike) -> Artifact:
    """The artifact in directory ``path``, every part checked (module docstring)."""
    root = _as_path(path)
    manifest = read_manifest(root)
    weights = _read_weights(*_checked_file(root, manifest, "weights"), manifest["weights"])
    program = _read_program(*_checked_file(root, manifest, "program"))
    _check_program(root, program, weights, manifest)
    return Artifact(root, manifest, program, weights)
