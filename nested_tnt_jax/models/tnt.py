"""Transformer in Transformer (TNT, timm's `TNT`) and Nested-TNT (arXiv 2404.13434).

An image is cut into patches ("sentences"); each patch is embedded as a small grid of "words"
by a conv. Every block runs an inner transformer over the words of each sentence, projects the
words into their sentence, then runs an outer transformer over the sentences (plus a class
token). Nested-TNT replaces the attention of both transformers by nested multi-head attention
(`attention.py`): two independent logit chains, inner (words) and outer (sentences), each
carried from block to block. With both chains off it computes exactly TNT from the same params.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from nested_tnt_jax.models import registry
from nested_tnt_jax.models.attention import Attention
from nested_tnt_jax.models.layers import (
    Dtype,
    DropPath,
    Mlp,
    conv_init,
    dense,
    drop_path_rates,
    layer_norm,
    stack_blocks,
)
from nested_tnt_jax.models.nesting import Nesting

TNT_EPS = 1e-5  # timm's TNT uses nn.LayerNorm's default epsilon
# (words, sentences, inner logits or None, outer logits or None)
Carry = tuple[jax.Array, jax.Array, jax.Array | None, jax.Array | None]


# --- the word embedding ------------------------------------------------------------------


def extract_patches(x: jax.Array, patch: tuple[int, int]) -> jax.Array:
    """(B, H, W, C) -> (B * N, ph, pw, C), patches in row-major grid order (timm's Unfold)."""
    b, h, w, c = x.shape
    ph, pw = patch
    x = x.reshape(b, h // ph, ph, w // pw, pw, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b * (h // ph) * (w // pw), ph, pw, c)


def conv_windows(x: jax.Array, kernel: int, stride: int, pad: int) -> jax.Array:
    """(B, H, W, C) -> (B, H', W', kernel * kernel * C): each conv window flattened (kh, kw, c).

    The order matches a flax (kh, kw, c_in, c_out) kernel reshaped to (kh * kw * c_in, c_out),
    so a conv is this times that matrix.
    """
    x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out_h = (x.shape[1] - kernel) // stride + 1
    out_w = (x.shape[2] - kernel) // stride + 1
    return jnp.concatenate(
        [
            x[
                :,
                i : i + stride * (out_h - 1) + 1 : stride,
                j : j + stride * (out_w - 1) + 1 : stride,
            ]
            for i in range(kernel)
            for j in range(kernel)
        ],
        axis=-1,
    )


class WindowConv(nn.Module):
    """A square conv with `nn.Conv`'s parameters and init, computed as windows x matrix.

    TNT's word embedding is a small-channel conv (3 -> 24, 7x7, stride 4 for TNT-S) that the
    libraries run badly in both directions. Its images need no gradient, so its backward is
    only the kernel gradient; as a cuDNN conv that gradient was the largest op of the GPU
    training step, and XLA:CPU runs the forward conv far below its matrix-product rate. As
    `conv_windows` times the kernel matrix both directions are ordinary GEMMs, faster on GPU
    and CPU alike (docs/performance.md, "Word embedding as windows x matrix").
    """

    features: int
    kernel: int
    stride: int
    pad: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (self.kernel, self.kernel, x.shape[-1], self.features)
        kernel = self.param("kernel", conv_init, shape, jnp.float32).astype(self.dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        windows = conv_windows(x.astype(self.dtype), self.kernel, self.stride, self.pad)
        return windows @ kernel.reshape(-1, self.features) + bias.astype(self.dtype)


def word_grid(patch_size: int, kernel: int, stride: int) -> int:
    """Side of the word grid inside one patch for a conv with padding kernel // 2."""
    return (patch_size + 2 * (kernel // 2) - kernel) // stride + 1


class WordEmbed(nn.Module):
    """TNT's pixel (word) embedding: image -> (B * N, words, inner_dim).

    Standard: cut the image into patches, then run the conv inside each patch (zero padding at
    patch borders). `legacy` (timm's `legacy=True`): run the conv over the whole image, then cut
    its output into word grids. The word position embedding (timm's root-level `pixel_pos`,
    NHWC here) is passed in so that its parameter name stays where timm has it.
    """

    patch_size: int
    inner_dim: int
    kernel: int = 7
    stride: int = 4
    legacy: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, pixel_pos: jax.Array) -> jax.Array:
        pad = self.kernel // 2
        conv = WindowConv(self.inner_dim, self.kernel, self.stride, pad, self.dtype, name="proj")
        if self.legacy:
            g = word_grid(self.patch_size, self.kernel, self.stride)
            words = extract_patches(conv(x), (g, g))
        else:
            words = conv(extract_patches(x, (self.patch_size, self.patch_size)))
        words = words + pixel_pos.astype(words.dtype)
        return words.reshape(words.shape[0], -1, self.inner_dim)


# --- the blocks and the model ---------------------------------------------------------------


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
            dim,
            heads,
            qkv_bias=self.qkv_bias,
            attn_drop=self.attn_drop,
            proj_drop=self.proj_drop,
            nesting=self.nesting,
            chain=chain,
            deterministic=self.deterministic,
            core=self.attention_core,
            dtype=self.dtype,
            name=name,
        )

    @nn.compact
    def __call__(self, carry: Carry, drop_path: float | jax.Array) -> tuple[Carry, None]:
        words, sentences, inner_logits, outer_logits = carry
        path = DropPath(self.deterministic)
        norm = lambda name: layer_norm(TNT_EPS, name, self.dtype)  # noqa: E731

        # Inner transformer over the words of every sentence.
        y, inner_logits = self._attention(
            self.inner_dim,
            self.num_heads_inner,
            "inner",
            "attn_in",
        )(norm("norm_in")(words), inner_logits)
        words = words + path(y, drop_path)
        y = Mlp(
            4 * self.inner_dim,
            self.inner_dim,
            self.proj_drop,
            self.deterministic,
            self.dtype,
            name="mlp_in",
        )(norm("norm_mlp_in")(words))
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
            self.embed_dim,
            self.num_heads_outer,
            "outer",
            "attn_out",
        )(norm("norm_out")(sentences), outer_logits)
        sentences = sentences + path(y, drop_path)
        y = Mlp(
            int(self.embed_dim * self.mlp_ratio),
            self.embed_dim,
            self.proj_drop,
            self.deterministic,
            self.dtype,
            name="mlp",
        )(norm("norm_mlp")(sentences))
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
        words = WordEmbed(
            self.patch_size,
            self.inner_dim,
            self.word_kernel,
            self.word_stride,
            self.legacy,
            self.dtype,
            name="pixel_embed",
        )(images.astype(self.dtype), pixel_pos)

        # Sentence embedding: LayerNorm -> Linear -> LayerNorm over each patch's flat words.
        norm = lambda name: layer_norm(TNT_EPS, name, self.dtype)  # noqa: E731
        sentences = norm("norm2_proj")(
            dense(self.embed_dim, "proj", self.dtype)(
                norm("norm1_proj")(words.reshape(b, num_patches, -1))
            )
        )
        cls_token = self.param("cls_token", pos_init, (1, 1, self.embed_dim), jnp.float32)
        patch_pos = self.param(
            "patch_pos", pos_init, (1, num_patches + 1, self.embed_dim), jnp.float32
        )
        cls = jnp.broadcast_to(cls_token.astype(sentences.dtype), (b, 1, self.embed_dim))
        sentences = jnp.concatenate([cls, sentences], axis=1) + patch_pos.astype(sentences.dtype)
        sentences = nn.Dropout(self.pos_drop_rate)(sentences, deterministic=not train)

        block_kwargs = dict(
            inner_dim=self.inner_dim,
            embed_dim=self.embed_dim,
            num_heads_inner=self.num_heads_inner,
            num_heads_outer=self.num_heads_outer,
            mlp_ratio=self.mlp_ratio,
            qkv_bias=self.qkv_bias,
            proj_drop=self.proj_drop_rate,
            attn_drop=self.attn_drop_rate,
            legacy=self.legacy,
            nesting=self.nesting,
            attention_core=self.attention_core,
            deterministic=not train,
            dtype=self.dtype,
        )
        _, sentences, _, _ = stack_blocks(
            TNTBlock,
            block_kwargs,
            (words, sentences, None, None),
            drop_path_rates(self.drop_path_rate, self.depth),
            scan=self.scan_blocks,
            remat=self.remat,
        )

        x = norm("norm")(sentences)[:, 0]
        x = nn.Dropout(self.drop_rate)(x, deterministic=not train)
        return dense(self.num_classes, "head", self.dtype)(x).astype(jnp.float32)


def _timm_twin(module: TNT, num_classes: int):
    """timm's TNT of `module`'s widths. Nested-TNT has no timm counterpart: its twin is timm's
    TNT, so a ratio shows our nesting cost and timm's speed together. timm's word conv is fixed
    at 7x7; for our small variants with another kernel the conv is swapped for one of that
    kernel."""
    import torch  # noqa: PLC0415 (optional: only the timm comparison needs PyTorch and timm)
    from timm.models.tnt import TNT as TimmTNT  # noqa: PLC0415

    twin = TimmTNT(
        img_size=module.img_size,
        patch_size=module.patch_size,
        num_classes=num_classes,
        embed_dim=module.embed_dim,
        depth=module.depth,
        mlp_ratio=module.mlp_ratio,
        qkv_bias=module.qkv_bias,
        inner_dim=module.inner_dim,
        num_heads_inner=module.num_heads_inner,
        num_heads_outer=module.num_heads_outer,
        first_stride=module.word_stride,
        legacy=module.legacy,
    )
    if module.word_kernel != 7:
        twin.pixel_embed.proj = torch.nn.Conv2d(
            3,
            module.inner_dim,
            module.word_kernel,
            stride=module.word_stride,
            padding=module.word_kernel // 2,
        )
    return twin


FAMILY = registry.register_family(
    registry.Family(
        name="tnt",
        module=TNT,
        chains={"attn_in": "inner", "attn_out": "outer"},
        heads=lambda model: {"outer": model.num_heads_outer, "inner": model.num_heads_inner},
        chain_words={
            "inner": "inner attention (between the words of each patch)",
            "outer": "outer attention (between patches)",
        },
        word_grid=lambda model: word_grid(model.patch_size, model.word_kernel, model.word_stride),
        timm_twin=_timm_twin,
        field_ranges=registry.positive_sizes(
            "inner_dim", "num_heads_inner", "num_heads_outer", "word_kernel", "word_stride"
        ),
    )
)

_NESTED = dict(nesting=Nesting(inner=True, outer=True))
# The 32x32 variants share depth and widths across families (vit.py) so comparisons are fair.
# patch4 and patch8 give 16 words per sentence: patch 4 with a kernel-3 stride-1 word conv (64
# sentences, more accurate), patch 8 with kernel 3 stride 2 (16 sentences, ~2.5x faster on CPU).
_CIFAR = dict(
    img_size=32,
    embed_dim=128,
    depth=4,
    mlp_ratio=2.0,
    inner_dim=16,
    num_heads_outer=4,
    num_heads_inner=2,
    word_kernel=3,
)
# patch8_word4: 2x2 words of 4x4 pixels per 8x8 sentence (kernel 5, stride 4), the word size
# of TNT-S at 224 px; the CPU configs' choice, ~2x faster per image than patch8's 2x2-pixel words.
_CIFAR_WORD4 = dict(_CIFAR, patch_size=8, word_kernel=5, word_stride=4)
_TNT_S = dict(embed_dim=384, inner_dim=24, num_heads_outer=6)
for _size, _widths in (
    ("ti_patch16_224", dict(embed_dim=192, inner_dim=12, num_heads_outer=3, num_heads_inner=2)),
    ("s_patch16_224", _TNT_S),
    ("b_patch16_224", dict(embed_dim=640, inner_dim=40, num_heads_outer=10)),
    ("cifar_patch4_32", dict(_CIFAR, patch_size=4, word_stride=1)),
    ("cifar_patch8_32", dict(_CIFAR, patch_size=8, word_stride=2)),
    ("cifar_patch8_word4_32", _CIFAR_WORD4),
):
    registry.register_model(f"tnt_{_size}", FAMILY, **_widths)
    registry.register_model(f"nested_tnt_{_size}", FAMILY, **_widths, **_NESTED)
registry.register_model("tnt_s_legacy_patch16_224", FAMILY, **_TNT_S, legacy=True)

# The configs' `model=tnt|nested_tnt`: the paper's small models, and the CPU configs' patch-8
# models with 4x4-pixel words (the patch-4 ones are too slow for a 2-core CPU).
registry.register_choice("tnt", paper="tnt_s_patch16_224", cpu="tnt_cifar_patch8_word4_32", order=1)
registry.register_choice(
    "nested_tnt",
    paper="nested_tnt_s_patch16_224",
    cpu="nested_tnt_cifar_patch8_word4_32",
    references=("tnt", "vit"),
    order=2,
)
