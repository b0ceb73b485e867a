"""How attention's products are written, and the one place that picks forms per backend.

`head_logits` (QK^T) and `attend` (AV) each come in three forms with the same values: the plain
einsum, which leaves the layouts to XLA; `"heads_first"`, a batched GEMM over contiguous
(h, b, n, d) operands; and `"broadcast"`, elementwise products summed over the head width,
which XLA fuses with their neighbours where one GEMM per tiny (q, d) matrix costs more than its
work. Logits come out heads first, (h, b, q, k), in every form: the layout the nested chain
carries and the head mixer reads.

`core_form` and `mixer_form` choose the forms from the backend (and the head width), so a model
never depends on how its caller compiles it:

- CPU: broadcast products for heads at most `BROADCAST_MAX_DIM` wide (TNT's word attention),
  heads-first GEMMs for heads at least `HEADS_FIRST_MIN_DIM` wide (outer and ViT attention),
  the einsum between; the mixer over cache-sized column blocks (`mixer.blocked`). The broadcast
  form is fast where XLA:CPU fuses its reductions itself, as under
  `xla_options.step_compiler_options()`, which the trainer and the benchmarks compile with.
- GPU and TPU: the einsum by default; `attention_core="by_width"` selects the CPU's rule by
  head width there too (off until the whole step measures faster, see
  `benchmarks/device_check.py`); the mixer as one fused elementwise pass (`mixer.fused`).

Timings behind these choices: docs/performance.md (`benchmarks/attention_core.py`,
`benchmarks/mixer.py`).
"""

import jax
import jax.numpy as jnp

CORE_FORMS = ("einsum", "heads_first", "broadcast")
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
        raise ValueError(f"Unknown attention_core {choice!r}; use one of {', '.join(CORE_CHOICES)} "
                         "('auto' picks per backend and head width).")


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
    cache-blocked on CPU, fused elementwise on accelerators (`mixer.mix_heads`)."""
    backend = backend or jax.default_backend()
    if backend == "cpu":
        return "blocked", CPU_BLOCK_ELEMENTS // hidden
    return "fused", 0


def head_logits(q: jax.Array, k: jax.Array, form: str = "einsum") -> jax.Array:
    """(b, q, h, d) queries and keys -> scaled logits laid out heads first, (h, b, q, k).

    `"broadcast"` multiplies (h, b, q, 1, d) by (h, b, 1, k, d) in float32 and sums over d.
    """
    scale = jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    if form == "einsum":
        return jnp.einsum("bqhd,bkhd->hbqk", q, k) * scale
    q, k = _heads_first(q), _heads_first(k)
    if form == "heads_first":
        return jnp.einsum("hbqd,hbkd->hbqk", q, k) * scale
    _check_form(form)
    products = q[:, :, :, None].astype(jnp.float32) * k[:, :, None].astype(jnp.float32)
    return jnp.sum(products, axis=-1).astype(q.dtype) * scale


def attend(attn: jax.Array, v: jax.Array, form: str = "einsum") -> jax.Array:
    """(h, b, q, k) attention weights and (b, k, h, d) values -> (b, q, h, d).

    `"heads_first"` computes (h, b, q, d) and transposes it back, a cheap step next to the
    product when d is large (left to itself, XLA:CPU computes (b, h, d, q) and transposes after);
    `"broadcast"` sums (b, q, k, h, 1) x (b, 1, k, h, d) over k in float32.
    """
    if form == "einsum":
        return jnp.einsum("hbqk,bkhd->bqhd", attn, v)
    if form == "heads_first":
        return jnp.transpose(jnp.einsum("hbqk,hbkd->hbqd", attn, _heads_first(v)), (1, 2, 0, 3))
    _check_form(form)
    weights = jnp.transpose(attn, (1, 2, 3, 0))[..., None].astype(jnp.float32)
    return jnp.sum(weights * v[:, None].astype(jnp.float32), axis=2).astype(v.dtype)


def _heads_first(x: jax.Array) -> jax.Array:
    return jnp.transpose(x, (2, 0, 1, 3))  # (b, n, h, d) -> (h, b, n, d)


def _check_form(form: str) -> None:
    if form not in CORE_FORMS:
        raise ValueError(f"Unknown attention core form {form!r}; the forms are {CORE_FORMS}.")
