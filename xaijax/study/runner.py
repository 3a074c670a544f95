"""Running a study: the pipeline once per seed, each seed driving everything random."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from typing import Any

import ml_collections
from etils import epath

from xaijax.study.rows import ROWS_FILE, check_seeds, rows_from_workdir, seed_dir, write_rows

CONFIG_FILE = "study_config.json"
#: Config fields set to the study seed (besides any other field named ``seed``).
SEED_FIELDS = ("train.seed", "prune.seed", "share.seed", "quantize.seed")


def seed_fields(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """Dotted paths of :data:`SEED_FIELDS` and of every other config field named ``seed``."""
    found: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if key == "seed":
                found.append(path)
            elif isinstance(value, ml_collections.ConfigDict):
                walk(value, f"{path}.")

    walk(config, "")
    return tuple(dict.fromkeys((*SEED_FIELDS, *found)))


def seed_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
    """A copy of ``config`` with every seed field (:func:`seed_fields`) set to ``seed``; missing
    sections are created (the pipeline merges their defaults)."""
    (seed,) = check_seeds((seed,))
    config = copy.deepcopy(config)
    with config.unlocked():
        for path in seed_fields(config):
            *sections, name = path.split(".")
            node = config
            for section in sections:
                if section not in node:
                    node[section] = ml_collections.ConfigDict()
                node = node[section]
            node[name] = seed
    return config


def run(
    config: ml_collections.ConfigDict, workdir: epath.PathLike, seeds: Iterable[int]
) -> list[dict[str, Any]]:
    """The pipeline for every seed (resuming finished work); returns the rows of ``seeds``.

    ``workdir/rows.jsonl`` is rewritten after each seed with the rows of the seeds done so far,
    and ``workdir/study_config.json`` records the seeds and the study's config.
    """
    from xaijax import checkpoint, pipeline  # Late import: tables need no JAX.

    seeds = check_seeds(seeds)
    workdir = epath.Path(workdir)
    checkpoint.write_json_atomic(
        workdir / CONFIG_FILE, {"seeds": list(seeds), "config": config.to_dict()}
    )
    rows: list[dict[str, Any]] = []
    for i, seed in enumerate(seeds):
        logging.info("study: seed %d (%d of %d)", seed, i + 1, len(seeds))
        pipeline.run(seed_config(config, seed), seed_dir(workdir, seed))
        rows = rows_from_workdir(workdir, seeds[: i + 1])
        write_rows(workdir / ROWS_FILE, rows)
    return rows
