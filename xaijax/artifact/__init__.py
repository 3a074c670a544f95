"""Deployable artifacts: a compressed model as a ``jax.export`` program, packed weights and a
manifest, runnable without the model code or config.

* :mod:`~xaijax.artifact.loader`: ``load(path) -> Artifact`` (``predict``, ``classify``,
  ``accuracy``); imports only numpy and jax;
* :mod:`~xaijax.artifact.encoding`: packed float, weight-shared or integer weights;
* :mod:`~xaijax.artifact.writer`: ``write(path, apply_fn, encoded, input_shape=...)``;
* :mod:`~xaijax.artifact.final`: the artifact of a finished pipeline workdir.
"""

from xaijax.artifact.encoding import Encoded, encode_float, encode_integer, encode_shared
from xaijax.artifact.final import carried_model, choose_source, export_final
from xaijax.artifact.loader import Artifact, ArtifactError, load, read_manifest
from xaijax.artifact.packing import pack_unsigned, unpack_unsigned
from xaijax.artifact.writer import disk_bytes, write

__all__ = [
    "Artifact",
    "ArtifactError",
    "Encoded",
    "carried_model",
    "choose_source",
    "disk_bytes",
    "encode_float",
    "encode_integer",
    "encode_shared",
    "export_final",
    "load",
    "pack_unsigned",
    "read_manifest",
    "unpack_unsigned",
    "write",
]
