"""Compile time of the training step against depth, with blocks unrolled and with `nn.scan`.

    python benchmarks/compile_depth.py --model=tnt_s_patch16_224 --depths 12 24

An unrolled Python loop of blocks gives XLA a program that grows with depth, so compile time
does too; `scan_blocks=True` compiles one block body whatever the depth, so a 24-block model
should compile in about the time of a 12-block one. Each model is built,
lowered and compiled once, in this order, in one process; the ratios are against the
shallowest depth of the same mode.
"""

from __future__ import annotations

import argparse
import sys

from throughput import JaxBench


def main(argv: list[str] | None = None) -> dict[tuple[bool, int], float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tnt_s_patch16_224")
    parser.add_argument("--depths", type=int, nargs="+", default=[12, 24])
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args(argv)

    seconds = {}
    print(f"{args.model}, batch {args.batch}: training-step compile time")
    print(f"| blocks | depth | compile s | vs depth {args.depths[0]} |")
    print("|---|---:|---:|---:|")
    for scan in (False, True):
        for depth in args.depths:
            bench = JaxBench(
                args.model, None, args.batch, "float32", 1000, depth=depth, scan_blocks=scan
            )
            seconds[scan, depth] = bench.train_compile_s
            ratio = seconds[scan, depth] / seconds[scan, args.depths[0]]
            print(
                f"| {'scan' if scan else 'loop'} | {depth} | {bench.train_compile_s:.1f} "
                f"| {ratio:.2f}x |",
                flush=True,
            )
    return seconds


if __name__ == "__main__":
    main(sys.argv[1:])
