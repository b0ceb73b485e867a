"""Multi-head attention, plain (timm) and nested (a chain of layers that carries its logits).

Nested multi-head attention (CODA, Zheng et al., ACL 2021; Nested ViT, Peng et al., ICME 2023)
lets each layer see the previous layer's attention logits:

    S_l = Q K^T / sqrt(d_head)                       shape (heads, batch, queries, keys)
    A_1 = S_1
    Z_l = S_l + Ã_{l-1},  A_l = Z_l + g_l(Z_l)       l >= 2
    Ã_l = A_l + ε, ε ~ N(0, 1) (training only)       carried to layer l + 1
    y   = proj(dropout(softmax(Ã_l)) V)

g_l is the head mixer (`LogitMixer`). The carried logits are an explicit input and output
of `Attention.__call__`, never module state, so the chain survives `nn.scan` and `nn.remat`
untouched. Logits are laid out heads first, (h, b, q, k), so the mixer reads contiguous rows
with no transpose of the largest tensor in the model. This module is the math and the
parameters; how QK^T, AV and the mixer are written for each backend lives in `ops` (every form
computes the same values). Which chains are nested, and how, is one `nesting.Nesting`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from nested_tnt_jax import ops
from nested_tnt_jax.models.layers import Dtype, dense
from nested_tnt_jax.models.nesting import Nesting
from nested_tnt_jax.ops import cores
from nested_tnt_jax.ops.mixer import mix_heads

__all__ = ["Attention", "LogitMixer"]

# Xavier-uniform with gain 1/sqrt(2): variance_scaling's scale is gain**2.
mixer_init = nn.initializers.variance_scaling(0.5, "fan_avg", "uniform")


class HeadDense(nn.Module):
    """The parameters of one mixer layer over the head axis: kernel (fan_in, fan_out), bias."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, fan_in: int) -> tuple[jax.Array, jax.Array]:
        kernel = self.param("kernel", mixer_init, (fan_in, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        return kernel.astype(self.dtype), bias.astype(self.dtype)


class LogitMixer(nn.Module):
    """g(Z): heads -> ratio*heads -> ratio*heads -> heads, LeakyReLU(0.2) between the layers.

    Applied in the logits' own heads-first (h, b, q, k) layout, (b, q, k) merged into one axis,
    in the form `ops.mixer_form` picks for the backend (`form="auto"`) or in `form`.
    Xavier-uniform (gain 1/sqrt(2)) kernels, zero biases.

    Size: for TNT-S (inner 4 heads, outer 6 heads, ratio 4) the two mixers of a layer hold
    420 + 918 parameters, about 15k over 11 layers. The Nested-TNT paper reports ~2M more
    parameters than TNT, which this mixer does not explain; the hidden width is therefore
    configurable (`mixer_ratio`) rather than guessed.
    """

    num_heads: int
    ratio: int = 4
    dtype: Dtype = jnp.float32
    form: str = "auto"

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        hidden = self.ratio * self.num_heads
        widths = (self.num_heads, hidden, hidden, self.num_heads)
        layers = tuple(
            HeadDense(fan_out, self.dtype, name=f"fc{i + 1}")(fan_in)
            for i, (fan_in, fan_out) in enumerate(zip(widths, widths[1:]))
        )
        form, block = (
            ops.mixer_form(hidden)
            if self.form == "auto"
            else (self.form, ops.CPU_BLOCK_ELEMENTS // hidden)
        )
        return mix_heads(layers, z.reshape(z.shape[0], -1), form, block).reshape(z.shape)


class Attention(nn.Module):
    """timm's multi-head attention, optionally one link of a nested-attention chain.

    `fused_qkv` picks timm's ViT layout (one `qkv` Linear) over its TNT layout (`qk` and `v`).
    `__call__(x, prev_logits)` returns `(y, logits)`, logits laid out (heads, batch, q, k).
    The layer is a link of chain `chain` of the model's `nesting`. With that chain off
    (`nesting.nested(chain)` false) logits are None and this is exactly timm's attention. With
    it on the returned logits are Ã_l; pass `prev_logits=None` for the first layer of a chain
    (no mixer is created there). `nesting.mixer=False` drops g_l (A_l = S_l + Ã_{l-1});
    `nesting.logit_noise` scales ε (0 turns it off). Any leading batch shape works as one
    einsum batch, so TNT's inner attention over all B*N sentences is a single call. `core` (one
    of `ops.CORE_CHOICES`) picks how QK^T and AV are written (`ops.core_form`); every choice
    computes the same values.
    """

    dim: int
    num_heads: int
    qkv_bias: bool = False
    fused_qkv: bool = False
    attn_drop: float = 0.0
    proj_drop: float = 0.0
    nesting: Nesting = Nesting()
    chain: str = "outer"
    deterministic: bool = True
    core: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, prev_logits: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array | None]:
        b, n, _ = x.shape
        h = self.num_heads
        d = self.dim // h
        if self.fused_qkv:
            qkv = dense(3 * self.dim, "qkv", self.dtype, self.qkv_bias)(x).reshape(b, n, 3, h, d)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        else:
            qk = dense(2 * self.dim, "qk", self.dtype, self.qkv_bias)(x).reshape(b, n, 2, h, d)
            q, k = qk[:, :, 0], qk[:, :, 1]
            v = dense(self.dim, "v", self.dtype, self.qkv_bias)(x).reshape(b, n, h, d)

        form = ops.core_form(self.core, d)
        logits = cores.head_logits(q, k, form)
        carried = None
        nesting = self.nesting
        if nesting.nested(self.chain):
            if prev_logits is not None:
                logits = logits + prev_logits.astype(logits.dtype)
                if nesting.mixer:
                    logits = logits + LogitMixer(h, nesting.mixer_ratio, self.dtype, name="mixer")(
                        logits
                    )
            if not self.deterministic and nesting.logit_noise > 0.0:
                noise = jax.random.normal(self.make_rng("noise"), logits.shape, logits.dtype)
                logits = logits + jnp.asarray(nesting.logit_noise, logits.dtype) * noise
            carried = logits

        # Exposes the pre-softmax logits for inspection (`visualize.py`); a no-op unless the
        # caller makes "intermediates" mutable.
        self.sow("intermediates", "attention_logits", jnp.swapaxes(logits, 0, 1))
        attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
        attn = nn.Dropout(self.attn_drop)(attn, deterministic=self.deterministic)
        y = cores.attend(attn, v, form).reshape(b, n, self.dim)
        y = dense(self.dim, "proj", self.dtype)(y)
        y = nn.Dropout(self.proj_drop)(y, deterministic=self.deterministic)
        return y, carried
