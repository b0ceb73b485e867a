"""How attention's products are written: the same values in three forms.

`head_logits` (QK^T) and `attend` (AV) each come in three forms with the same values: the plain
einsum, which leaves the layouts to XLA; `"heads_first"`, a batched GEMM over contiguous
(h, b, n, d) operands; and `"broadcast"`, elementwise products summed over the head width,
which XLA fuses with their neighbours where one GEMM per tiny (q, d) matrix costs more than its
work. Logits come out heads first, (h, b, q, k), in every form: the layout the nested chain
carries and the head mixer reads. `ops.core_form` picks the form per backend and head width.
"""

import jax
import jax.numpy as jnp

CORE_FORMS = ("einsum", "heads_first", "broadcast")


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
