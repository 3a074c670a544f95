"""Where a training step's time goes, op by op: xaijax (XLA) against PyTorch, one step each.

    python scripts/profile_train.py [--models lenet5,vgg_small] [--cores 1] [--thunks 20]

Both sides run the step of ``scripts/bench_train_vs_torch.py`` (same architectures, batch 128,
Adam, softmax cross-entropy, BatchNorm in training mode) pinned to ``--cores`` cores (default 1:
the kernels alone, which other load on a shared machine disturbs least).

* xaijax: ``jax.profiler`` traces ``--steps`` jitted ``training.train_step_staged`` calls (after a
  warm-up pass); every
  XLA thunk (a fusion, a convolution, a dot, a copy) is one trace event named after its HLO
  instruction. The compiled HLO's ``op_name`` metadata names the Flax scope (``conv2``,
  ``conv2_bn``, ``fc1``) and whether the op is in the backward pass (``transpose(jvp(...))``). A
  fusion counts under the convolution or dot it contains, else under its root op: a ReLU fused
  into a BatchNorm or a conv bias counts with that layer, a layout copy without metadata with the
  op that consumes it, a convolution with a kernel-shaped output as the weight gradient of the
  layer with that kernel. ``--thunks N`` lists the N slowest thunks and their rows.
* PyTorch: ``torch.profiler`` records the eager step; each module runs under a
  ``record_function`` and each backward node is matched to its module by its sequence number. A
  ReLU counts with the layer before it. ``convolution_backward`` computes the input and weight
  gradients in one call; its time is split between them in the ratio of the two computed alone
  (``output_mask``) at the layer's shapes.

Prints, per model, ms per step on each side and the ratio xaijax / PyTorch (above 1: xaijax is
slower), and the wall time per step of the profiled passes. XLA fuses neighbouring ops, so a row
holds what XLA fused into it (e.g. recomputed BatchNorm normalisation inside the ReLU mask of the
backward pass): compare the rows together with the totals.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time
from typing import Any

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train import bench_arguments, staged_training, timed_train_steps
from bench_train_vs_torch import _import_torch, cpu_count, pin_to_cores, torch_training

from xaijax import data, training

DEFAULT_STEPS = {"lenet5": 40, "vgg_small": 5}
ADAM = "Adam update (+ zero_grad, metrics)"
LOSS = "loss (softmax cross-entropy)"
POOL = "max-pool (fwd + bwd)"
RELU_BWD = "relu bwd"
OTHER = "other"
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (.*?) ([\w-]+)\((.*)$")
_ARRAY_SHAPE = re.compile(r"^\w+\[([\d,]*)\]")


# ----------------------------------------------------------------------------- xaijax side


def _hlo_instructions(text: str) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """Instructions of every computation in an HLO module's text: name -> {shape, opcode,
    op_name, operands, calls}, and computation name -> the op_names in its body."""
    instructions, bodies, current = {}, collections.defaultdict(list), None
    for line in text.splitlines():
        header = re.match(r"^(?:ENTRY )?%(\S+) .*\{\s*$", line)
        if header:
            current = header.group(1)
            continue
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, shape, opcode, rest = match.groups()
        dims = _ARRAY_SHAPE.match(shape)
        dims = dims.group(1) if dims else ""
        op_name = re.search(r'op_name="([^"]*)"', rest)
        calls = re.search(r"calls=%([\w.-]+)", rest)
        instructions[name] = {
            "shape": tuple(int(d) for d in dims.split(",") if d),
            "opcode": opcode,
            "op_name": op_name.group(1) if op_name else "",
            "operands": re.findall(r"%([\w.-]+)", rest.split("), ")[0]),
            "calls": calls.group(1) if calls else None,
        }
        if op_name:
            bodies[current].append(op_name.group(1))
    return instructions, bodies


def _layer_of(op_name: str, layers: list[str]) -> str | None:
    parts = op_name.split("/")
    return next((p for p in parts if p in layers), None)


def _classify_xla(
    ins: dict[str, Any], body: list[str], model: str, kernels: dict, batch: int
) -> str | None:
    """The table row of one HLO instruction (None: unknown here, inherit from a consumer)."""
    shape, layers = ins["shape"], [*kernels, *(f"{n}_bn" for n in kernels)]
    kernel_of = [n for n, k in kernels.items() if sorted(k) == sorted(shape)]
    kernel_shaped = bool(kernel_of) and batch not in shape
    if ins["opcode"] == "convolution" and kernel_shaped:
        return f"{kernel_of[0]} weight-grad"
    heavy = [n for n in body if n.endswith(("/conv_general_dilated", "/dot_general"))]
    op_name = heavy[0] if heavy else ins["op_name"]  # a fusion around a conv or dot is that op
    if not op_name:
        return None
    backward = "transpose(" in op_name
    if f"jvp({model})" not in op_name:
        return LOSS if "jvp(" in op_name else ADAM
    layer = _layer_of(op_name, layers)
    primitive = op_name.rsplit("/", 1)[-1]
    if layer is None:
        if "relu" in op_name or primitive == "select_n":
            inside = [layer for n in body if (layer := _layer_of(n, layers))]
            layer = max(inside, key=layers.index) if inside else None
            if layer is None or (backward and not layer.endswith("_bn") and layer in kernels):
                return RELU_BWD if backward else POOL
        else:
            return POOL
    if layer in kernels:  # a conv layer (dense kernels are 2-D and counted below)
        if len(kernels[layer]) == 2:
            return f"{layer} {'bwd' if backward else 'fwd'}"
        if not backward:
            return f"{layer} fwd"
        is_weight = primitive == "reduce_sum" or kernel_shaped
        return f"{layer} {'weight-grad' if is_weight else 'input-grad'}"
    return f"{layer} {'bwd' if backward else 'fwd'}"


def _rows_by_instruction(text: str, model: str, kernels: dict, batch: int) -> dict[str, str]:
    """HLO instruction name -> table row; instructions without metadata take a consumer's row."""
    instructions, bodies = _hlo_instructions(text)
    rows = {
        name: _classify_xla(ins, bodies.get(ins["calls"], []), model, kernels, batch)
        for name, ins in instructions.items()
    }
    users = collections.defaultdict(list)
    for name, ins in instructions.items():
        for operand in ins["operands"]:
            users[operand].append(name)
    for _ in range(4):  # Copies of copies: follow consumers a few levels.
        for name in rows:
            if rows[name] is None:
                rows[name] = next((rows[u] for u in users[name] if rows[u]), None)
    return {name: row or OTHER for name, row in rows.items()}


def _xaijax_step(name: str, ds: data.Dataset, batch_size: int, steps: int):
    """(run ``steps`` staged train steps, the compiled HLO text, the model's class name, the conv
    and dense kernel shapes by layer)."""
    model, state, images, labels = staged_training(name, ds, batch_size=batch_size, steps=steps)
    lowered = training.train_step_staged.lower(state, images, labels, np.int32(0), None)
    kernels = {
        layer: tuple(p["kernel"].shape) for layer, p in state.params.items() if "kernel" in p
    }
    run = timed_train_steps(state, images, labels)
    return run, lowered.compile().as_text(), type(model).__name__, kernels


def profile_xaijax(name: str, ds: data.Dataset, batch_size: int, steps: int, verbose: int = 0):
    """(ms per step by row, wall ms per step) of the jitted train step, from a profiler trace;
    prints the ``verbose`` slowest XLA thunks."""
    run, hlo, model_name, kernels = _xaijax_step(name, ds, batch_size, steps)
    rows = _rows_by_instruction(hlo, model_name, kernels, batch_size)
    run()
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        wall, _ = run()
        jax.profiler.stop_trace()
        (path,) = glob.glob(f"{trace_dir}/**/perfetto_trace.json.gz", recursive=True)
        with gzip.open(path) as f:
            events = json.load(f)["traceEvents"]
    thunks: dict[str, float] = collections.defaultdict(float)
    for event in events:
        if event.get("ph") == "X" and event["name"] in rows:
            thunks[event["name"]] += event["dur"] / 1e3 / steps
    totals: dict[str, float] = collections.defaultdict(float)
    for thunk, ms in thunks.items():
        totals[rows[thunk]] += ms
    if verbose:
        for thunk, ms in sorted(thunks.items(), key=lambda item: -item[1])[:verbose]:
            print(f"  {ms:7.2f} ms  {thunk:32s} -> {rows[thunk]}")
    return dict(totals), wall * 1e3 / steps


# ----------------------------------------------------------------------------- PyTorch side


def _torch_labels(net: Any, torch: Any) -> list[str]:
    """The row of each module of the ``nn.Sequential``: xaijax's layer names, ReLU with the
    layer before it."""
    nn, labels, convs, denses = torch.nn, [], 0, 0
    for module in net:
        if isinstance(module, nn.Conv2d):
            convs += 1
            labels.append(f"conv{convs}")
        elif isinstance(module, nn.BatchNorm2d):
            labels.append(f"conv{convs}_bn")
        elif isinstance(module, nn.Linear):
            denses += 1
            labels.append(f"fc{denses}")
        elif isinstance(module, nn.ReLU):
            labels.append(labels[-1])
        else:
            labels.append(POOL)
    return labels


def _conv_input_share(torch: Any, conv: Any, x_shape: tuple, needs_input: bool) -> float:
    """The input gradient's share of ``convolution_backward``'s time at these shapes."""
    if not needs_input:
        return 0.0
    x = torch.randn(x_shape)
    out = conv(x).detach()
    args = (out, x, conv.weight.detach(), [conv.out_channels], conv.stride, conv.padding)
    args += (conv.dilation, False, [0, 0], 1)

    def seconds(mask: list[bool]) -> float:
        torch.ops.aten.convolution_backward(*args, mask)
        started = time.perf_counter()
        for _ in range(5):
            torch.ops.aten.convolution_backward(*args, mask)
        return time.perf_counter() - started

    t_input, t_weight = seconds([True, False, False]), seconds([False, True, True])
    return t_input / (t_input + t_weight)


def profile_torch(torch: Any, name: str, ds: data.Dataset, batch_size: int, steps: int):
    """(ms per step by row, wall ms per step) of the eager PyTorch step, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile, record_function

    net, optimizer, images, labels = torch_training(
        torch, name, ds, batch_size=batch_size, steps=steps
    )
    module_rows = _torch_labels(net, torch)
    input_shapes: dict[int, tuple] = {}

    def run() -> float:
        started = time.perf_counter()
        for i in range(steps):
            optimizer.zero_grad(set_to_none=True)
            h = images[i]
            for k, module in enumerate(net):
                input_shapes[k] = tuple(h.shape)
                with record_function(f"module:{k}"):
                    h = module(h)
            loss = torch.nn.functional.cross_entropy(h, labels[i])
            loss.backward()
            optimizer.step()
        return time.perf_counter() - started

    run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wall = run()
    events = prof.events()

    def top(event: Any) -> Any:
        while event.cpu_parent is not None:
            event = event.cpu_parent
        return event

    module_of_seq = {}
    for event in events:
        root = top(event)
        if event.sequence_nr >= 0 and root.name.startswith("module:"):
            module_of_seq[event.sequence_nr] = int(root.name.split(":")[1])
    shares = {
        k: _conv_input_share(torch, m, input_shapes[k], k > 0)
        for k, m in enumerate(net)
        if isinstance(m, torch.nn.Conv2d)
    }
    totals: dict[str, float] = collections.defaultdict(float)
    for event in (e for e in events if e.cpu_parent is None):
        ms = event.cpu_time_total / 1e3 / steps
        if event.name.startswith("module:"):
            k = int(event.name.split(":")[1])
            row = module_rows[k]
            totals[row if row == POOL else f"{row} fwd"] += ms
        elif event.name.startswith("autograd::engine::evaluate_function: "):
            k = module_of_seq.get(event.sequence_nr)
            if k is None:
                totals[ADAM if "AccumulateGrad" in event.name else LOSS] += ms
            elif k in shares:
                totals[f"{module_rows[k]} input-grad"] += ms * shares[k]
                totals[f"{module_rows[k]} weight-grad"] += ms * (1 - shares[k])
            elif module_rows[k] == POOL:
                totals[POOL] += ms
            elif isinstance(net[k], torch.nn.ReLU) and isinstance(net[k - 1], torch.nn.Conv2d):
                totals[RELU_BWD] += ms
            else:
                totals[f"{module_rows[k]} bwd"] += ms
        elif event.name.startswith("Optimizer."):
            totals[ADAM] += ms
        elif "loss" in event.name or event.name == "aten::ones_like":
            totals[LOSS] += ms
        else:
            totals[OTHER] += ms
    return dict(totals), wall * 1e3 / steps


# ----------------------------------------------------------------------------- the table


def _row_order(row: str) -> tuple:
    match = re.match(r"(conv|fc)(\d+)(_bn)? (.*)", row)
    if not match:
        fixed = [RELU_BWD, POOL, LOSS, ADAM, OTHER]
        return (2, fixed.index(row) if row in fixed else 9, row)
    kind, k, bn, what = match.groups()
    stage = ["fwd", "input-grad", "weight-grad", "bwd"].index(what)
    return (0 if kind == "conv" else 1, int(k), bool(bn), stage)


def print_table(name: str, xla: dict, pytorch: dict, walls: tuple[float, float]) -> list[dict]:
    """Print the per-op table of one model; return its rows."""
    print(f"\n{name}: ms per training step, xaijax (XLA) vs PyTorch")
    print("| op | xaijax ms | PyTorch ms | ratio |\n|---|---|---|---|")
    table = []
    for row in sorted(set(xla) | set(pytorch), key=_row_order):
        x, t = xla.get(row, 0.0), pytorch.get(row, 0.0)
        if max(x, t) < 0.005:
            continue
        ratio = f"{x / t:.2f}" if t > 0.005 else "-"
        print(f"| {row} | {x:.2f} | {t:.2f} | {ratio} |")
        table.append({"op": row, "xaijax_ms": x, "pytorch_ms": t})
    kinds: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for row in set(xla) | set(pytorch):
        kind = re.sub(r"^conv\d+_bn ", "BatchNorm + relu ", row)
        kind = re.sub(r"^conv\d+ ", "all convs ", re.sub(r"^fc\d+ ", "all dense ", kind))
        kinds[kind][0] += xla.get(row, 0.0)
        kinds[kind][1] += pytorch.get(row, 0.0)
    for kind, (x, t) in sorted(kinds.items()):
        if kind.startswith(("all ", "BatchNorm")) and t > 0.005:
            print(f"| *{kind}* | {x:.2f} | {t:.2f} | {x / t:.2f} |")
    x_sum, t_sum = sum(xla.values()), sum(pytorch.values())
    print(f"| **sum of ops** | {x_sum:.2f} | {t_sum:.2f} | {x_sum / t_sum:.2f} |")
    print(f"| **wall per step** | {walls[0]:.2f} | {walls[1]:.2f} | {walls[0] / walls[1]:.2f} |")
    return table


def main() -> None:
    parser = bench_arguments(__doc__, steps_help="profiled steps (0: per model)")
    parser.add_argument("--cores", type=int, default=1, help="pin to this many cores (0: all)")
    parser.add_argument("--thunks", type=int, default=0, help="list the N slowest XLA thunks")
    parser.add_argument("--json", default=None, help="also write the tables to this file")
    args = parser.parse_args()
    if args.cores:
        pin_to_cores(args.cores)
    torch = _import_torch()
    torch.set_num_threads(cpu_count())
    ds = data.load_dataset("fashion_mnist", "train", args.data_dir)
    print(
        f"jax {jax.__version__} (XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}), torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), batch {args.batch_size}, "
        f"Adam; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    out: dict[str, list[dict]] = {}
    for name in args.models.split(","):
        steps = args.steps or DEFAULT_STEPS.get(name, 5)
        xla, x_wall = profile_xaijax(name, ds, args.batch_size, steps, args.thunks)
        pytorch, t_wall = profile_torch(torch, name, ds, args.batch_size, steps)
        out[name] = print_table(name, xla, pytorch, (x_wall, t_wall))
    print(f"\nload average {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
