"""The nested-attention head mixer g as pure functions of its layers, in per-backend forms.

g maps the logits of each (query, key) position across heads, heads -> ratio * heads ->
ratio * heads -> heads, with LeakyReLU(0.2) between the layers (its parameters are
`models.attention.LogitMixer`'s). On logits laid out heads first
and flattened to (h, n) columns (n = batch x queries x keys, a free reshape), every layer is a
product with a contraction of 4-24 over n columns, bound by memory traffic over its
(hidden, n) activations rather than by arithmetic. The forms below take the same parameters
and compute the same values; `ops.mixer_form` picks one per backend:

- `reference`: the formula as three products, differentiated by autodiff;
- `blocked` (CPU): the reference over cache-sized column blocks, with a hand-written backward
  that recomputes each block's activations, so every element passes through memory once;
- `fused` (GPU, TPU): each layer's small contraction unrolled into multiply-adds over whole
  (fan_out, n) rows, which XLA fuses, with the residual, the carried logits and the noise
  around it, into one elementwise pass; a hand-written backward whose input gradient is one
  elementwise pass that recomputes the hidden activations, and whose parameter gradients are
  products contracted over the n columns.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

LEAKY_SLOPE = 0.2  # the mixer's LeakyReLU; the hand-written backwards use it too
# (kernel (fan_in, fan_out), bias (fan_out,)) of each mixer layer, fc1 to fc3.
MixerLayers = tuple[tuple[jax.Array, jax.Array], ...]


def _reference_layers(layers: MixerLayers, z: jax.Array) -> list[jax.Array]:
    """The mixer on (h, n) columns; returns the pre-activations of every layer, output last."""
    pre = []
    y = z
    for i, (kernel, bias) in enumerate(layers):
        if i:
            y = nn.leaky_relu(pre[-1], LEAKY_SLOPE)
        pre.append(jnp.einsum("hn,hg->gn", y, kernel) + bias[:, None])
    return pre


def reference(layers: MixerLayers, z: jax.Array) -> jax.Array:
    """g(z) on (h, n) logits, as the formula reads."""
    return _reference_layers(layers, z)[-1]


def blocked(layers: MixerLayers, z: jax.Array, block: int) -> jax.Array:
    """g(z) on (h, n) logits over column blocks of about `block` columns (the CPU form).

    Logits narrower than two blocks fit in cache anyway and run as the reference (recomputing
    would cost more than it saves). Same arithmetic per element; only the order of the
    parameter-gradient sums differs.
    """
    n = z.shape[1]
    if block <= 0 or n < 2 * block:
        return reference(layers, z)
    num_blocks = -(-n // block)
    width = -(-n // num_blocks)  # equal blocks; zero columns pad the last (< num_blocks of them)
    padded = jnp.pad(z, ((0, 0), (0, num_blocks * width - n)))
    return _blocked_mixer(width, layers, padded)[:, :n]


def _to_blocks(x: jax.Array, block: int) -> jax.Array:
    return jnp.swapaxes(x.reshape(x.shape[0], -1, block), 0, 1)  # (h, n) -> (n / block, h, block)


def _from_blocks(x: jax.Array) -> jax.Array:
    return jnp.swapaxes(x, 0, 1).reshape(x.shape[1], -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _blocked_mixer(block: int, layers: MixerLayers, z: jax.Array) -> jax.Array:
    out = jax.lax.map(lambda zb: _reference_layers(layers, zb)[-1], _to_blocks(z, block))
    return _from_blocks(out)


def _blocked_mixer_fwd(block, layers, z):
    return _blocked_mixer(block, layers, z), (layers, z)


def _blocked_mixer_bwd(block, residuals, d_out):
    layers, z = residuals

    def block_grads(acc, blocks):
        zb, d = blocks
        pre = _reference_layers(layers, zb)
        inputs = [zb] + [nn.leaky_relu(p, LEAKY_SLOPE) for p in pre[:-1]]
        grads = []
        for i in reversed(range(len(layers))):
            kernel = layers[i][0]
            if i < len(layers) - 1:  # through the LeakyReLU after layer i
                d = d * jnp.where(pre[i] >= 0, 1.0, LEAKY_SLOPE).astype(d.dtype)
            grads.append(
                (
                    jnp.einsum("hn,gn->hg", inputs[i], d, preferred_element_type=jnp.float32),
                    d.sum(axis=1, dtype=jnp.float32),
                )
            )
            d = jnp.einsum("hg,gn->hn", kernel, d)
        acc = jax.tree.map(jnp.add, acc, tuple(reversed(grads)))
        return acc, d

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), layers)
    grads, d_z = jax.lax.scan(block_grads, zeros, (_to_blocks(z, block), _to_blocks(d_out, block)))
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, layers)
    return grads, _from_blocks(d_z)


_blocked_mixer.defvjp(_blocked_mixer_fwd, _blocked_mixer_bwd)


def _unrolled(kernel: jax.Array, bias: jax.Array | None, x: jax.Array) -> jax.Array:
    """(fan_in, n) -> (fan_out, n): x^T kernel (+ bias) as fan_in multiply-adds of whole rows."""
    out = kernel[0][:, None] * x[0] if bias is None else bias[:, None] + kernel[0][:, None] * x[0]
    for i in range(1, x.shape[0]):
        out = out + kernel[i][:, None] * x[i]
    return out


def _fused_pass(layers: MixerLayers, x: jax.Array) -> tuple[list[jax.Array], list[jax.Array]]:
    """(inputs, pre-activations) of every layer on float32 (h, n) columns, output last."""
    inputs, pre = [x], []
    for i, (kernel, bias) in enumerate(layers):
        if i:
            inputs.append(nn.leaky_relu(pre[-1], LEAKY_SLOPE))
        pre.append(_unrolled(kernel.astype(jnp.float32), bias.astype(jnp.float32), inputs[-1]))
    return inputs, pre


@jax.custom_vjp
def fused(layers: MixerLayers, z: jax.Array) -> jax.Array:
    """g(z) on (h, n) logits as unrolled elementwise passes (the accelerator form).

    Computes in float32 whatever `z`'s dtype (the pass is bound by memory traffic, not
    arithmetic) and returns `z`'s dtype.
    """
    return _fused_pass(layers, z.astype(jnp.float32))[1][-1].astype(z.dtype)


def _fused_fwd(layers, z):
    return fused(layers, z), (layers, z)


def _fused_bwd(residuals, d_out):
    layers, z = residuals
    inputs, pre = _fused_pass(layers, z.astype(jnp.float32))
    d = d_out.astype(jnp.float32)
    grads = []
    for i in reversed(range(len(layers))):
        kernel = layers[i][0]
        if i < len(layers) - 1:  # through the LeakyReLU after layer i
            d = d * jnp.where(pre[i] >= 0, 1.0, LEAKY_SLOPE)
        # Products over the n columns, in the compute dtype with float32 accumulation.
        grads.append(
            (
                jnp.einsum(
                    "in,gn->ig",
                    inputs[i].astype(z.dtype),
                    d.astype(z.dtype),
                    preferred_element_type=jnp.float32,
                ).astype(kernel.dtype),
                d.sum(axis=1).astype(kernel.dtype),
            )
        )
        d = _unrolled(kernel.astype(jnp.float32).T, None, d)
    return tuple(reversed(grads)), d.astype(z.dtype)


fused.defvjp(_fused_fwd, _fused_bwd)

MIXER_FORMS = ("reference", "blocked", "fused")


def mix_heads(
    layers: MixerLayers, z: jax.Array, form: str = "reference", block: int = 0
) -> jax.Array:
    """g(z) on (h, n) logits in `form` (one of `MIXER_FORMS`); `block` is `blocked`'s width."""
    if form == "reference":
        return reference(layers, z)
    if form == "blocked":
        return blocked(layers, z, block)
    if form == "fused":
        return fused(layers, z)
    raise ValueError(f"Unknown mixer form {form!r}; the forms are {MIXER_FORMS}.")
