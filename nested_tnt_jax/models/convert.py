"""timm and official TNT checkpoints -> Flax params of a registered model (loop layout).

Flax parameter paths mirror timm's state_dict keys (`blocks_0/attn_in/qk/kernel` <->
`blocks.0.attn_in.qk.weight`), so the mapping is mechanical: Linear weights are transposed,
conv weights go OIHW -> HWIO, LayerNorm `weight` is Flax's `scale`, and `pixel_pos` goes
NCHW -> NHWC. On top of that the converter can
  * resample the sentence position embedding to another image size (timm's
    `resample_abs_pos_embed`: class token kept, grid resized bicubically with antialiasing),
  * give a fresh head for another class count,
  * load TNT weights into Nested-TNT (the logit mixers, absent from TNT, are initialised fresh).
Use `nested_tnt_jax.models.params_to_scan` on the result for a `scan_blocks=True` model.
"""

import math
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from nested_tnt_jax.models import create_model

PyTree = Any

# The official TNT release names -> timm's names (timm's `checkpoint_filter_fn`).
_OFFICIAL_RENAMES = (
    ("outer_pos", "patch_pos"),
    ("inner_pos", "pixel_pos"),
    ("patch_embed", "pixel_embed"),
    ("proj_norm1", "norm1_proj"),
    ("proj_norm2", "norm2_proj"),
    ("inner_norm1", "norm_in"),
    ("inner_attn", "attn_in"),
    ("inner_norm2", "norm_mlp_in"),
    ("inner_mlp", "mlp_in"),
    ("outer_norm1", "norm_out"),
    ("outer_attn", "attn_out"),
    ("outer_norm2", "norm_mlp"),
    ("outer_mlp", "mlp"),
)
_POS_EMBEDS = ("patch_pos", "pos_embed")  # (1, 1 + grid * grid, dim), class token first


def load_checkpoint_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a `.safetensors` or PyTorch (`.pth`, `.pth.tar`, `.bin`) checkpoint as numpy arrays.

    PyTorch files are read with `torch.load(weights_only=True)` (torch is imported only here);
    a checkpoint wrapping its weights in `state_dict` / `model` / `state_dict_ema` and the
    `module.` prefix of DataParallel are unwrapped.
    """
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file  # noqa: PLC0415 (optional: only timm files need them)

        return load_file(path)
    import torch  # noqa: PLC0415 (optional: only timm files need them)

    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict_ema", "state_dict", "model"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
            break
    return {k.removeprefix("module."): _to_numpy(v) for k, v in state.items()}


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; .float() also covers bfloat16
        return value.detach().cpu().float().numpy()
    return np.asarray(value, dtype=np.float32)


def _timm_names(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Numpy copies under timm's names (official TNT checkpoints are renamed)."""
    sd = {k: _to_numpy(v) for k, v in state_dict.items() if k != "outer_tokens"}
    if "patch_pos" in sd or not any(k.startswith("outer_pos") for k in sd):
        return sd
    out = {}
    for key, value in sd.items():
        for old, new in _OFFICIAL_RENAMES:
            key = key.replace(old, new)
        if key == "pixel_pos" and value.ndim == 3:  # official (1, words, C) -> (1, C, h, w)
            side = math.isqrt(value.shape[1])
            value = value.transpose(0, 2, 1).reshape(1, -1, side, side)
        out[key] = value
    return out


def _torch_key(path: tuple[str, ...]) -> str:
    parts = [p.replace("blocks_", "blocks.") if p.startswith("blocks_") else p for p in path]
    if parts[-1] in ("kernel", "scale"):
        parts[-1] = "weight"
    return ".".join(parts)


def _to_flax(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel" and value.ndim == 2:
        return value.T
    if path[-1] == "kernel" and value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    if path[-1] == "pixel_pos":
        return value.transpose(0, 2, 3, 1)
    return value


def resample_pos_embed(posemb: np.ndarray, num_tokens: int, num_prefix: int = 1) -> np.ndarray:
    """timm's `resample_abs_pos_embed` for square grids: keep the prefix (class) tokens,
    resize the grid bicubically with antialiasing to hold `num_tokens - num_prefix` tokens."""
    old = math.isqrt(posemb.shape[1] - num_prefix)
    new = math.isqrt(num_tokens - num_prefix)
    prefix, grid = posemb[:, :num_prefix], posemb[:, num_prefix:]
    dim = grid.shape[-1]
    grid = jax.image.resize(
        jnp.asarray(grid.reshape(1, old, old, dim), jnp.float32),
        (1, new, new, dim),
        method="bicubic",
        antialias=True,
    )
    return np.concatenate([prefix, np.asarray(grid).reshape(1, new * new, dim)], axis=1)


def timm_to_flax(
    state_dict: Mapping[str, Any],
    model_name: str,
    num_classes: int | None = None,
    img_size: int | None = None,
    seed: int = 0,
) -> PyTree:
    """Convert a timm / official TNT state_dict to `create_model(model_name, ...)`'s params.

    `num_classes` None keeps the checkpoint's head; another count gets a fresh head.
    `img_size` None keeps the model's default resolution; another one resamples the position
    embedding. Parameters the checkpoint cannot provide (a fresh head, Nested-TNT's mixers) are
    initialised from `seed`. Returns the `params` collection in the loop layout. Raises
    ValueError listing missing / unexpected keys and shape mismatches when the checkpoint
    belongs to another model.
    """
    sd = _timm_names(state_dict)
    ckpt_classes = sd["head.weight"].shape[0] if "head.weight" in sd else None
    classes = num_classes if num_classes is not None else (ckpt_classes or 1000)
    model = create_model(model_name, num_classes=classes, img_size=img_size)
    images = jnp.zeros((1, model.img_size, model.img_size, 3), jnp.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(seed), images))["params"]

    converted, fresh, missing, mismatched = {}, [], [], []
    used = set()
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        path = tuple(k.key for k in key_path)
        key = _torch_key(path)
        if "mixer" in path:
            fresh.append(path)
            continue
        if key not in sd:
            missing.append(key)
            continue
        used.add(key)
        value = _to_flax(path, sd[key])
        if value.shape != leaf.shape and path[0] in _POS_EMBEDS and value.ndim == 3:
            value = resample_pos_embed(value, leaf.shape[1])
        if value.shape != leaf.shape and path[0] == "head" and num_classes is not None:
            fresh.append(path)
            continue
        if value.shape != leaf.shape:
            mismatched.append(f"{key} {value.shape} vs model {tuple(leaf.shape)}")
            continue
        converted[path] = value.astype(np.float32)

    unexpected = sorted(set(sd) - used)
    if missing or unexpected or mismatched:
        raise ValueError(
            f"This checkpoint does not fit model {model_name!r}: "
            f"{_brief('missing', missing)}{_brief('unexpected', unexpected)}"
            f"{_brief('shape mismatches (Flax layout)', mismatched)}"
            "Pass the model name the checkpoint was trained as (see "
            "nested_tnt_jax.models.list_models()), and num_classes / img_size to adapt its "
            "head and position embedding."
        )

    init = jax.jit(model.init)(jax.random.key(seed), images)["params"] if fresh else None

    def pick(key_path, _leaf):
        path = tuple(k.key for k in key_path)
        return jnp.asarray(converted[path]) if path in converted else _lookup(init, path)

    return jax.tree_util.tree_map_with_path(pick, shapes)


def _lookup(tree: PyTree, path: tuple[str, ...]) -> jax.Array:
    for key in path:
        tree = tree[key]
    return tree


def _brief(label: str, items: list[str], limit: int = 5) -> str:
    if not items:
        return ""
    more = f", ... ({len(items)} in all)" if len(items) > limit else ""
    return f"{label}: {', '.join(items[:limit])}{more}; "
