"""One logging set-up for every script: timestamped INFO lines from xaijax, absl kept quiet."""

from __future__ import annotations

import logging


def setup_logging(level: int = logging.INFO) -> None:
    """Log ``level`` and above to stderr as ``<time> <message>`` (replacing earlier handlers)."""
    logging.basicConfig(level=level, format="%(asctime)s %(message)s", force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)
