"""What the command-line scripts (``scripts/*.py``) share: the ``--config`` and ``--workdir`` flags,
the start of every ``main`` and ``app.run`` with the flags a script requires.

A script defines its flags at import (``_CONFIG = cli.config_flag()``,
``_WORKDIR = cli.workdir_flag("...")``), begins ``main(argv)`` with :func:`start` (no positional
arguments, then :func:`set_up`: the one logging set-up, ``xaijax.logs``, and JAX's persistent
compilation cache, ``xaijax.runtime``) and ends with ``cli.run(main)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags
from etils import epath
from ml_collections import config_flags

from xaijax import logs, runtime


def config_flag(help_text: str = "Config file.", *, lock_config: bool = False) -> flags.FlagHolder:
    """``--config``: a config file (``ml_collections.config_flags``), whose fields the command line
    may override (``--config.train.epochs=2``)."""
    return config_flags.DEFINE_config_file("config", None, help_text, lock_config=lock_config)


def workdir_flag(help_text: str) -> flags.FlagHolder:
    """``--workdir``: the directory a script writes to."""
    return flags.DEFINE_string("workdir", None, help_text)


def check_no_arguments(argv: Sequence[str]) -> None:
    """Refuse positional arguments (everything is a flag)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")


def set_up() -> None:
    """Before a script's work: the one logging set-up and JAX's persistent compilation cache."""
    logs.setup_logging()
    runtime.enable_compilation_cache()


def start(argv: Sequence[str]) -> None:
    """The start of a script's ``main``: :func:`check_no_arguments`, then :func:`set_up`."""
    check_no_arguments(argv)
    set_up()


def integers(values: Sequence[str], flag: str) -> list[int]:
    """A list flag's values as integers (``--seeds=0,1,2``), or a usage error naming ``flag``."""
    try:
        return [int(value) for value in values]
    except ValueError as err:
        raise app.UsageError(f"{flag} must be integers: {err}") from None


def print_table(results: dict[str, Any], workdir: str | epath.Path) -> None:
    """Print an experiment's ``results["table"]`` and where its ``results.json`` is."""
    print(results["table"], flush=True)
    print(f"results in {epath.Path(workdir) / 'results.json'}", flush=True)


def run(main: Callable[[list[str]], None], required: Sequence[str] = ("config", "workdir")) -> None:
    """``app.run(main)`` with the flags ``required`` marked required."""
    flags.mark_flags_as_required(list(required))
    app.run(main)
