"""Where training reports: ``metrics.jsonl`` and TensorBoard, and a progress bar or log lines."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax

from xaijax import checkpoint

logger = logging.getLogger(__name__)


class MetricWriter:
    """Appends one JSON object per record to ``workdir/metrics.jsonl`` and mirrors the numbers
    to TensorBoard (``workdir/tensorboard``, via tensorboardX) under ``<kind>/<name>``."""

    def __init__(self, workdir: str | Path, *, enabled: bool = True):
        self.enabled = enabled
        self._jsonl = None
        self._tensorboard = None
        if enabled:
            from tensorboardX import SummaryWriter

            workdir = Path(workdir)
            workdir.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(workdir / "metrics.jsonl", "a")  # noqa: SIM115 - closed in close()
            self._tensorboard = SummaryWriter(logdir=str(workdir / "tensorboard"))

    def write(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json_line(record))
        self._jsonl.flush()
        kind = record.get("kind", "metrics")
        for name, value in record.items():
            if name not in ("kind", "step") and isinstance(value, int | float):
                self._tensorboard.add_scalar(f"{kind}/{name}", value, record["step"])
        self._tensorboard.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tensorboard.close()


def json_line(record: Mapping[str, Any]) -> str:
    """One JSON line for ``record`` (numpy values converted)."""
    return json.dumps(checkpoint.to_jsonable(dict(record))) + "\n"


class _Progress:
    """A tqdm bar on a terminal, plain log lines otherwise."""

    def __init__(self, total: int, initial: int, enabled: bool | None):
        interactive = sys.stdout.isatty() if enabled is None else enabled
        self._bar = None
        if interactive and jax.process_index() == 0:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def report(self, record: Mapping[str, Any]) -> None:
        shown = {k: v for k, v in record.items() if k not in ("kind", "step", "epoch")}
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)
            if record.get("kind") == "eval":
                self._bar.write(_format(record))
        elif jax.process_index() == 0:
            logger.info("%s", _format(record))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _format(record: Mapping[str, Any]) -> str:
    parts = [f"{record.get('kind', '')} step {record['step']} epoch {record.get('epoch', '?')}"]
    parts += [
        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
        for k, v in record.items()
        if k not in ("kind", "step", "epoch")
    ]
    return " ".join(parts)
