"""Transformer in Transformer (TNT, timm's `TNT`) and Nested-TNT (arXiv 2404.13434).

An image is cut into patches ("sentences"); each patch is embedded as a small grid of "words"
by a conv. Every block runs an inner transformer over the words of each sentence, projects the
words into their sentence, then runs an outer transformer over the sentences (plus a class
token). Nested-TNT replaces the attention of both transformers by nested multi-head attention
(`attention.py`): two independent logit chains, inner (words) and outer (sentences), each
carried from block to block. With both chains off it computes exactly TNT from the same params.
"""

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from nested_tnt_jax.models.attention import Attention
from nested_tnt_jax.models.layers import (
    Dtype, DropPath, Mlp, WordEmbed, dense, drop_path_rates, layer_norm, stack_blocks, word_grid)
from nested_tnt_jax.models.nesting import Nesting

TNT_EPS = 1e-5  # timm's TNT uses nn.LayerNorm's default epsilon
# (words, sentences, inner logits or None, outer logits or None)
Carry = tuple[jax.Array, jax.Array, jax.Array | None, jax.Array | None]


class TNTBlock(nn.Module):
    """One TNT block: inner transformer on words, words -> sentence, outer transformer.

    Words are (B * N, P, inner_dim) so the inner attention is one batched call over all
    sentences; sentences are (B, N + 1, embed_dim) with the class token first. Standard:
    sentence += norm2_proj(proj(norm1_proj(flat words))) (proj without bias); `legacy`:
    sentence += proj(flat(norm1_proj(words))) (proj with bias), as timm.
    """

    inner_dim: int
    embed_dim: int
    num_heads_inner: int
    num_heads_outer: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    proj_drop: float = 0.0
    attn_drop: float = 0.0
    legacy: bool = False
    nesting: Nesting = Nesting()
    attention_core: str = "auto"
    deterministic: bool = True
    dtype: Dtype = jnp.float32

    def _attention(self, dim: int, heads: int, chain: str, name: str) -> Attention:
        return Attention(
            dim, heads, qkv_bias=self.qkv_bias, attn_drop=self.attn_drop,
            proj_drop=self.proj_drop, nesting=self.nesting, chain=chain,
            deterministic=self.deterministic, core=self.attention_core, dtype=self.dtype,
            name=name)

    @nn.compact
    def __call__(self, carry: Carry, drop_path: float | jax.Array) -> tuple[Carry, None]:
        words, sentences, inner_logits, outer_logits = carry
        path = DropPath(self.deterministic)
        norm = lambda name: layer_norm(TNT_EPS, name, self.dtype)  # noqa: E731

        # Inner transformer over the words of every sentence.
        y, inner_logits = self._attention(
            self.inner_dim, self.num_heads_inner, "inner", "attn_in",
        )(norm("norm_in")(words), inner_logits)
        words = words + path(y, drop_path)
        y = Mlp(4 * self.inner_dim, self.inner_dim, self.proj_drop, self.deterministic,
                self.dtype, name="mlp_in")(norm("norm_mlp_in")(words))
        words = words + path(y, drop_path)

        # Words -> their sentence (the class token gets nothing).
        b, n1, _ = sentences.shape
        if self.legacy:
            flat = norm("norm1_proj")(words).reshape(b, n1 - 1, -1)
            update = dense(self.embed_dim, "proj", self.dtype)(flat)
        else:
            flat = norm("norm1_proj")(words.reshape(b, n1 - 1, -1))
            update = norm("norm2_proj")(dense(self.embed_dim, "proj", self.dtype, False)(flat))
        sentences = jnp.concatenate([sentences[:, :1], sentences[:, 1:] + update], axis=1)

        # Outer transformer over the sentences.
        y, outer_logits = self._attention(
            self.embed_dim, self.num_heads_outer, "outer", "attn_out",
        )(norm("norm_out")(sentences), outer_logits)
        sentences = sentences + path(y, drop_path)
        y = Mlp(int(self.embed_dim * self.mlp_ratio), self.embed_dim, self.proj_drop,
                self.deterministic, self.dtype, name="mlp")(norm("norm_mlp")(sentences))
        sentences = sentences + path(y, drop_path)
        return (words, sentences, inner_logits, outer_logits), None


class TNT(nn.Module):
    """TNT / Nested-TNT classifier. Parameter names follow timm's state_dict keys.

    `word_kernel` / `word_stride` are the word conv's kernel and stride (timm: 7 and 4, i.e.
    4x4 words in a 16x16 patch); small-image variants use e.g. kernel 3, stride 1. `nesting`
    (`nesting.Nesting`: chains `inner` and `outer`, mixer, ratio, noise) makes each ablation a
    config change; TNT is the default with both chains off. `attention_core` picks
    how every attention layer writes QK^T and AV (`ops.CORE_CHOICES`; same values).
    """

    chains: ClassVar[tuple[str, ...]] = ("inner", "outer")

    img_size: int = 224
    patch_size: int = 16
    num_classes: int = 1000
    embed_dim: int = 768
    inner_dim: int = 48
    depth: int = 12
    num_heads_inner: int = 4
    num_heads_outer: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    word_kernel: int = 7
    word_stride: int = 4
    legacy: bool = False
    nesting: Nesting = Nesting()
    attention_core: str = "auto"
    drop_rate: float = 0.0
    pos_drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    scan_blocks: bool = False
    remat: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        b = images.shape[0]
        grid = word_grid(self.patch_size, self.word_kernel, self.word_stride)
        num_patches = (self.img_size // self.patch_size) ** 2
        pos_init = nn.initializers.truncated_normal(0.02)
        pixel_pos = self.param("pixel_pos", pos_init, (1, grid, grid, self.inner_dim), jnp.float32)
        words = WordEmbed(self.patch_size, self.inner_dim, self.word_kernel, self.word_stride,
                          self.legacy, self.dtype, name="pixel_embed")(
            images.astype(self.dtype), pixel_pos)

        # Sentence embedding: LayerNorm -> Linear -> LayerNorm over each patch's flat words.
        norm = lambda name: layer_norm(TNT_EPS, name, self.dtype)  # noqa: E731
        sentences = norm("norm2_proj")(dense(self.embed_dim, "proj", self.dtype)(
            norm("norm1_proj")(words.reshape(b, num_patches, -1))))
        cls_token = self.param("cls_token", pos_init, (1, 1, self.embed_dim), jnp.float32)
        patch_pos = self.param("patch_pos", pos_init, (1, num_patches + 1, self.embed_dim),
                               jnp.float32)
        cls = jnp.broadcast_to(cls_token.astype(sentences.dtype), (b, 1, self.embed_dim))
        sentences = jnp.concatenate([cls, sentences], axis=1) + patch_pos.astype(sentences.dtype)
        sentences = nn.Dropout(self.pos_drop_rate)(sentences, deterministic=not train)

        block_kwargs = dict(
            inner_dim=self.inner_dim, embed_dim=self.embed_dim,
            num_heads_inner=self.num_heads_inner, num_heads_outer=self.num_heads_outer,
            mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias, proj_drop=self.proj_drop_rate,
            attn_drop=self.attn_drop_rate, legacy=self.legacy, nesting=self.nesting,
            attention_core=self.attention_core,
            deterministic=not train, dtype=self.dtype)
        _, sentences, _, _ = stack_blocks(
            TNTBlock, block_kwargs, (words, sentences, None, None),
            drop_path_rates(self.drop_path_rate, self.depth),
            scan=self.scan_blocks, remat=self.remat)

        x = norm("norm")(sentences)[:, 0]
        x = nn.Dropout(self.drop_rate)(x, deterministic=not train)
        return dense(self.num_classes, "head", self.dtype)(x).astype(jnp.float32)
