"""xaijax.runtime: the persistent compilation cache (checked in subprocesses: it is global)."""

import os
import subprocess
import sys

SCRIPT = """
import jax, jax.numpy as jnp
from xaijax import runtime
print("dir", runtime.enable_compilation_cache(min_compile_seconds=0.0))
jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8))).block_until_ready()
"""


def _run(tmp_path, **env):
    environ = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    environ.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), JAX_PLATFORMS="cpu", **env)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=environ, capture_output=True, text=True, check=True
    )
    return done.stdout.split("dir ", 1)[1].split("\n", 1)[0]


def test_default_directory_is_used_and_filled(tmp_path):
    expected = tmp_path / "xdg" / "xaijax" / "jax"
    assert _run(tmp_path) == str(expected)
    assert any(expected.iterdir())


def test_environment_chooses_or_disables_and_jax_setting_wins(tmp_path):
    chosen = tmp_path / "chosen"
    assert _run(tmp_path, XAIJAX_COMPILATION_CACHE=str(chosen)) == str(chosen)
    assert _run(tmp_path, XAIJAX_COMPILATION_CACHE="off") == "None"
    own = tmp_path / "own"
    assert _run(tmp_path, JAX_COMPILATION_CACHE_DIR=str(own)) == str(own)


FLAGS_SCRIPT = """
import os, sys
if sys.argv[1] == "started":
    import jax.numpy as jnp
    jnp.ones(2).block_until_ready()
import xaijax
print("flags", repr(os.environ.get("XLA_FLAGS")))
"""


def _flags_after_import(when: str, **env) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    environ.update(JAX_PLATFORMS="cpu", **env)
    done = subprocess.run(
        [sys.executable, "-c", FLAGS_SCRIPT, when],
        env=environ,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split("flags ", 1)[1].strip()


def test_import_sets_cpu_flags_only_when_the_user_did_not_and_no_backend_started():
    from xaijax import runtime

    assert _flags_after_import("fresh") == repr(runtime.DEFAULT_XLA_FLAGS)
    assert _flags_after_import("fresh", XLA_FLAGS="--xla_cpu_enable_fast_math=false") == repr(
        "--xla_cpu_enable_fast_math=false"
    )
    assert _flags_after_import("fresh", XLA_FLAGS="") == repr("")
    assert _flags_after_import("started") == "None"
