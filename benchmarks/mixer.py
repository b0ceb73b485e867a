"""The nested-attention head mixer alone: its forms side by side, forward and forward + backward.

    python benchmarks/mixer.py
    python benchmarks/mixer.py --batch=256 --dtype=bfloat16 --case tnt_s_inner:4:16:12845056

Each case is `name:heads:hidden:columns`, columns being batch x queries x keys of one layer's
logits. The defaults are the inner and outer chains of the CPU CIFAR models at batch 64 and of
Nested-TNT-S at 224 px at `--batch` images. Every form of `mixer.MIXER_FORMS` (the blocked one
with the block width `ops.mixer_form` gives on CPU) is jitted in the same process with the
trainer's XLA options (`nested_tnt_jax.xla_options`), checked against the reference formula
evaluated in float64 on the same inputs, and timed alternately (median of `--iters` calls per
round, median over `--rounds`, compilation excluded). The last column names the form
`LogitMixer` takes on this backend.

The error column is each output's (the mixed logits and every gradient) relative error in the
2-norm against float64, ||x - x64|| / ||x64||, the worst output: of the worst form, then of the
reference formula in `--dtype` itself. The two agree when the forms are as accurate as the
formula. (The largest elementwise difference is no measure here: a few gradient values sit at
LeakyReLU's kink, where any float32 evaluation, the formula's included, may take the other
side and differ from float64 by the slope's change.)
"""

from __future__ import annotations

import argparse
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from nested_tnt_jax import xla_options
from nested_tnt_jax import ops
from nested_tnt_jax.ops.mixer import MIXER_FORMS, mix_heads
from throughput import host_description, host_line, median_ms

CPU_CASES = (
    "cifar_patch8_inner:2:8:262144",  # 64 images x 16 sentences x 16 x 16 words
    "cifar_patch8_word4_inner:2:8:16384",  # 64 x 16 x 4 x 4
    "cifar_outer:4:16:18496",  # 64 x 17 x 17
)


def default_cases(batch: int) -> list[str]:
    """The CPU CIFAR models' mixers and Nested-TNT-S's at `batch` images."""
    return [
        *CPU_CASES,
        f"tnt_s_inner:4:16:{batch * 196 * 16 * 16}",
        f"tnt_s_outer:6:24:{batch * 197 * 197}",
    ]


def _layers(heads: int, hidden: int, dtype) -> tuple:
    keys = jax.random.split(jax.random.key(0), 6)
    widths = (heads, hidden, hidden, heads)
    return tuple(
        (
            (jax.random.normal(keys[2 * i], (a, b)) / np.sqrt(a)).astype(dtype),
            (jax.random.normal(keys[2 * i + 1], (b,)) * 0.1).astype(dtype),
        )
        for i, (a, b) in enumerate(zip(widths, widths[1:]))
    )


def _relative_error(got: jax.Array, exact: np.ndarray) -> float:
    """||got - exact|| / ||exact|| in the 2-norm over all values, computed in float64."""
    got, exact = np.asarray(got, np.float64), np.asarray(exact, np.float64)
    return float(np.linalg.norm(got - exact) / max(np.linalg.norm(exact), 1e-300))


def run_case(case: str, dtype: str, iters: int, rounds: int) -> dict:
    name, heads, hidden, columns = case.split(":")
    heads, hidden, columns = int(heads), int(hidden), int(columns)
    dtype = jnp.dtype(dtype)
    layers = _layers(heads, hidden, dtype)
    z = jax.random.normal(jax.random.key(1), (heads, columns), dtype)
    cotangent = jax.random.normal(jax.random.key(2), (heads, columns), dtype)
    block = ops.mixer_form(hidden, "cpu")[1]
    options = xla_options.step_compiler_options()

    def forward(form):
        return jax.jit(
            lambda layers, z, _: mix_heads(layers, z, form, block), compiler_options=options
        )

    def forward_backward(form):
        def fn(layers, z, cotangent):
            out, vjp = jax.vjp(lambda layers, z: mix_heads(layers, z, form, block), layers, z)
            return out, vjp(cotangent)

        return jax.jit(fn, compiler_options=options)

    variants = {
        (form, pass_): make(form)
        for form in MIXER_FORMS
        for pass_, make in (("forward", forward), ("forward_backward", forward_backward))
    }
    args = (layers, z, cotangent)
    outputs = {k: jax.block_until_ready(f(*args)) for k, f in variants.items()}
    # Every form, and the formula in `dtype`, against the formula in float64 (module docstring).
    with jax.enable_x64(True):
        exact = jax.tree.leaves(
            forward_backward("reference")(*jax.tree.map(lambda a: np.asarray(a, np.float64), args))
        )
    errors = {
        form: max(
            _relative_error(got, want)
            for got, want in zip(jax.tree.leaves(outputs[form, "forward_backward"]), exact)
        )
        for form in MIXER_FORMS
    }
    ms = {k: [] for k in variants}
    for _ in range(rounds):
        for k, f in variants.items():
            ms[k].append(median_ms(f, args, iters))
    ms = {f"{form}_{pass_}_ms": statistics.median(v) for (form, pass_), v in ms.items()}
    return dict(
        case=name,
        heads=heads,
        hidden=hidden,
        columns=columns,
        blocked_path=columns >= 2 * block,
        chosen=ops.mixer_form(hidden)[0],
        error_vs_float64=max(errors[f] for f in MIXER_FORMS if f != "reference"),
        reference_error_vs_float64=errors["reference"],
        **ms,
    )


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", action="append", help="name:heads:hidden:columns (repeatable)")
    parser.add_argument("--batch", type=int, default=8, help="images, for the default TNT-S cases")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    cases = args.case or default_cases(args.batch)
    rows = [run_case(c, args.dtype, args.iters, args.rounds) for c in cases]
    print(
        f"device: {jax.devices()[0].device_kind}, {args.dtype}, one mixer, "
        "ms forward / forward + backward"
    )
    print(host_line(host_description()))
    print(
        "| case | heads -> hidden | columns | "
        + " | ".join(MIXER_FORMS)
        + " | error vs float64: forms / formula | chosen here |"
    )
    print("|---|---|---:|" + "---:|" * len(MIXER_FORMS) + "---:|---|")
    for r in rows:
        note = "" if r["blocked_path"] else " (too small to block)"
        times = " | ".join(
            f"{r[f'{form}_forward_ms']:.2f} / {r[f'{form}_forward_backward_ms']:.2f}"
            for form in MIXER_FORMS
        )
        print(
            f"| {r['case']}{note} | {r['heads']} -> {r['hidden']} | {r['columns']:,} | {times} "
            f"| {r['error_vs_float64']:.1e} / {r['reference_error_vs_float64']:.1e} "
            f"| {r['chosen']} |"
        )
    print(
        "error vs float64: ||x - x64|| / ||x64|| of the worst output (values, gradients); "
        f"forms: the worst of {', '.join(f for f in MIXER_FORMS if f != 'reference')}; "
        f"formula: the reference formula in {args.dtype}."
    )
    return rows


if __name__ == "__main__":
    main()
