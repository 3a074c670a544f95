"""Training throughput of xaijax against an equivalent PyTorch loop, alternated in one run.

    python scripts/bench_train_vs_torch.py [--models lenet5,vgg_small] [--rounds 7]

Both sides train the same architecture (``xaijax.models`` LeNet-5 and ``vgg_small``, BatchNorm
included, in training mode) on the same Fashion-MNIST batches already in memory: batch 128, Adam
(lr 1e-3), softmax cross-entropy. The xaijax side is the loop of ``xaijax.training.fit``
(``scripts/bench_train.py``); the PyTorch side is the plain eager loop a PyTorch user writes
(NCHW tensors, ``zero_grad``, ``backward``, ``step``). PyTorch gets as many intra-op threads as
the cores JAX's CPU backend uses. After a warm-up pass of each, every round times one pass of
each side, the order alternating between rounds, so a busy minute on a shared machine slows both.
Prints per-round images/s and the median of the per-round ratios xaijax / PyTorch.

Other processes on the cores distort the multi-threaded comparison badly (PyTorch's OpenMP
threads wait for each other at every op; with a load average of 5 on 2 cores its LeNet-5 loop ran
30x slower than on the idle machine, XLA's 3x). Compare on an idle machine, or with ``--cores 1``
(both sides on one core, one PyTorch thread), which load disturbs far less.

PyTorch is needed only here: ``pip install -e '.[bench]'`` (or ``pip install torch==2.13.0``).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train import DEFAULT_STEPS, bench_arguments, first_batches, staged_train_pass

from xaijax import data

TorchPass = Callable[[], tuple[float, float]]


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        sys.exit(
            "bench_train_vs_torch.py needs PyTorch, an optional benchmark-only dependency: "
            "pip install -e '.[bench]'  (or: pip install torch==2.13.0)"
        )
    return torch


def cpu_count() -> int:
    """The cores this process may run on: what JAX's CPU thread pool is sized to."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def pin_to_cores(count: int) -> None:
    """Run this process (JAX's and PyTorch's threads) on the first ``count`` allowed cores."""
    allowed = sorted(os.sched_getaffinity(0))
    if not 1 <= count <= len(allowed):
        sys.exit(f"--cores must be between 1 and {len(allowed)}, got {count}")
    os.sched_setaffinity(0, allowed[:count])


def torch_lenet5(torch: Any) -> Any:
    """``xaijax.models.LeNet5``: conv 5x5 SAME, relu, pool, conv 5x5 VALID, relu, pool, 3 Dense."""
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )  # fmt: skip


def torch_vgg_small(torch: Any) -> Any:
    """``xaijax.models.VGG`` with ``VGG_SMALL``: (3x3 conv, BatchNorm, relu) x2, pool, twice;
    Dense 256, relu, Dense 10. BatchNorm momentum 0.1 in PyTorch's convention is Flax's 0.9."""
    nn = torch.nn

    def block(cin: int, cout: int) -> list[Any]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout, momentum=0.1), nn.ReLU()]

    return nn.Sequential(
        *block(1, 32), *block(32, 32), nn.MaxPool2d(2),
        *block(32, 64), *block(64, 64), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(7 * 7 * 64, 256), nn.ReLU(), nn.Linear(256, 10),
    )  # fmt: skip


TORCH_MODELS = {"lenet5": torch_lenet5, "vgg_small": torch_vgg_small}


def torch_training(torch: Any, name: str, ds: data.Dataset, *, batch_size: int, steps: int):
    """(model in training mode, its Adam optimizer, NCHW images and int64 labels of the batches
    xaijax trains on), seeded."""
    torch.manual_seed(0)
    model = TORCH_MODELS[name](torch).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, labels = first_batches(ds, batch_size, steps)
    images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 1, 4, 2, 3)))
    return model, optimizer, images, torch.from_numpy(labels.astype(np.int64))


def torch_train_pass(
    torch: Any, name: str, ds: data.Dataset, *, batch_size: int, steps: int
) -> TorchPass:
    """A callable running ``steps`` PyTorch Adam steps on the batches xaijax uses; each call
    returns (seconds, final loss)."""
    model, optimizer, images, labels = torch_training(
        torch, name, ds, batch_size=batch_size, steps=steps
    )
    loss_fn = torch.nn.functional.cross_entropy

    def run() -> tuple[float, float]:
        started = time.perf_counter()
        for i in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(images[i]), labels[i])
            loss.backward()
            optimizer.step()
        return time.perf_counter() - started, loss.item()

    return run


def alternate(
    passes: dict[str, Callable[[], tuple[float, float]]], rounds: int, images: int, label: str
) -> dict[str, list[float]]:
    """Warm every pass up, then time one call of each per round, reversing the order each round."""
    for run in passes.values():
        run()
    rates: dict[str, list[float]] = {side: [] for side in passes}
    order = list(passes)
    for r in range(rounds):
        for side in order if r % 2 == 0 else order[::-1]:
            seconds, _ = passes[side]()
            rates[side].append(images / seconds)
        cells = ", ".join(f"{side} {rates[side][-1]:8.0f}" for side in passes)
        ratio = rates["xaijax"][-1] / rates["pytorch"][-1]
        print(f"{label:10s} round {r + 1}: images/s {cells}; ratio {ratio:.2f}", flush=True)
    return rates


def main() -> None:
    parser = bench_arguments(__doc__, steps_help="steps per timed pass (0: default)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--cores",
        type=int,
        default=0,
        help="pin both sides to this many cores (0: all); --cores 1 compares the kernels alone, "
        "which other load on a shared machine disturbs far less than multi-threaded runs",
    )
    args = parser.parse_args()
    if args.cores:
        pin_to_cores(args.cores)
    torch = _import_torch()
    threads = cpu_count()
    torch.set_num_threads(threads)
    ds = data.load_dataset("fashion_mnist", "train", args.data_dir)
    print(
        f"jax {jax.__version__} ({jax.devices()[0].platform}, XLA_FLAGS="
        f"{os.environ.get('XLA_FLAGS', '')!r}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {threads} cores, batch {args.batch_size}, Adam; "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    summary = []
    for name in args.models.split(","):
        steps = args.steps or DEFAULT_STEPS.get(name, 50)
        kwargs = {"batch_size": args.batch_size, "steps": steps}
        passes = {
            "xaijax": staged_train_pass(name, ds, **kwargs),
            "pytorch": torch_train_pass(torch, name, ds, **kwargs),
        }
        rates = alternate(passes, args.rounds, steps * args.batch_size, name)
        ratios = [x / t for x, t in zip(rates["xaijax"], rates["pytorch"], strict=True)]
        row = {
            "model": name,
            "xaijax_images_per_sec_median": statistics.median(rates["xaijax"]),
            "pytorch_images_per_sec_median": statistics.median(rates["pytorch"]),
            "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "rounds": args.rounds,
            "steps_per_pass": steps,
        }
        summary.append(row)
        print(
            f"{name:10s} median: xaijax {row['xaijax_images_per_sec_median']:.0f} images/s, "
            f"PyTorch {row['pytorch_images_per_sec_median']:.0f}; ratio xaijax/PyTorch "
            f"{row['ratio_median']:.2f} (rounds {row['ratio_min']:.2f}-{row['ratio_max']:.2f}); "
            f"load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
