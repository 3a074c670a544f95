"""Explanations of a trained model: DeepLIFT heatmaps of test images and per-layer importance.

The heatmap grid shows each image above its DeepLIFT contributions to the predicted logit
against an all-zero reference (summed over channels; red raises the logit, blue lowers it) and
the summation-to-delta error ``sum(C) - (f(x)[t] - f(0)[t])`` of each. The importance figure
shows, per criterion, each layer's share of the summed mean unit importance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from xaijax import data, deeplift, importance, report

HEATMAP_FIGURE = "heatmaps.png"
IMPORTANCE_FIGURE = "layer_importance.png"


def explain_images(
    model: nn.Module, variables: Mapping[str, Any], images: np.ndarray, *, rule: str = "rescale"
) -> dict[str, np.ndarray]:
    """Predictions, DeepLIFT contributions to the predicted logit (zero reference, shaped like
    ``images``) and the per-image summation-to-delta error."""
    images = jnp.asarray(images, jnp.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be NHWC [N, H, W, C], got shape {images.shape}")

    @jax.jit
    def explain(variables, x):
        apply = lambda v: model.apply(variables, v, train=False)
        predictions = jnp.argmax(apply(x), axis=1)
        contributions, errors = deeplift.attribute(
            apply,
            x,
            jnp.zeros(x.shape[1:], x.dtype),
            target=predictions,
            rule=rule,
            return_delta=True,
        )
        return predictions, contributions, errors

    predictions, contributions, errors = jax.device_get(explain(variables, images))
    return {"predictions": predictions, "contributions": contributions, "errors": errors}


def heatmap_grid(
    path: epath.PathLike,
    images: np.ndarray,
    labels: np.ndarray,
    explained: Mapping[str, np.ndarray],
) -> epath.Path:
    """Images (top) over their channel-summed contributions (bottom), with titles."""
    images = np.asarray(images)
    shown = images[..., 0] if images.shape[-1] == 1 else images
    heat = np.asarray(explained["contributions"]).sum(axis=-1)
    titles = [
        [f"label {y}, pred {p}" for y, p in zip(labels, explained["predictions"], strict=True)],
        [f"delta err {e:.1e}" for e in explained["errors"]],
    ]
    columns = len(images)
    return report.image_grid(
        path,
        [[shown[i] for i in range(columns)], [heat[i] for i in range(columns)]],
        titles=titles,
        cmaps=["gray", "bwr"],
        symmetric_rows=[False, True],
    )


def layer_importance(
    model: nn.Module,
    variables: Mapping[str, Any],
    dataset: data.Dataset,
    criteria: Sequence[str],
    *,
    num_examples: int,
) -> dict[str, dict[str, float]]:
    """``criterion -> layer -> share`` of the summed mean unit importance (shares sum to 1)."""
    shares = {}
    for criterion in criteria:
        scores = importance.score(
            criterion,
            model,
            variables,
            dataset,
            granularity="unit",
            num_examples=min(num_examples, dataset.num_examples),
        )
        means = {name: float(np.mean(np.asarray(s))) for name, s in scores.items()}
        total = sum(means.values()) or 1.0
        shares[criterion] = {name: value / total for name, value in means.items()}
    return shares


def run(
    model: nn.Module,
    variables: Mapping[str, Any],
    splits: data.Splits,
    workdir: epath.PathLike,
    *,
    criteria: Sequence[str],
    num_images: int = 8,
    num_examples: int = 1000,
) -> dict[str, Any]:
    """Write both figures into ``workdir``; return their names, the errors and the shares."""
    if num_images < 1:
        raise ValueError(f"num_images must be positive, got {num_images}")
    workdir = epath.Path(workdir)
    images, labels = splits.test.images[:num_images], splits.test.labels[:num_images]
    explained = explain_images(model, variables, images)
    heatmap_grid(workdir / HEATMAP_FIGURE, images, labels, explained)
    shares = layer_importance(model, variables, splits.train, criteria, num_examples=num_examples)
    report.grouped_bar_plot(
        workdir / IMPORTANCE_FIGURE,
        shares,
        ylabel="share of mean unit importance",
        title="Per-layer importance by criterion",
    )
    return {
        "heatmap_figure": HEATMAP_FIGURE,
        "importance_figure": IMPORTANCE_FIGURE,
        "max_delta_error": float(np.max(np.abs(explained["errors"]))),
        "layer_importance": shares,
    }
