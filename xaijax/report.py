"""Result tables and figures: CSV, Markdown tables and matplotlib (Agg) plots, written atomically.

Every writer renders in memory and writes through :func:`xaijax.paths.write_bytes_atomic` (locally a
temporary file in the destination folder moved into place with ``os.replace``; on an object store
one upload), so an interrupted run never leaves a half-written artifact behind.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import matplotlib
from etils import epath

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from xaijax import paths

Series = Mapping[str, tuple[Sequence[float], Sequence[float]]]


def write_text_atomic(path: str | os.PathLike, text: str) -> epath.Path:
    """Write ``text`` to ``path`` atomically (:func:`xaijax.paths.write_text_atomic`)."""
    return paths.write_text_atomic(path, text)


def _columns(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None) -> list[str]:
    if columns is not None:
        return list(columns)
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def write_csv_atomic(
    path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None
) -> epath.Path:
    """Write ``rows`` (one dict per row) as CSV; columns default to the union of the row keys."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_columns(rows, columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(path, buffer.getvalue())


def format_value(value: Any) -> str:
    """Compact human formatting: floats to 4 significant digits, large ints with separators."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table of ``rows``; missing cells are left empty."""
    names = _columns(rows, columns)
    lines = ["| " + " | ".join(names) + " |", "|" + "|".join("---" for _ in names) + "|"]
    for row in rows:
        cells = [format_value(row[name]) if name in row else "" for name in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _save_figure(fig: plt.Figure, path: str | os.PathLike) -> epath.Path:
    """Render ``fig`` in the format of ``path``'s suffix and write it atomically; closes ``fig``."""
    path = paths.as_path(path)
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format=path.suffix.lstrip(".") or None, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return paths.write_bytes_atomic(path, buffer.getvalue())


def line_plot(
    path: str | os.PathLike,
    series: Series,
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    log_x: bool = False,
) -> epath.Path:
    """One line with markers per named series ``name -> (xs, ys)``; points sorted by x."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (xs, ys) in series.items():
        points = sorted(zip(xs, ys, strict=True))
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log_x:
        ax.set_xscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save_figure(fig, path)


def grouped_bar_plot(
    path: str | os.PathLike,
    groups: Mapping[str, Mapping[str, float]],
    *,
    ylabel: str,
    title: str = "",
) -> epath.Path:
    """Bars per category (x axis: the inner keys, in first-seen order), one colour per group."""
    categories = list(dict.fromkeys(key for values in groups.values() for key in values))
    width = 0.8 / max(len(groups), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(categories) * max(len(groups), 1)), 4))
    for i, (name, values) in enumerate(groups.items()):
        xs = [c + i * width for c in range(len(categories))]
        ax.bar(xs, [values.get(cat, 0.0) for cat in categories], width=width, label=name)
    ax.set_xticks([c + width * (len(groups) - 1) / 2 for c in range(len(categories))])
    ax.set_xticklabels(categories, rotation=45, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    return _save_figure(fig, path)


def image_grid(
    path: str | os.PathLike,
    rows: Iterable[Sequence[Any]],
    *,
    titles: Iterable[Sequence[str]] | None = None,
    cmaps: Sequence[str] | None = None,
    symmetric_rows: Sequence[bool] | None = None,
) -> epath.Path:
    """A grid of images: ``rows[i][j]`` is a 2-D array (or HxWx3). ``cmaps[i]`` colours row ``i``;
    ``symmetric_rows[i]`` centres its colour scale on zero (for signed attributions)."""
    rows = [list(row) for row in rows]
    titles = [list(t) for t in titles] if titles is not None else None
    n_rows, n_cols = len(rows), max(len(row) for row in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.2 * n_cols, 2.2 * n_rows), squeeze=False)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            ax = axes[i][j]
            kwargs: dict[str, Any] = {"cmap": cmaps[i] if cmaps else "gray"}
            if symmetric_rows and symmetric_rows[i]:
                bound = float(abs(image).max()) or 1.0
                kwargs.update(vmin=-bound, vmax=bound)
            ax.imshow(image, **kwargs)
            ax.set_xticks([])
            ax.set_yticks([])
            if titles is not None:
                ax.set_title(titles[i][j], fontsize=8)
    return _save_figure(fig, path)
