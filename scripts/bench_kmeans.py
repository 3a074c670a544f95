"""Benchmark: xaijax's sorted 1-D k-means against scikit-learn's KMeans, side by side.

Both start from the same linear codebook and run at most the same number of Lloyd iterations
(each stops early only when no assignment changes). Prints wall-clock times (median of repeats;
our compile time is excluded and printed separately) and the ratio sklearn / ours, plus each
side's iteration count and objective. Our objective is also checked against a textbook Lloyd in
float64 numpy from the same init. The objectives of ours and sklearn differ where clusters run
empty: ours keeps an empty cluster's centroid, sklearn moves it to a far-away point.

    python scripts/bench_kmeans.py [--sizes 100000 1000000] [--bits 4 8] [--iters 30]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import jax
import numpy as np
from sklearn.cluster import KMeans

from xaijax.weight_sharing import initial_codebook, kmeans_1d


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def lloyd_float64(values: np.ndarray, codebook: np.ndarray, iters: int) -> float:
    """Objective of plain Lloyd in float64 after ``iters`` iterations (empty clusters kept)."""
    x = values.astype(np.float64)
    c = codebook.astype(np.float64)
    for _ in range(iters):
        assign = np.searchsorted(0.5 * (c[:-1] + c[1:]), x, side="left")
        count = np.bincount(assign, minlength=c.size)
        total = np.bincount(assign, weights=x, minlength=c.size)
        c = np.where(count > 0, total / np.maximum(count, 1), c)
    assign = np.searchsorted(0.5 * (c[:-1] + c[1:]), x, side="left")
    return float(np.sum((x - c[assign]) ** 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sklearn-repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; float32 N(0, 1) values")
    header = (
        f"{'n':>9} {'k':>4} {'ours ms':>9} {'compile s':>9} {'sklearn ms':>11} {'ratio':>7} "
        f"{'iters':>7} {'empty':>5} {'objective ours / sklearn':>26} {'vs float64 Lloyd':>16}"
    )
    print(header)
    rng = np.random.default_rng(args.seed)
    for n in args.sizes:
        values = rng.standard_normal(n).astype(np.float32)
        for bits in args.bits:
            k = 2**bits
            init = np.asarray(initial_codebook(values, bits, init="linear"))

            def ours(values: np.ndarray = values, bits: int = bits, init: np.ndarray = init):
                return jax.block_until_ready(
                    kmeans_1d(values, bits, init=init, max_iters=args.iters)
                )

            start = time.perf_counter()
            result = ours()
            compile_seconds = time.perf_counter() - start
            ours_seconds = median_seconds(ours, args.repeats)

            sklearn = KMeans(n_clusters=k, init=init[:, None], n_init=1, max_iter=args.iters, tol=0)
            column = values[:, None]
            sklearn_seconds = median_seconds(
                lambda s=sklearn, c=column: s.fit(c), args.sklearn_repeats
            )

            iters = f"{int(result.num_iters)}/{sklearn.n_iter_}"
            empty = k - np.unique(np.asarray(result.indices)).size
            objectives = f"{float(result.objective):.6g} / {sklearn.inertia_:.6g}"
            reference = lloyd_float64(values, init, int(result.num_iters))
            deviation = abs(float(result.objective) - reference) / reference
            print(
                f"{n:>9} {k:>4} {ours_seconds * 1e3:>9.1f} {compile_seconds:>9.2f} "
                f"{sklearn_seconds * 1e3:>11.1f} {sklearn_seconds / ours_seconds:>6.1f}x "
                f"{iters:>7} {empty:>5} {objectives:>26} {deviation:>16.1e}"
            )


if __name__ == "__main__":
    main()
