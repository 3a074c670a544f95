"""Process-wide JAX settings: XLA's CPU options (set on import) and the compilation cache.

XLA options: importing xaijax sets ``XLA_FLAGS`` to :data:`DEFAULT_XLA_FLAGS` when the user has
not set ``XLA_FLAGS`` (set it, even to an empty string, to keep XLA's defaults) and no JAX
backend has started yet. jaxlib 0.10 hands convolutions to YNNPACK, which runs each on one thread;
XLA's own (Eigen) convolutions are as fast on one core and use every core: the small VGG's
training step runs 1.4x faster on 2 cores, LeNet-5's 1.08x, one core unchanged. Only CPU
compilations read these options; gradients agree with the defaults to float32 rounding
(docs/benchmarks.md).

Compilation cache (the scripts turn it on with :func:`enable_compilation_cache`):

A pipeline compiles many small programs (a train, eval and explain step per model width, per
criterion, per bit allocation); each takes 1-5 s to compile on a CPU. JAX's persistent cache
keeps the compiled programs on disk, so a rerun, a resumed run or another experiment with the
same shapes loads them instead (LeNet-5's first train step: 6.3 s cold, 0.8 s from the cache).

``XAIJAX_COMPILATION_CACHE`` chooses the directory (default ``$XDG_CACHE_HOME/xaijax/jax``,
i.e. ``~/.cache/xaijax/jax``); ``off`` disables it. A cache the user configured for JAX itself
(``JAX_COMPILATION_CACHE_DIR`` or ``jax.config``) is left as it is.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

#: ``XLA_FLAGS`` set on import for CPU runs (module docstring). Only for the jaxlib versions the
#: flag was measured with: XLA aborts on a flag it does not know.
DEFAULT_XLA_FLAGS = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
_FLAGS_JAXLIB = "0.10."
CACHE_ENV = "XAIJAX_COMPILATION_CACHE"
_OFF = frozenset({"0", "off", "false", "no", "none"})


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/xaijax/jax`` (``~/.cache/xaijax/jax`` when the variable is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "xaijax" / "jax"


def enable_compilation_cache(
    cache_dir: str | os.PathLike | None = None, *, min_compile_seconds: float = 0.1
) -> Path | None:
    """Turn on JAX's persistent compilation cache for programs that took at least
    ``min_compile_seconds`` to compile. Returns the directory in use, or None when disabled by
    ``XAIJAX_COMPILATION_CACHE=off``. ``cache_dir`` overrides the environment and the default;
    a directory already configured for JAX wins over all of them."""
    setting = os.environ.get(CACHE_ENV, "").strip()
    if setting.lower() in _OFF and cache_dir is None:
        return None
    configured = jax.config.jax_compilation_cache_dir
    if configured:
        return Path(configured)
    directory = Path(cache_dir or setting or default_cache_dir()).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    return directory


def _backends_started() -> bool:
    try:
        from jax._src import xla_bridge

        return xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):  # A private helper; assume nothing started.
        return False


def set_default_xla_flags() -> bool:
    """Set ``XLA_FLAGS`` to :data:`DEFAULT_XLA_FLAGS` unless the user set ``XLA_FLAGS``, a
    backend already started (it would not read them) or jaxlib is not the measured version.
    Returns whether it set them."""
    import jaxlib

    if "XLA_FLAGS" in os.environ or not jaxlib.__version__.startswith(_FLAGS_JAXLIB):
        return False
    if _backends_started():
        return False
    os.environ["XLA_FLAGS"] = DEFAULT_XLA_FLAGS
    return True
