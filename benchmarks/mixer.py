"""The nested-attention head mixer alone: unblocked against cache-blocked, forward + backward.

    python benchmarks/mixer.py
    python benchmarks/mixer.py --case tnt_s_inner:4:16:401408 --iters 20

Each case is `name:heads:hidden:columns`, columns being batch x queries x keys of one layer's
logits. The defaults are the inner and outer chains of the CPU CIFAR models at batch 64 and of
Nested-TNT-S at 224 px, batch 8. Both variants are jitted in the same process with the
trainer's XLA options (`nested_tnt_jax.xla_options`), timed alternately (median of `--iters`
calls, compilation excluded), and checked to agree; the blocked one uses the block width
`LogitMixer` picks on CPU.
"""

from __future__ import annotations

import argparse
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from nested_tnt_jax import xla_options
from nested_tnt_jax.models.attention import CPU_BLOCK_ELEMENTS, mix_heads
from throughput import host_description, host_line, median_ms

DEFAULT_CASES = (
    "cifar_patch8_inner:2:8:262144",       # 64 images x 16 sentences x 16 x 16 words
    "cifar_patch8_word4_inner:2:8:16384",  # 64 x 16 x 4 x 4
    "cifar_outer:4:16:18496",              # 64 x 17 x 17
    "tnt_s_inner:4:16:401408",             # 8 x 196 x 16 x 16
    "tnt_s_outer:6:24:310472",             # 8 x 197 x 197
)


def _layers(heads: int, hidden: int) -> tuple:
    keys = jax.random.split(jax.random.key(0), 6)
    widths = (heads, hidden, hidden, heads)
    return tuple((jax.random.normal(keys[2 * i], (a, b)) / np.sqrt(a),
                  jax.random.normal(keys[2 * i + 1], (b,)) * 0.1)
                 for i, (a, b) in enumerate(zip(widths, widths[1:])))


def run_case(case: str, iters: int, rounds: int) -> dict:
    name, heads, hidden, columns = case.split(":")
    heads, hidden, columns = int(heads), int(hidden), int(columns)
    layers = _layers(heads, hidden)
    z = jax.random.normal(jax.random.key(1), (heads, columns))
    cotangent = jax.random.normal(jax.random.key(2), (heads, columns))
    block = CPU_BLOCK_ELEMENTS // hidden

    def forward_backward(block):
        def fn(layers, z, cotangent):
            out, vjp = jax.vjp(lambda layers, z: mix_heads(layers, z, block), layers, z)
            return out, vjp(cotangent)
        return jax.jit(fn, compiler_options=xla_options.step_compiler_options())

    variants = {"unblocked": forward_backward(0), "blocked": forward_backward(block)}
    outputs = {k: jax.block_until_ready(f(layers, z, cotangent)) for k, f in variants.items()}
    for got, want in zip(jax.tree.leaves(outputs["blocked"]), jax.tree.leaves(outputs["unblocked"])):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * float(jnp.abs(want).max()))
    ms = {k: [] for k in variants}
    for _ in range(rounds):
        for k, f in variants.items():
            ms[k].append(median_ms(f, (layers, z, cotangent), iters))
    ms = {k: statistics.median(v) for k, v in ms.items()}
    return dict(case=name, heads=heads, hidden=hidden, columns=columns,
                blocked_path=columns >= 2 * block, **ms)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", action="append", help="name:heads:hidden:columns (repeatable)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    rows = [run_case(c, args.iters, args.rounds) for c in (args.case or DEFAULT_CASES)]
    print(f"device: {jax.devices()[0].device_kind}, float32, forward + backward of one mixer")
    print(host_line(host_description()))
    print("| case | heads -> hidden | columns | unblocked ms | blocked ms | speed-up |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        note = "" if r["blocked_path"] else " (too small: runs unblocked)"
        print(f"| {r['case']}{note} | {r['heads']} -> {r['hidden']} | {r['columns']:,} | "
              f"{r['unblocked']:.2f} | {r['blocked']:.2f} | {r['unblocked'] / r['blocked']:.2f}x |")
    return rows


if __name__ == "__main__":
    main()
