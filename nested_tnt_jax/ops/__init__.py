"""Speed forms of attention with the reference formula's values, and the one place that picks
them per backend.

`ops.cores` writes QK^T and AV three ways (einsum, heads-first GEMMs, broadcast products);
`ops.mixer` writes the head mixer three ways (reference, cache-blocked, fused). The model math
(`models.attention`) calls them through the choice made here; every choice computes the same
values. `core_form` and `mixer_form` choose the forms from the backend (and the head width), so
a model never depends on how its caller compiles it:

- CPU: broadcast products for heads at most `BROADCAST_MAX_DIM` wide (TNT's word attention),
  heads-first GEMMs for heads at least `HEADS_FIRST_MIN_DIM` wide (outer and ViT attention),
  the einsum between; the mixer over cache-sized column blocks (`ops.mixer.blocked`). The
  broadcast form is fast where XLA:CPU fuses its reductions itself, as under
  `xla_options.step_compiler_options()`, which the trainer and the benchmarks compile with.
- GPU and TPU: the einsum by default; `attention_core="by_width"` selects the CPU's rule by
  head width there too (off until the whole step measures faster, see
  `benchmarks/device_check.py`); the mixer as one fused elementwise pass (`ops.mixer.fused`).

Timings behind these choices: docs/performance.md (`benchmarks/attention_core.py`,
`benchmarks/mixer.py`).
"""

import jax

from nested_tnt_jax.ops.cores import CORE_FORMS

__all__ = [
    "BROADCAST_MAX_DIM",
    "CORE_CHOICES",
    "CORE_FORMS",
    "CPU_BLOCK_ELEMENTS",
    "HEADS_FIRST_MIN_DIM",
    "check_core_choice",
    "core_form",
    "mixer_form",
]

# A model's `attention_core`: "auto" (the backend's forms, per head width on CPU), "by_width"
# (the per-width rule on every backend), or one of CORE_FORMS for every attention layer.
CORE_CHOICES = ("auto", "by_width", *CORE_FORMS)
BROADCAST_MAX_DIM = 16
HEADS_FIRST_MIN_DIM = 32
# On CPU the mixer runs over column blocks of this many hidden activations (1 MiB of float32
# per (hidden, block) array), so each block's whole MLP, forward and backward, stays in cache.
CPU_BLOCK_ELEMENTS = 2**18


def check_core_choice(choice: str) -> None:
    """Raises ValueError, listing `CORE_CHOICES`, for anything else."""
    if choice not in CORE_CHOICES:
        raise ValueError(
            f"Unknown attention_core {choice!r}; use one of {', '.join(CORE_CHOICES)} "
            "('auto' picks per backend and head width)."
        )


def core_form(choice: str, head_dim: int, backend: str | None = None) -> str:
    """The form of `head_logits` and `attend` for an `attention_core` choice and head width on
    `backend` (default: JAX's default backend)."""
    if choice in CORE_FORMS:
        return choice
    check_core_choice(choice)
    backend = backend or jax.default_backend()
    if choice == "auto" and backend != "cpu":
        return "einsum"
    if head_dim >= HEADS_FIRST_MIN_DIM:
        return "heads_first"
    if head_dim <= BROADCAST_MAX_DIM:
        return "broadcast"
    return "einsum"


def mixer_form(hidden: int, backend: str | None = None) -> tuple[str, int]:
    """(form, block width) of the head mixer with `hidden` hidden units on `backend`:
    cache-blocked on CPU, fused elementwise on accelerators (`ops.mixer.mix_heads`)."""
    backend = backend or jax.default_backend()
    if backend == "cpu":
        return "blocked", CPU_BLOCK_ELEMENTS // hidden
    return "fused", 0
