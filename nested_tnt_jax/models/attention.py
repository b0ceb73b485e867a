"""Multi-head attention, plain (timm) and nested (a chain of layers that carries its logits).

Nested multi-head attention (CODA, Zheng et al., ACL 2021; Nested ViT, Peng et al., ICME 2023)
lets each layer see the previous layer's attention logits:

    S_l = Q K^T / sqrt(d_head)                       shape (heads, batch, queries, keys)
    A_1 = S_1
    Z_l = S_l + Ã_{l-1},  A_l = Z_l + g_l(Z_l)       l >= 2
    Ã_l = A_l + ε, ε ~ N(0, 1) (training only)       carried to layer l + 1
    y   = proj(dropout(softmax(Ã_l)) V)

g_l is the head mixer (`mixer.LogitMixer`). The carried logits are an explicit input and output
of `Attention.__call__`, never module state, so the chain survives `nn.scan` and `nn.remat`
untouched. Logits are laid out heads first, (h, b, q, k), so the mixer reads contiguous rows
with no transpose of the largest tensor in the model. How QK^T, AV and the mixer are written
for each backend lives in `cores` and `mixer`; every form computes the same values.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from nested_tnt_jax.models import cores
from nested_tnt_jax.models.cores import CORE_CHOICES
from nested_tnt_jax.models.layers import Dtype, dense
from nested_tnt_jax.models.mixer import LogitMixer

__all__ = ["Attention", "CORE_CHOICES", "LogitMixer"]


class Attention(nn.Module):
    """timm's multi-head attention, optionally one link of a nested-attention chain.

    `fused_qkv` picks timm's ViT layout (one `qkv` Linear) over its TNT layout (`qk` and `v`).
    `__call__(x, prev_logits)` returns `(y, logits)`, logits laid out (heads, batch, q, k).
    With `nested=False` logits are None and this is exactly timm's attention. With
    `nested=True` the returned logits are Ã_l; pass `prev_logits=None` for the first layer of a
    chain (no mixer is created there). `mixer=False` drops g_l (A_l = S_l + Ã_{l-1});
    `logit_noise` scales ε (0 turns it off). Any leading batch shape works as one einsum batch,
    so TNT's inner attention over all B*N sentences is a single call. `core` (one of
    `CORE_CHOICES`) picks how QK^T and AV are written (`cores.core_form`); every choice computes
    the same values.
    """

    dim: int
    num_heads: int
    qkv_bias: bool = False
    fused_qkv: bool = False
    attn_drop: float = 0.0
    proj_drop: float = 0.0
    nested: bool = False
    mixer: bool = True
    mixer_ratio: int = 4
    logit_noise: float = 1.0
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

        form = cores.core_form(self.core, d)
        logits = cores.head_logits(q, k, form)
        carried = None
        if self.nested:
            if prev_logits is not None:
                logits = logits + prev_logits.astype(logits.dtype)
                if self.mixer:
                    logits = logits + LogitMixer(h, self.mixer_ratio, self.dtype, name="mixer")(logits)
            if not self.deterministic and self.logit_noise > 0.0:
                noise = jax.random.normal(self.make_rng("noise"), logits.shape, logits.dtype)
                logits = logits + jnp.asarray(self.logit_noise, logits.dtype) * noise
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
