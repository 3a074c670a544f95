"""Where training reports: ``metrics.jsonl`` and TensorBoard, and a progress bar or log lines."""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from collections.abc import Mapping
from typing import Any

import jax

from xaijax import checkpoint, paths

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


class MetricWriter:
    """Appends one JSON object per record to ``workdir/metrics.jsonl`` and mirrors the numbers
    to TensorBoard (``workdir/tensorboard``, via tensorboardX) under ``<kind>/<name>``.

    ``workdir`` may be local or an object store (``gs://bucket/run``, through
    :class:`xaijax.paths.LocalMirror`): object stores cannot append, so both files grow in a local
    folder and are uploaded whole at most every ``upload_every_s`` seconds and on :meth:`close`
    (an earlier ``metrics.jsonl`` there is continued, as locally).
    """

    def __init__(
        self, workdir: paths.PathLike, *, enabled: bool = True, upload_every_s: float = 30.0
    ):
        if upload_every_s < 0:
            raise ValueError(f"upload_every_s must be >= 0, got {upload_every_s}")
        self.enabled = enabled
        self._upload_every_s = upload_every_s
        self._jsonl = None
        self._tensorboard = None
        self._mirror = None
        if enabled:
            from tensorboardX import SummaryWriter

            self._mirror = paths.LocalMirror(workdir, download=(METRICS_FILE,))
            self._uploaded_at = time.monotonic()
            local = self._mirror.local
            self._jsonl = open(local / METRICS_FILE, "a")  # noqa: SIM115 - closed in close()
            # A suffix of its own: tensorboardX names event files by the second and host, and a
            # resumed run started within the same second would overwrite the earlier file.
            self._tensorboard = SummaryWriter(
                logdir=str(local / "tensorboard"), filename_suffix=f".{uuid.uuid4().hex[:8]}"
            )

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
        if time.monotonic() - self._uploaded_at >= self._upload_every_s:
            self._mirror.sync()
            self._uploaded_at = time.monotonic()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tensorboard.close()
            self._mirror.close()


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
