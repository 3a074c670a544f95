"""Write a deployable artifact: the exported program, its packed weights and the manifest.

``write(path, apply_fn, encoded, input_shape=...)`` exports
``program(weights, images) = apply_fn(encoded.decode(weights), images)`` through ``jax.export``
with a symbolic batch dimension, measures its test accuracy with the exported program itself when
test data are given, and writes the directory described in :mod:`xaijax.artifact.loader`. On a
local disk the write is atomic (a temporary sibling renamed into place). On an object store
(``gs://``) a directory cannot be renamed atomically: the files are built in a local temporary
directory, an earlier artifact there is deleted, and the files are uploaded with the manifest last,
so a directory without a manifest is an unfinished write (and a reader during the upload may find
no artifact). The weights file is written byte for byte
the same for the same arrays (fixed zip timestamps), so its checksum is reproducible.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax import export

from xaijax import paths
from xaijax.artifact.encoding import Encoded
from xaijax.artifact.loader import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    PROGRAM,
    WEIGHTS,
    ArtifactError,
    sha256_file,
)

ApplyFn = Callable[[Mapping[str, Any], jax.Array], jax.Array]
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """An uncompressed ``.npz`` of ``arrays`` (sorted by name) with fixed timestamps."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(
                buffer, np.ascontiguousarray(arrays[name]), allow_pickle=False
            )
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            archive.writestr(info, buffer.getvalue())


def export_program(
    apply_fn: ApplyFn,
    encoded: Encoded,
    input_shape: Sequence[int],
    input_dtype: Any = jnp.float32,
    platforms: Sequence[str] | None = None,
) -> export.Exported:
    """``jax.export`` of ``(weights, images[b, *input_shape]) -> logits``, ``b`` symbolic."""

    def program(weights: Mapping[str, jax.Array], images: jax.Array) -> jax.Array:
        return apply_fn(encoded.decode(weights), images)

    (batch,) = export.symbolic_shape("batch")
    weights = {name: jax.ShapeDtypeStruct(a.shape, a.dtype) for name, a in encoded.arrays.items()}
    images = jax.ShapeDtypeStruct((batch, *input_shape), input_dtype)
    exporter = export.export(
        jax.jit(program), platforms=None if platforms is None else tuple(platforms)
    )
    # Without Python tracebacks in the program's locations, the same model serializes to the
    # same bytes wherever it is exported from (and the exporting machine's paths stay out).
    limit = jax.config.jax_traceback_in_locations_limit
    jax.config.update("jax_traceback_in_locations_limit", 0)
    try:
        return exporter(weights, images)
    finally:
        jax.config.update("jax_traceback_in_locations_limit", limit)


def _accuracy(
    program: export.Exported, arrays: Mapping[str, np.ndarray], data: Any, batch_size: int
) -> float:
    images, labels = (np.asarray(x) for x in data)
    if images.shape[0] != labels.shape[0] or not labels.size:
        raise ValueError(f"test data: {images.shape[0]} images, {labels.shape[0]} labels")
    run = jax.jit(program.call)
    weights = jax.device_put(dict(arrays))
    hits = 0
    for start in range(0, images.shape[0], batch_size):
        logits = run(weights, images[start : start + batch_size])
        hits += int(np.sum(np.argmax(np.asarray(logits), -1) == labels[start : start + batch_size]))
    return hits / labels.shape[0]


def _check_replaceable(target: epath.Path) -> bool:
    """Whether ``target`` holds an artifact to replace (False: nothing or an empty folder);
    raises :class:`ArtifactError` if it holds anything else."""
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        return False
    if not (target / MANIFEST).exists():
        raise ArtifactError(f"{target} exists and is not an artifact: refusing to replace it")
    return True


def _replace_dir(source: pathlib.Path, target: epath.Path) -> None:
    """Move directory ``source`` to ``target``, replacing an earlier artifact (or empty folder)."""
    if _check_replaceable(target):
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(source, target)
        shutil.rmtree(old)
        return
    if target.exists():
        target.rmdir()
    os.replace(source, target)


def _upload_dir(source: pathlib.Path, target: epath.Path) -> None:
    """Copy the local directory ``source`` to the object-store ``target``, replacing an earlier
    artifact: not atomic (see the module doc); the manifest is uploaded last."""
    _check_replaceable(target)
    paths.remove(target)
    paths.copy_tree(source, target, last=(MANIFEST,))


def write(
    path: str | os.PathLike,
    apply_fn: ApplyFn,
    encoded: Encoded,
    *,
    input_shape: Sequence[int],
    input_dtype: Any = np.float32,
    classes: Sequence[str] | None = None,
    test: tuple[Any, Any] | None = None,
    batch_size: int = 256,
    platforms: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Export and write the artifact at ``path`` (replacing one there); returns its manifest.

    Args:
      apply_fn: ``(variables, images) -> logits`` of the (shrunk) model, e.g.
        ``functools.partial(model.apply, train=False)``.
      encoded: the packed weights (:mod:`xaijax.artifact.encoding`).
      input_shape: one example's shape (the batch dimension is symbolic).
      classes: class names (default ``"0" ... "C-1"`` for C logits).
      test: ``(images, labels)`` to measure the artifact's accuracy with the exported program.
      platforms: ``jax.export`` platforms (default: this process's backend).
      metadata: JSON-able fields recorded under ``source`` in the manifest.
    """
    input_shape = [int(d) for d in input_shape]
    if not input_shape or min(input_shape) < 1:
        raise ValueError(f"input_shape must list positive sizes, got {input_shape}")
    program = export_program(apply_fn, encoded, input_shape, input_dtype, platforms)
    (logits,) = program.out_avals
    num_classes = int(logits.shape[-1])
    classes = (
        [str(c) for c in classes] if classes is not None else list(map(str, range(num_classes)))
    )
    if len(classes) != num_classes:
        raise ValueError(f"{len(classes)} class names for {num_classes} logits")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    accuracy = None if test is None else _accuracy(program, encoded.arrays, test, batch_size)
    target = paths.as_path(path)
    local = paths.is_local(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging_parent = target.parent if local else None  # Object stores: built locally, uploaded.
    staging = pathlib.Path(tempfile.mkdtemp(dir=staging_parent, prefix=f".{target.name}.tmp"))
    try:
        (staging / PROGRAM).write_bytes(program.serialize())
        write_npz(staging / WEIGHTS, encoded.arrays)
        files = {
            key: {"name": name, "sha256": sha256_file(staging / name), "bytes": 0}
            for key, name in (("program", PROGRAM), ("weights", WEIGHTS))
        }
        for entry in files.values():
            entry["bytes"] = (staging / entry["name"]).stat().st_size
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "jax_version": jax.__version__,
            "encoding": encoded.kind,
            "input": {"shape": input_shape, "dtype": str(np.dtype(input_dtype))},
            "classes": classes,
            "accuracy": accuracy,
            "accuracy_examples": None if test is None else int(np.shape(test[1])[0]),
            "platforms": list(program.platforms),
            "size": {
                "computed_bytes": float(encoded.computed_bytes),
                "weights_bytes": files["weights"]["bytes"],
                "program_bytes": files["program"]["bytes"],
            },
            "files": files,
            "weights": {
                name: {"shape": list(a.shape), "dtype": str(a.dtype)}
                for name, a in sorted(encoded.arrays.items())
            },
            "layers": encoded.layers,
            "source": dict(metadata or {}),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n")
        if local:
            _replace_dir(staging, target)
        else:
            _upload_dir(staging, target)
            shutil.rmtree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def disk_bytes(path: str | os.PathLike) -> int:
    """Bytes of the artifact's files (program, weights and manifest)."""
    root = paths.as_path(path)
    return sum(paths.size(root / name) for name in (PROGRAM, WEIGHTS, MANIFEST))
