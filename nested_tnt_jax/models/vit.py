"""Vision Transformer (timm's `VisionTransformer`) and Nested-ViT (Peng et al., ICME 2023).

ViT follows timm's default class-token setup. Nested-ViT (`nesting.outer`) replaces every
attention layer by nested multi-head attention (`attention.py`): one logit chain over the whole
attention stack, carried from block to block, with the same mixer and logit noise as
Nested-TNT's chains. With the chain off it computes exactly ViT from the same params.
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

VIT_EPS = 1e-6  # timm's ViT uses partial(nn.LayerNorm, eps=1e-6)
# (tokens, carried logits or None)
Carry = tuple[jax.Array, jax.Array | None]


class PatchEmbed(nn.Module):
    """ViT patch embedding: a stride-`patch` conv, flattened to (B, N, D)."""

    patch_size: int
    embed_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.patch_size
        x = nn.Conv(
            self.embed_dim,
            (p, p),
            strides=(p, p),
            padding="VALID",
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=conv_init,
            name="proj",
        )(x)
        return x.reshape(x.shape[0], -1, self.embed_dim)


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
            self.dim,
            self.num_heads,
            qkv_bias=self.qkv_bias,
            fused_qkv=True,
            attn_drop=self.attn_drop,
            proj_drop=self.proj_drop,
            nesting=self.nesting,
            chain="outer",
            deterministic=self.deterministic,
            core=self.attention_core,
            dtype=self.dtype,
            name="attn",
        )(layer_norm(VIT_EPS, "norm1", self.dtype)(x), logits)
        x = x + path(y, drop_path)
        y = Mlp(
            int(self.dim * self.mlp_ratio),
            self.dim,
            self.proj_drop,
            self.deterministic,
            self.dtype,
            name="mlp",
        )(layer_norm(VIT_EPS, "norm2", self.dtype)(x))
        return (x + path(y, drop_path), logits), None


class ViT(nn.Module):
    """timm's ViT: conv patch embedding, class token, learned position embedding, token head.

    Parameter names follow timm (`patch_embed/proj`, `cls_token`, `pos_embed`, `blocks_i/attn/qkv`,
    `norm`, `head`). `drop_rate` is timm's head dropout; `drop_path_rate` its linear schedule.
    `nesting` (`nesting.Nesting`) means what it means for TNT; ViT's one chain is `outer`
    (its tokens play the sentences' part), and ViT is the default with the chain off.
    `attention_core` picks how attention writes QK^T and AV (`ops.CORE_CHOICES`).
    """

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
            images.astype(self.dtype)
        )
        b, n, d = x.shape
        cls_token = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, d), jnp.float32)
        pos_embed = self.param(
            "pos_embed", nn.initializers.truncated_normal(0.02), (1, n + 1, d), jnp.float32
        )
        x = jnp.concatenate([jnp.broadcast_to(cls_token.astype(x.dtype), (b, 1, d)), x], axis=1)
        x = x + pos_embed.astype(x.dtype)
        x = nn.Dropout(self.pos_drop_rate)(x, deterministic=not train)

        block_kwargs = dict(
            dim=self.embed_dim,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            qkv_bias=self.qkv_bias,
            proj_drop=self.proj_drop_rate,
            attn_drop=self.attn_drop_rate,
            nesting=self.nesting,
            attention_core=self.attention_core,
            deterministic=not train,
            dtype=self.dtype,
        )
        x, _ = stack_blocks(
            ViTBlock,
            block_kwargs,
            (x, None),
            drop_path_rates(self.drop_path_rate, self.depth),
            scan=self.scan_blocks,
            remat=self.remat,
        )

        x = layer_norm(VIT_EPS, "norm", self.dtype)(x)[:, 0]
        x = nn.Dropout(self.drop_rate)(x, deterministic=not train)
        return dense(self.num_classes, "head", self.dtype)(x).astype(jnp.float32)


def _timm_twin(module: ViT, num_classes: int):
    """timm's VisionTransformer of `module`'s widths (Nested-ViT's twin is its plain ViT)."""
    from timm.models.vision_transformer import VisionTransformer  # noqa: PLC0415 (optional)

    return VisionTransformer(
        img_size=module.img_size,
        patch_size=module.patch_size,
        num_classes=num_classes,
        embed_dim=module.embed_dim,
        depth=module.depth,
        num_heads=module.num_heads,
        mlp_ratio=module.mlp_ratio,
        qkv_bias=module.qkv_bias,
    )


FAMILY = registry.register_family(
    registry.Family(
        name="vit",
        module=ViT,
        chains={"attn": "outer"},
        heads=lambda model: {"outer": model.num_heads},
        chain_words={"outer": "attention (between patches)"},
        timm_twin=_timm_twin,
        field_ranges=registry.positive_sizes("num_heads"),
    )
)

_NESTED = dict(nesting=Nesting(outer=True))
# The 32x32 variants share depth and widths with TNT's (tnt.py) so comparisons are fair.
_CIFAR = dict(img_size=32, embed_dim=128, depth=4, mlp_ratio=2.0, num_heads=4)
for _size, _widths in (
    ("tiny_patch16_224", dict(embed_dim=192, depth=12, num_heads=3)),
    ("small_patch16_224", dict(embed_dim=384, depth=12, num_heads=6)),
    ("base_patch16_224", dict(embed_dim=768, depth=12, num_heads=12)),
    ("cifar_patch4_32", dict(_CIFAR, patch_size=4)),
    ("cifar_patch8_32", dict(_CIFAR, patch_size=8)),
):
    registry.register_model(f"vit_{_size}", FAMILY, **_widths)
    registry.register_model(f"nested_vit_{_size}", FAMILY, **_widths, **_NESTED)

# The configs' `model=vit|nested_vit`: the paper's small model, and the CPU configs' patch-8 one.
registry.register_choice("vit", paper="vit_small_patch16_224", cpu="vit_cifar_patch8_32", order=0)
registry.register_choice(
    "nested_vit",
    paper="nested_vit_small_patch16_224",
    cpu="nested_vit_cifar_patch8_32",
    references=("vit",),
    order=3,
)
