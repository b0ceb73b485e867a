"""Model registry: timm's names (plus Nested-TNT, Nested-ViT and small 32x32 variants) -> Flax modules.

`create_model(name, num_classes=1000, img_size=None, **overrides)` returns a `flax.linen`
module; `module.apply(variables, images_nhwc, train=..., rngs={"dropout": k1, "noise": k2})`
returns float32 logits. Overrides are the module's fields (`drop_path_rate`, `dtype`,
`scan_blocks`, `attention_core`, ...); `nesting` (a `Nesting` or a mapping of its fields)
changes the registered variant's nesting spec.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from nested_tnt_jax import ops
from nested_tnt_jax.errors import check_range
from nested_tnt_jax.models import nesting as nesting_spec
from nested_tnt_jax.models.layers import params_to_loop, params_to_scan
from nested_tnt_jax.models.nesting import Nesting
from nested_tnt_jax.models.tnt import TNT
from nested_tnt_jax.models.vit import ViT

__all__ = ["create_model", "list_models", "model_config", "params_to_loop", "params_to_scan",
           "Nesting", "TNT", "ViT"]

_NESTED = dict(nesting=Nesting(inner=True, outer=True))
_NESTED_VIT = dict(nesting=Nesting(outer=True))
# The 32x32 variants share depth and widths across families so comparisons are fair. patch4
# and patch8 give 16 words per sentence: patch 4 with a kernel-3 stride-1 word conv (64
# sentences, more accurate), patch 8 with kernel 3 stride 2 (16 sentences, ~2.5x faster on CPU).
_CIFAR = dict(img_size=32, embed_dim=128, depth=4, mlp_ratio=2.0)
_CIFAR_TNT = dict(_CIFAR, inner_dim=16, num_heads_outer=4, num_heads_inner=2, word_kernel=3)
# patch8_word4: 2x2 words of 4x4 pixels per 8x8 sentence (kernel 5, stride 4), the word size
# of TNT-S at 224 px; the CPU configs' choice, ~2x faster per image than patch8's 2x2-pixel words.
_CIFAR_WORD4 = dict(_CIFAR_TNT, patch_size=8, word_kernel=5, word_stride=4)
_TNT_TI = dict(embed_dim=192, inner_dim=12, num_heads_outer=3, num_heads_inner=2)
_TNT_S = dict(embed_dim=384, inner_dim=24, num_heads_outer=6)
_TNT_B = dict(embed_dim=640, inner_dim=40, num_heads_outer=10)

_REGISTRY: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "vit_tiny_patch16_224": (ViT, dict(embed_dim=192, depth=12, num_heads=3)),
    "vit_small_patch16_224": (ViT, dict(embed_dim=384, depth=12, num_heads=6)),
    "vit_base_patch16_224": (ViT, dict(embed_dim=768, depth=12, num_heads=12)),
    "nested_vit_tiny_patch16_224": (ViT, dict(embed_dim=192, depth=12, num_heads=3, **_NESTED_VIT)),
    "nested_vit_small_patch16_224": (ViT, dict(embed_dim=384, depth=12, num_heads=6, **_NESTED_VIT)),
    "nested_vit_base_patch16_224": (ViT, dict(embed_dim=768, depth=12, num_heads=12, **_NESTED_VIT)),
    "tnt_ti_patch16_224": (TNT, _TNT_TI),
    "tnt_s_patch16_224": (TNT, _TNT_S),
    "tnt_s_legacy_patch16_224": (TNT, dict(_TNT_S, legacy=True)),
    "tnt_b_patch16_224": (TNT, _TNT_B),
    "nested_tnt_ti_patch16_224": (TNT, dict(_TNT_TI, **_NESTED)),
    "nested_tnt_s_patch16_224": (TNT, dict(_TNT_S, **_NESTED)),
    "nested_tnt_b_patch16_224": (TNT, dict(_TNT_B, **_NESTED)),
    "vit_cifar_patch4_32": (ViT, dict(_CIFAR, patch_size=4, num_heads=4)),
    "nested_vit_cifar_patch4_32": (ViT, dict(_CIFAR, patch_size=4, num_heads=4, **_NESTED_VIT)),
    "tnt_cifar_patch4_32": (TNT, dict(_CIFAR_TNT, patch_size=4, word_stride=1)),
    "nested_tnt_cifar_patch4_32": (TNT, dict(_CIFAR_TNT, patch_size=4, word_stride=1, **_NESTED)),
    "vit_cifar_patch8_32": (ViT, dict(_CIFAR, patch_size=8, num_heads=4)),
    "nested_vit_cifar_patch8_32": (ViT, dict(_CIFAR, patch_size=8, num_heads=4, **_NESTED_VIT)),
    "tnt_cifar_patch8_32": (TNT, dict(_CIFAR_TNT, patch_size=8, word_stride=2)),
    "nested_tnt_cifar_patch8_32": (TNT, dict(_CIFAR_TNT, patch_size=8, word_stride=2, **_NESTED)),
    "tnt_cifar_patch8_word4_32": (TNT, _CIFAR_WORD4),
    "nested_tnt_cifar_patch8_word4_32": (TNT, dict(_CIFAR_WORD4, **_NESTED)),
}


# The range of every numeric field of the model classes, checked by `create_model`: sizes are
# positive integers, rates are probabilities of dropping, the noise is a standard deviation.
_SIZES = ("img_size", "patch_size", "num_classes", "embed_dim", "inner_dim", "depth", "num_heads",
          "num_heads_inner", "num_heads_outer", "word_kernel", "word_stride")
_RATES = ("drop_rate", "pos_drop_rate", "proj_drop_rate", "attn_drop_rate", "drop_path_rate")
FIELD_RANGES: dict[str, dict[str, Any]] = {
    **{f: dict(low=1, integer=True) for f in _SIZES},
    **{f: dict(low=0, high=1, high_open=True, hint="a dropout probability") for f in _RATES},
    "mlp_ratio": dict(low=0, low_open=True, hint="MLP width over embedding width"),
}


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def _fields(cls: type[nn.Module]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]


def model_config(name: str) -> tuple[type[nn.Module], dict[str, Any]]:
    """The module class and registered keyword arguments of `name` (ValueError if unknown)."""
    if name not in _REGISTRY:
        raise ValueError(
            f"Unknown model {name!r}. Choose one of: {', '.join(list_models())}.")
    cls, kwargs = _REGISTRY[name]
    return cls, dict(kwargs)


def create_model(
    name: str, num_classes: int = 1000, img_size: int | None = None,
    nesting: Nesting | Mapping[str, Any] | None = None, **overrides: Any
) -> nn.Module:
    """Build registered model `name` for `num_classes` classes at `img_size` (None: its own).

    `nesting` changes fields of the variant's nesting spec (e.g. `{"inner": False}`, or a whole
    `Nesting`); `overrides` replace the module's other fields (e.g. `drop_path_rate=0.1`,
    `dtype="bfloat16"` for bfloat16 compute with float32 params, `scan_blocks=True`). The
    nesting switches' old override names (`nest_inner=False`, ...) are read through
    `nesting.split_legacy`.
    """
    cls, kwargs = model_config(name)
    overrides, legacy = nesting_spec.split_legacy(overrides)
    changes = {**legacy, **(nesting.to_dict() if isinstance(nesting, Nesting)
                            else dict(nesting or {}))}
    unknown = sorted(set(changes) - set(nesting_spec.FIELDS))
    if unknown:
        raise ValueError(f"Unknown nesting field(s) {', '.join(unknown)}; the fields are "
                         f"{', '.join(nesting_spec.FIELDS)}.")
    spec = kwargs.get("nesting", Nesting()).replace(**changes)
    valid = [f for f in _fields(cls) if f != "nesting"]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(
            f"Unknown override(s) {', '.join(unknown)} for model {name!r} ({cls.__name__}). "
            f"Valid overrides: {', '.join(sorted(valid))}.")
    missing = [c for c in nesting_spec.CHAINS if spec.nested(c) and c not in cls.chains]
    if missing:
        raise ValueError(
            f"Model {name!r} has no {' or '.join(missing)} attention chain to nest (its "
            f"chains: {', '.join(cls.chains)}); set "
            f"{', '.join(f'model.nesting.{c}=False' for c in missing)}.")
    kwargs.update(overrides)
    kwargs["nesting"] = spec
    kwargs["num_classes"] = num_classes
    if img_size is not None:
        kwargs["img_size"] = img_size
    if "dtype" in kwargs:
        kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
    module = cls(**kwargs)
    for field, bounds in FIELD_RANGES.items():
        if hasattr(module, field):
            check_range(f"model.overrides.{field}", getattr(module, field), **bounds)
    for field, bounds in nesting_spec.RANGES.items():
        check_range(f"model.nesting.{field}", getattr(spec, field), **bounds)
    ops.check_core_choice(module.attention_core)
    if module.img_size % module.patch_size:
        raise ValueError(
            f"Image size {module.img_size} is not divisible by the patch size "
            f"{module.patch_size} of model {name!r}; pass an img_size that is a multiple of "
            f"{module.patch_size}.")
    return module
