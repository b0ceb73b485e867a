"""The attention core alone (QK^T, softmax, AV): our formulation against the alternatives.

    python benchmarks/attention_core.py
    python benchmarks/attention_core.py --case tnt_s_inner:50176:16:4:6 --dtype=bfloat16

Each case is `name:sequences:length:heads:head_dim`; the defaults are TNT-S's inner attention
(batch x 196 sentences of 16 words, 4 heads of 6) and outer attention (197 tokens, 6 heads of
64) at `--batch` images. Variants, each jitted with the trainer's XLA options
(`nested_tnt_jax.xla_options`), checked against the first and timed forward and forward +
backward (median of `--iters` calls, compilation excluded):

- `ours einsum`, `ours heads_first`, `ours broadcast`: `cores.head_logits` and `cores.attend`
  in each of their forms, logits heads first (h, b, q, k), the layout the nested chain carries
  and the mixer reads; the last column marks the form `Attention` takes on this backend for
  this head width under `--choice` (`ops.core_form`; "auto" by default, "by_width" for the
  per-width rule off CPU);
- `batch-heads first`: the same products with (b, h, q, d) operands, the usual layout;
- `dot_product_attention xla` / `cudnn`: `jax.nn.dot_product_attention`; cuDNN's fused kernel
  is tried only on GPU, and takes only some shapes (a refusal is printed, not raised).
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp

from nested_tnt_jax import xla_options
from nested_tnt_jax.ops import CORE_FORMS, core_form
from nested_tnt_jax.ops.cores import attend, head_logits
from throughput import host_description, host_line, median_ms


def _softmax(logits: jax.Array, dtype) -> jax.Array:
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(dtype)


def ours(q, k, v, form="einsum"):
    return attend(_softmax(head_logits(q, k, form), q.dtype), v, form)


def batch_heads_first(q, k, v):
    q, k, v = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k) * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    return jnp.swapaxes(jnp.einsum("bhqk,bhkd->bhqd", _softmax(logits, q.dtype), v), 1, 2)


VARIANTS = {
    **{f"ours {form}": functools.partial(ours, form=form) for form in CORE_FORMS},
    "batch-heads first": batch_heads_first,
    "dot_product_attention xla": lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, implementation="xla"
    ),
    "dot_product_attention cudnn": lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, implementation="cudnn"
    ),
}


def run_case(case: str, dtype: str, iters: int, choice: str = "auto") -> list[dict]:
    name, *dims = case.split(":")
    shape = tuple(int(x) for x in dims)  # (sequences, length, heads, head_dim)
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v, cotangent = (jax.random.normal(key, shape, jnp.dtype(dtype)) for key in keys)
    options = xla_options.step_compiler_options()
    reference = jax.jit(ours, compiler_options=options)(q, k, v).astype(jnp.float32)
    model_variant = f"ours {core_form(choice, shape[-1])}"
    rows = []
    for variant, core in VARIANTS.items():
        if variant.endswith("cudnn") and jax.default_backend() != "gpu":
            continue
        forward = jax.jit(core, compiler_options=options)
        backward = jax.jit(
            jax.grad(
                lambda q, k, v, core=core: jnp.sum(core(q, k, v).astype(jnp.float32) * cotangent),
                argnums=(0, 1, 2),
            ),
            compiler_options=options,
        )
        row = dict(case=name, shape=shape, variant=variant, in_model=variant == model_variant)
        try:  # compiles both, and warms them up
            out = forward(q, k, v).astype(jnp.float32)
            jax.block_until_ready(backward(q, k, v))
        except (NotImplementedError, ValueError) as e:  # cuDNN, for shapes it does not take
            rows.append(dict(row, refused=str(e).split("\n")[0][:100]))
            continue
        rows.append(
            dict(
                row,
                max_diff=float(jnp.max(jnp.abs(out - reference))),
                forward_ms=median_ms(forward, (q, k, v), iters),
                forward_backward_ms=median_ms(backward, (q, k, v), iters),
            )
        )
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8, help="images, for the default TNT-S cases")
    parser.add_argument(
        "--case", action="append", help="name:sequences:length:heads:head_dim (repeatable)"
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument(
        "--choice",
        default="auto",
        choices=["auto", "by_width"],
        help="the attention_core whose forms the last column marks",
    )
    args = parser.parse_args(argv)
    cases = args.case or [
        f"tnt_s_inner:{args.batch * 196}:16:4:6",
        f"tnt_s_outer:{args.batch}:197:6:64",
    ]
    rows = [row for case in cases for row in run_case(case, args.dtype, args.iters, args.choice)]
    print(f"device: {jax.devices()[0].device_kind}, {args.dtype}, attention core only")
    print(host_line(host_description()))
    print(
        "| case (sequences, length, heads, head dim) | variant | forward ms | forward+backward ms "
        "| max diff to ours einsum | the model's |"
    )
    print("|---|---|---:|---:|---:|---|")
    for r in rows:
        case = f"{r['case']} {r['shape']}"
        if "refused" in r:
            print(f"| {case} | {r['variant']} | refused: {r['refused']} | | | |")
        else:
            print(
                f"| {case} | {r['variant']} | {r['forward_ms']:.2f} "
                f"| {r['forward_backward_ms']:.2f} "
                f"| {r['max_diff']:.3g} | {'yes' if r['in_model'] else ''} |"
            )
    return rows


if __name__ == "__main__":
    main()
