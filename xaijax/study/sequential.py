"""Joint pruning + bit allocation against the sequential pipeline at (about) equal bytes.

The study's sequential pipeline prunes (DeepLIFT, with fine-tuning), then allocates bits on the
pruned model (``quantize`` rows: a strategy at an average-bit budget, with its size in bytes).
The joint stage (``joint`` rows: a strategy at a byte budget) starts from the dense model. For
every joint budget, :func:`comparisons` takes the quantize budget at which the sequential
DeepLIFT pipeline's mean size is the closest to it (within 5%), and pairs each joint strategy
with that pipeline per seed on the final accuracy: ``d_s = acc(joint, s) - acc(sequential, s)``.
The two pipelines differ in their fine-tuning (the sequential one also fine-tunes after
pruning), so the comparison is between pipelines, not between criteria.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from xaijax import report
from xaijax.study.summary import by_method, cells_of, compare, interval_name
from xaijax.study.tables import interval_cell, signed, verdict_words

#: The sequential pipeline compared with: DeepLIFT pruning, then DeepLIFT-sensitivity bits.
SEQUENTIAL_METHOD = "deeplift_sensitivity"
#: How far (relative) the sequential pipeline's mean size may be from the joint byte budget.
SIZE_TOLERANCE = 0.05


def _mean_size(seeds: Mapping[int, Mapping[str, Any]]) -> float:
    return float(np.mean([r["size_bytes"] for r in seeds.values()]))


def comparisons(
    rows: Sequence[Mapping[str, Any]],
    *,
    sequential_method: str = SEQUENTIAL_METHOD,
    metric: str = "accuracy",
    interval_method: str = "t",
    confidence: float = 0.95,
) -> list[dict[str, Any]]:
    """Each joint strategy against ``sequential_method`` at the quantize budget whose mean size
    is the closest to the joint byte budget, within :data:`SIZE_TOLERANCE` (module docstring);
    an entry also records both budgets and mean sizes."""
    cells = cells_of(rows)
    sequential = [
        (c[0]["setting"]["budget"], by_method(c)[sequential_method])
        for c in cells
        if c[0]["stage"] == "quantize" and sequential_method in by_method(c)
    ]
    found = []
    for cell in (c for c in cells if c[0]["stage"] == "joint"):
        budget = cell[0]["setting"]["budget"]
        near = [(b, s) for b, s in sequential if abs(_mean_size(s) / budget - 1) <= SIZE_TOLERANCE]
        if not near:
            continue
        bits, theirs = min(near, key=lambda pair: abs(_mean_size(pair[1]) - budget))
        for method, ours in by_method(cell).items():
            joined = {f"joint {method}": ours, f"sequential {sequential_method}": theirs}
            entry = compare(
                *joined, metric, joined, interval_method=interval_method, confidence=confidence
            )
            found.append(
                {
                    **entry,
                    "joint_budget": budget,
                    "sequential_budget": bits,
                    "joint_bytes": _mean_size(ours),
                    "sequential_bytes": _mean_size(theirs),
                }
            )
    return found


def _sequential_label(entry: Mapping[str, Any]) -> str:
    return f"{entry['sequential_budget']:g} bits, {entry['sequential_bytes']:,.0f} B"


def table(rows: Sequence[Mapping[str, Any]], **kwargs: Any) -> str:
    """Markdown of :func:`comparisons` ("" when the rows hold no joint or no quantize cells)."""
    entries = comparisons(rows, **kwargs)
    if not entries:
        return ""
    confidence = kwargs.get("confidence", 0.95)
    level = f"{100 * confidence:g}% {interval_name(kwargs.get('interval_method', 't'))}"
    lines = [
        "## Joint against sequential (prune, then allocate bits) at about equal bytes",
        "",
        "Each joint strategy against the study's sequential DeepLIFT pipeline (DeepLIFT pruning, "
        "then DeepLIFT-sensitivity bits) at the bit budget whose mean size is the closest to the "
        "joint byte budget (within 5%); paired "
        f"per seed on the final (QAT) accuracy, {level} interval. The pipelines differ in their "
        "fine-tuning (`xaijax.study.sequential`).",
        "",
        report.markdown_table(
            [
                {
                    "joint budget (bytes)": f"{e['joint_budget']:,.0f}",
                    "joint bytes": f"{e['joint_bytes']:,.0f}",
                    "sequential": _sequential_label(e),
                    "method": e["method"],
                    "against": e["against"],
                    "n": e["n"],
                    "mean difference": signed(e["mean"]),
                    f"{level} interval": interval_cell(e),
                    "verdict": verdict_words(e),
                }
                for e in entries
            ]
        ),
    ]
    return "\n".join(lines)
