"""Figures of explanation consistency: dense and compressed heatmaps side by side, and agreement
against model size per method (written atomically by ``xaijax.report``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from etils import epath

from xaijax import report
from xaijax.consistency import metrics


def side_by_side(
    path: epath.PathLike,
    images: np.ndarray,
    labels: Sequence[int],
    maps: Mapping[str, np.ndarray],
    *,
    reference: str,
) -> epath.Path:
    """One column per image: the image (top), then one row of heatmaps per model of ``maps``
    (``name -> [n, H, W]``, red raises the true label's logit, blue lowers it); every row but
    ``reference``'s is titled with its Spearman correlation to ``reference``'s map."""
    if reference not in maps:
        raise ValueError(f"reference {reference!r} is not among the maps {tuple(maps)}")
    images = np.asarray(images)
    count = len(images)
    for name, values in maps.items():
        if len(values) < count:
            raise ValueError(f"maps[{name!r}] has {len(values)} maps for {count} images")
    shown = images[..., 0] if images.shape[-1] == 1 else images
    rows: list[list[Any]] = [[shown[i] for i in range(count)]]
    titles = [[f"label {int(y)}" for y in labels[:count]]]
    for name, values in maps.items():
        rows.append([values[i] for i in range(count)])
        if name == reference:
            titles.append([name] * count)
        else:
            rho = metrics.spearman(maps[reference][:count], values[:count])
            titles.append([f"{name} ρ={r:.2f}" for r in rho])
    return report.image_grid(
        path,
        rows,
        titles=titles,
        cmaps=["gray"] + ["bwr"] * len(maps),
        symmetric_rows=[False] + [True] * len(maps),
    )


def agreement_vs_size(
    path: epath.PathLike,
    points: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    measure: str,
    title: str = "",
) -> epath.Path:
    """``measure`` (y) against non-zero parameters (x, log scale), one series per method
    (``method -> (params, values)``, e.g. one point per seed)."""
    return report.line_plot(
        path,
        points,
        xlabel="non-zero parameters",
        ylabel=measure,
        title=title,
        log_x=True,
    )
