"""Vision Transformer (timm's `VisionTransformer`) and Nested-ViT (Peng et al., ICME 2023).

ViT follows timm's default class-token setup. Nested-ViT (`nesting.outer`) replaces every
attention layer by nested multi-head attention (`attention.py`): one logit chain over the whole
attention stack, carried from block to block, with the same mixer and logit noise as
Nested-TNT's chains. With the chain off it computes exactly ViT from the same params.
"""

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from nested_tnt_jax.models.attention import Attention
from nested_tnt_jax.models.layers import (
    Dtype, DropPath, Mlp, PatchEmbed, dense, drop_path_rates, layer_norm, stack_blocks)
from nested_tnt_jax.models.nesting import Nesting

VIT_EPS = 1e-6  # timm's ViT uses partial(nn.LayerNorm, eps=1e-6)
# (tokens, carried logits or None)
Carry = tuple[jax.Array, jax.Array | None]


class ViTBlock(nn.Module):
    """Pre-LN block: x + attn(norm1(x)), then x + mlp(norm2(x)), each through DropPath."""

    dim: int
    num_heads: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    proj_drop: float = 0.0
    attn_drop: float = 0.0
    nesting: Nesting = Nesting()
    attention_core: str = "auto"
    deterministic: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, carry: Carry, drop_path: float | jax.Array) -> tuple[Carry, None]:
        x, logits = carry
        path = DropPath(self.deterministic)
        y, logits = Attention(
            self.dim, self.num_heads, qkv_bias=self.qkv_bias, fused_qkv=True,
            attn_drop=self.attn_drop, proj_drop=self.proj_drop, nesting=self.nesting,
            chain="outer", deterministic=self.deterministic, core=self.attention_core,
            dtype=self.dtype, name="attn",
        )(layer_norm(VIT_EPS, "norm1", self.dtype)(x), logits)
        x = x + path(y, drop_path)
        y = Mlp(int(self.dim * self.mlp_ratio), self.dim, self.proj_drop, self.deterministic,
                self.dtype, name="mlp")(layer_norm(VIT_EPS, "norm2", self.dtype)(x))
        return (x + path(y, drop_path), logits), None


class ViT(nn.Module):
    """timm's ViT: conv patch embedding, class token, learned position embedding, token head.

    Parameter names follow timm (`patch_embed/proj`, `cls_token`, `pos_embed`, `blocks_i/attn/qkv`,
    `norm`, `head`). `drop_rate` is timm's head dropout; `drop_path_rate` its linear schedule.
    `nesting` (`nesting.Nesting`) means what it means for TNT; ViT's one chain is `outer`
    (its tokens play the sentences' part), and ViT is the default with the chain off.
    `attention_core` picks how attention writes QK^T and AV (`ops.CORE_CHOICES`).
    """

    chains: ClassVar[tuple[str, ...]] = ("outer",)

    img_size: int = 224
    patch_size: int = 16
    num_classes: int = 1000
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0
    pos_drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    nesting: Nesting = Nesting()
    attention_core: str = "auto"
    scan_blocks: bool = False
    remat: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        x = PatchEmbed(self.patch_size, self.embed_dim, self.dtype, name="patch_embed")(
            images.astype(self.dtype))
        b, n, d = x.shape
        cls_token = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, d), jnp.float32)
        pos_embed = self.param("pos_embed", nn.initializers.truncated_normal(0.02),
                               (1, n + 1, d), jnp.float32)
        x = jnp.concatenate([jnp.broadcast_to(cls_token.astype(x.dtype), (b, 1, d)), x], axis=1)
        x = x + pos_embed.astype(x.dtype)
        x = nn.Dropout(self.pos_drop_rate)(x, deterministic=not train)

        block_kwargs = dict(
            dim=self.embed_dim, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
            qkv_bias=self.qkv_bias, proj_drop=self.proj_drop_rate,
            attn_drop=self.attn_drop_rate, nesting=self.nesting,
            attention_core=self.attention_core, deterministic=not train, dtype=self.dtype)
        x, _ = stack_blocks(ViTBlock, block_kwargs, (x, None),
                         drop_path_rates(self.drop_path_rate, self.depth),
                         scan=self.scan_blocks, remat=self.remat)

        x = layer_norm(VIT_EPS, "norm", self.dtype)(x)[:, 0]
        x = nn.Dropout(self.drop_rate)(x, deterministic=not train)
        return dense(self.num_classes, "head", self.dtype)(x).astype(jnp.float32)
