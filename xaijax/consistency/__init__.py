"""Explanation consistency: do two models explain the same test images the same way?

``maps`` computes DeepLIFT input-attribution maps of a test set for the true labels against a
shared reference, streamed in batches and jitted once per model; ``metrics`` compares two
models' maps per example (Spearman rank correlation with average ranks for ties; overlap of the
top ``q`` of pixels by magnitude) and summarizes over the set (mean ± std, per true class);
``figures`` draws heatmaps side by side and agreement against model size.
"""

from xaijax.consistency.figures import agreement_vs_size, side_by_side
from xaijax.consistency.maps import compare_maps, compare_models, pixel_maps
from xaijax.consistency.metrics import (
    DEFAULT_FRACTION,
    agreement,
    average_ranks,
    spearman,
    summarize,
    top_k_count,
    top_k_mask,
    top_k_overlap,
)

__all__ = [
    "DEFAULT_FRACTION",
    "agreement",
    "agreement_vs_size",
    "average_ranks",
    "compare_maps",
    "compare_models",
    "pixel_maps",
    "side_by_side",
    "spearman",
    "summarize",
    "top_k_count",
    "top_k_mask",
    "top_k_overlap",
]
