"""XLA compiler options for the training and evaluation steps, per backend.

On CPU, XLA hands dots, convolutions and also reductions to YNNPACK by default (its "library
fusions"). A YNNPACK fusion takes whole arrays as operands, so every broadcast that feeds one
is first written out in full: in TNT's training step, the mean and 1/std of each LayerNorm
over 16- or 24-wide words, broadcast back to all words for the backward pass, and the
products of the broadcast attention core (`ops.cores`). With YNNPACK kept to dots and
convolutions, XLA fuses those reductions with their broadcasts into its own loops, which makes
TNT's training step faster and smaller in memory (`python benchmarks/throughput.py --model=M
--vs-xla-defaults`; figures in docs/performance.md).

The option is passed per compilation (`jax.jit(..., compiler_options=...)`), not through
`XLA_FLAGS`, so it touches only this project's steps, and a jaxlib that does not know it is
detected with a one-off test compile instead of aborting the process (an unknown name in
`XLA_FLAGS` is fatal). If `XLA_FLAGS` sets the option itself, that choice is left alone.
"""

import functools
import os

import jax
import numpy as np

YNN_FUSION_TYPES = "xla_cpu_experimental_ynn_fusion_type"
CPU_OPTIONS = {
    YNN_FUSION_TYPES: (
        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"
    ),
}


@functools.cache
def step_compiler_options() -> dict[str, str]:
    """The options to compile the model's steps with on JAX's default backend.

    Empty off CPU, where `XLA_FLAGS` already names the option, and on a jaxlib that rejects
    it. Cached: the test compile runs once per process.
    """
    if jax.default_backend() != "cpu" or YNN_FUSION_TYPES in os.environ.get("XLA_FLAGS", ""):
        return {}
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_OPTIONS).lower(np.float32(0)).compile()
    except jax.errors.JaxRuntimeError:  # an older or newer jaxlib without YNNPACK fusions
        return {}
    return dict(CPU_OPTIONS)


def step_jit(fn, **jit_kwargs):
    """`jax.jit(fn, **jit_kwargs)` compiled with `step_compiler_options()`, so that a program
    outside the trainer (predict, visualize) gets the model's CPU forms under the options they
    suit. The options are probed at the first call, not at import."""

    @functools.cache
    def compiled():
        return jax.jit(fn, compiler_options=step_compiler_options(), **jit_kwargs)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        return compiled()(*args, **kwargs)

    return call
