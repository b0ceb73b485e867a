"""Where a compiled training or inference step spends its time, per module, forward and backward.

    python benchmarks/profile_step.py --model=tnt_s_patch16_224 --batch=8
    python benchmarks/profile_step.py --model=tnt_s_patch16_224 --batch=8 --inference

Traces `--steps` steps of `throughput.JaxBench` with `jax.profiler`, maps every XLA op in the
trace back to the module that emitted it (the `op_name` metadata of the compiled HLO, e.g.
`transpose(jvp(TNT))/blocks_5/mlp/fc1/dot_general` is the backward of block 5's `mlp/fc1`) and
prints op time per step summed over XLA's threads, per module with the block index dropped,
forward and backward apart, next to the wall time per step. Op time above wall time means the
threads overlapped; the split says which modules to make cheaper. A line gives how long 0, 1,
2, ... threads ran ops per step: time with a core idle is time that less work elsewhere
cannot save. On a GPU it counts the device's own events, so op time is GPU time. `--top-ops N`
adds the N costliest single ops, `--override` profiles an ablation, `--xla-defaults` the step
compiled without the trainer's XLA options, `--trace-dir` keeps the trace for TensorBoard or
Perfetto. On an accelerator, for example:

    python benchmarks/profile_step.py --model=tnt_s_patch16_224 --batch=256 --dtype=bfloat16 \
        --top-ops=40
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time
from typing import NamedTuple

import jax

from throughput import JaxBench, host_description, host_line, parse_override

# Sub-modules reported on their own row; the other ops of their parent (QK^T, softmax, AV,
# GELU, reshapes) are reported under the parent's name alone.
_LEAVES = ("qk", "qkv", "v", "proj", "fc1", "fc2", "mixer")


# The model's own scope in an op_name: `TNT` (inference), `jvp(TNT)` (training forward),
# `transpose(jvp(TNT))` (backward); flax module classes are capitalised, their names are not.
_MODEL_SCOPE = re.compile(r"(transpose\()?(jvp\()?[A-Z]\w*\)*")
_BLOCK = re.compile(r"blocks(_\d+)?")
OUTSIDE = "(outside the model: loss, optimizer)"
# The start of an HLO instruction's line in compiled HLO text; group 1 is its name.
_INSTRUCTION = r"^\s*(?:ROOT )?%(\S+) = "


def op_module(op_name: str) -> tuple[str, str]:
    """An op_name -> (module path without block index, "forward" or "backward")."""
    parts = op_name.split("/")[1:]  # drop jit(step)
    direction = "backward" if any(p.startswith("transpose(") for p in parts) else "forward"
    if not parts or not _MODEL_SCOPE.fullmatch(parts[0]):
        return OUTSIDE, direction
    path = [p for p in parts[1:] if not _BLOCK.fullmatch(p)]
    if len(path) >= 2 and path[1] in _LEAVES:
        return f"{path[0]}/{path[1]}", direction
    return (path[0] if path else "other"), direction


def op_modules(hlo_text: str) -> dict[str, tuple[str, str]]:
    """HLO instruction name -> `op_module` of its op_name, for every instruction that has one."""
    pattern = re.compile(_INSTRUCTION + r".*?op_name=\"([^\"]+)\"", re.M)
    return {name: op_module(op_name) for name, op_name in pattern.findall(hlo_text)}


class OpEvent(NamedTuple):
    """One op's run in a trace: its HLO name, the (pid, tid) it ran on, start and length in us."""

    name: str
    thread: tuple[int, int]
    start: float
    micros: float


def op_times(trace_dir: str) -> list[OpEvent]:
    """Every complete event in the newest trace under `trace_dir`.

    On a GPU the host threads also record the launches of each op, so only the GPU's own
    events count there, named by the HLO op they ran (`hlo_op`) rather than by their kernel.
    """
    path = sorted(glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True))[-1]
    with gzip.open(path) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    gpu_pids = {
        e["pid"]
        for e in events
        if e.get("ph") == "M"
        and e.get("name") == "process_name"
        and "GPU" in e.get("args", {}).get("name", "")
    }
    return [
        OpEvent(e.get("args", {}).get("hlo_op", e["name"]), (e["pid"], e["tid"]), e["ts"], e["dur"])
        for e in events
        if e.get("ph") == "X" and "dur" in e and (not gpu_pids or e["pid"] in gpu_pids)
    ]


def threads_busy_ms(events: list[OpEvent], steps: int) -> dict[int, float]:
    """Milliseconds per step during which 0, 1, 2, ... threads ran `events`' ops.

    Counted from the first op's start to the last one's end, after merging each thread's own
    spans, so an op nested in another (a while loop and its body) counts once. On a 2-core CPU
    this says how much of a step leaves a core idle, where doing less work on the busy core is
    all that can help. A library call that fans out over both threads (a large YNNPACK dot) is
    recorded on its calling thread only, so one thread busy can mean two cores at work there.
    """
    if not events:
        return {}
    per_thread = collections.defaultdict(list)
    for event in events:
        per_thread[event.thread].append((event.start, event.start + event.micros))
    edges = []
    for spans in per_thread.values():
        spans.sort()
        merged = [list(spans[0])]
        for start, end in spans[1:]:
            if start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        edges += [(start, 1) for start, _ in merged] + [(end, -1) for _, end in merged]
    edges.sort()  # at equal times, an end (-1) before a start
    busy, running, last = collections.Counter(), 0, edges[0][0]
    for time_us, change in edges:
        busy[running] += (time_us - last) / steps / 1e3
        running, last = running + change, time_us
    return dict(sorted(busy.items()))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--img-size", type=int, default=None)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument(
        "--steps", type=int, default=3, help="traced steps (after JaxBench's warm-up)"
    )
    parser.add_argument("--inference", action="store_true", help="profile inference, not training")
    parser.add_argument("--top", type=int, default=25, help="rows to print")
    parser.add_argument("--top-ops", type=int, default=0, help="also print the N costliest XLA ops")
    parser.add_argument(
        "--override",
        type=parse_override,
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a field of --model (repeatable)",
    )
    parser.add_argument(
        "--xla-defaults",
        action="store_true",
        help="compile with XLA's default options, not the trainer's (xla_options)",
    )
    parser.add_argument(
        "--trace-dir",
        default=None,
        help="keep the trace here (for TensorBoard or Perfetto); default: discarded",
    )
    args = parser.parse_args(argv)
    # XLA:GPU replays chains of kernels as CUDA graphs, which the trace shows as one event with
    # no op name; without them every op is its own event. No effect on CPU or once JAX started.
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_gpu_enable_command_buffer="

    bench = JaxBench(
        args.model,
        args.img_size,
        args.batch,
        args.dtype,
        args.num_classes,
        xla_defaults=args.xla_defaults,
        **dict(args.override),
    )
    compiled, step = (
        (bench.compiled_infer, bench.infer_step)
        if args.inference
        else (bench.compiled_train, bench.train_step)
    )
    hlo_text = compiled.as_text()  # JaxBench ran one warm-up step of each already
    modules = op_modules(hlo_text)
    with tempfile.TemporaryDirectory() as temporary_dir:
        trace_dir = args.trace_dir or temporary_dir
        start = time.perf_counter()
        with jax.profiler.trace(trace_dir):
            for _ in range(args.steps):
                step()
        wall_ms = (time.perf_counter() - start) / args.steps * 1e3
        events = op_times(trace_dir)

    # The step's own ops, those XLA added without an op_name (copies, ...) included.
    instructions = set(re.findall(_INSTRUCTION, hlo_text, re.M))
    events = [event for event in events if event.name in instructions]
    totals = collections.Counter()
    per_op = collections.Counter()
    for event in events:
        if event.name in modules:
            totals[modules[event.name]] += event.micros / args.steps / 1e3
            per_op[event.name] += event.micros / args.steps / 1e3
    names = sorted(
        {m for m, _ in totals}, key=lambda m: -totals[(m, "forward")] - totals[(m, "backward")]
    )
    rows = [
        {"module": m, "forward_ms": totals[(m, "forward")], "backward_ms": totals[(m, "backward")]}
        for m in names
    ]
    kind = "inference" if args.inference else "training"
    print(
        f"{args.model}, batch {args.batch}, {kind} step on {jax.devices()[0].device_kind}: "
        f"{wall_ms:.0f} ms wall per step (traced), {sum(totals.values()):.0f} ms op time "
        f"summed over threads"
    )
    print(host_line(host_description()))
    busy = threads_busy_ms(events, args.steps)
    print(
        "threads running ops, ms per step: "
        + ", ".join(f"{threads}: {ms:.1f}" for threads, ms in busy.items())
    )
    print("| module | forward ms | backward ms |")
    print("|---|---:|---:|")
    for row in rows[: args.top]:
        print(f"| {row['module']} | {row['forward_ms']:.1f} | {row['backward_ms']:.1f} |")
    if args.top_ops:
        print("| XLA op | module | direction | ms |")
        print("|---|---|---|---:|")
        for name, ms in per_op.most_common(args.top_ops):
            print(f"| {name} | {modules[name][0]} | {modules[name][1]} | {ms:.2f} |")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
