"""Models by registry name: timm's names (plus Nested-TNT, Nested-ViT, small 32x32 variants).

`create_model(name, num_classes=1000, img_size=None, **overrides)` returns a `flax.linen`
module; `module.apply(variables, images_nhwc, train=..., rngs={"dropout": k1, "noise": k2})`
returns float32 logits. Overrides are the module's fields (`drop_path_rate`, `dtype`,
`scan_blocks`, `attention_core`, ...); `nesting` (a `Nesting` or a mapping of its fields)
changes the registered variant's nesting spec.

Each family file registers itself and its variants (`registry`); importing this package
imports the built-in families (the one line a new in-tree family adds here) and then those
named by `$NESTED_TNT_JAX_FAMILIES` (`registry.load_external`).
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from nested_tnt_jax import ops
from nested_tnt_jax.errors import check_range
from nested_tnt_jax.models import nesting as nesting_spec
from nested_tnt_jax.models import registry
from nested_tnt_jax.models.layers import params_to_loop, params_to_scan
from nested_tnt_jax.models.nesting import Nesting
from nested_tnt_jax.models.registry import family_of

# The built-in families, each registering itself; then those named by the environment.
from nested_tnt_jax.models.tnt import TNT
from nested_tnt_jax.models.vit import ViT

registry.load_external()

__all__ = [
    "create_model",
    "family_of",
    "list_models",
    "model_config",
    "params_to_loop",
    "params_to_scan",
    "Nesting",
    "TNT",
    "ViT",
]


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return registry.model_names()


def _fields(cls: type[nn.Module]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]


def model_config(name: str) -> tuple[type[nn.Module], dict[str, Any]]:
    """The module class and registered keyword arguments of `name` (ValueError if unknown)."""
    family, kwargs = registry.lookup(name)
    return family.module, kwargs


def create_model(
    name: str,
    num_classes: int = 1000,
    img_size: int | None = None,
    nesting: Nesting | Mapping[str, Any] | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build registered model `name` for `num_classes` classes at `img_size` (None: its own).

    `nesting` changes fields of the variant's nesting spec (e.g. `{"inner": False}`, or a whole
    `Nesting`); `overrides` replace the module's other fields (e.g. `drop_path_rate=0.1`,
    `dtype="bfloat16"` for bfloat16 compute with float32 params, `scan_blocks=True`). The
    nesting switches' old override names (`nest_inner=False`, ...) are read through
    `nesting.split_legacy`.
    """
    family, kwargs = registry.lookup(name)
    cls = family.module
    overrides, legacy = nesting_spec.split_legacy(overrides)
    changes = {
        **legacy,
        **(nesting.to_dict() if isinstance(nesting, Nesting) else dict(nesting or {})),
    }
    unknown = sorted(set(changes) - set(nesting_spec.FIELDS))
    if unknown:
        raise ValueError(
            f"Unknown nesting field(s) {', '.join(unknown)}; the fields are "
            f"{', '.join(nesting_spec.FIELDS)}."
        )
    spec = kwargs.get("nesting", Nesting()).replace(**changes)
    valid = [f for f in _fields(cls) if f != "nesting"]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(
            f"Unknown override(s) {', '.join(unknown)} for model {name!r} ({cls.__name__}). "
            f"Valid overrides: {', '.join(sorted(valid))}."
        )
    missing = [c for c in nesting_spec.CHAINS if spec.nested(c) and c not in family.chain_names]
    if missing:
        raise ValueError(
            f"Model {name!r} has no {' or '.join(missing)} attention chain to nest (its "
            f"chains: {', '.join(family.chain_names)}); set "
            f"{', '.join(f'model.nesting.{c}=False' for c in missing)}."
        )
    kwargs.update(overrides)
    kwargs["nesting"] = spec
    kwargs["num_classes"] = num_classes
    if img_size is not None:
        kwargs["img_size"] = img_size
    if "dtype" in kwargs:
        kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
    module = cls(**kwargs)
    for field, bounds in family.ranges().items():
        if hasattr(module, field):
            check_range(f"model.overrides.{field}", getattr(module, field), **bounds)
    for field, bounds in nesting_spec.RANGES.items():
        check_range(f"model.nesting.{field}", getattr(spec, field), **bounds)
    ops.check_core_choice(module.attention_core)
    if module.img_size % module.patch_size:
        raise ValueError(
            f"Image size {module.img_size} is not divisible by the patch size "
            f"{module.patch_size} of model {name!r}; pass an img_size that is a multiple of "
            f"{module.patch_size}."
        )
    return module
