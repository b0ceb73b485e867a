"""Attention maps and head-logit correlations of a model on one image, as PNGs.

`python -m nested_tnt_jax.visualize --workdir=DIR --image=PATH --out=DIR_OUT` writes, for the
run's latest checkpoint (eval mode, so no logit noise):
  outer_attention.png      class token -> patch grid, one panel per (layer, head)
  inner_attention.png      within each patch, attention to each word (mean over query words,
                           or one chosen word with --query_word), tiled over the patch grid
  correlation_<chain>.png  Pearson correlation of head logits between adjacent layers l, l+1
                           of each attention chain, a heads x heads matrix per layer pair

The logits are those fed to softmax (after nesting), read from the "intermediates" that
`Attention` sows. The correlations show what nested attention is for: how much each head of
layer l+1 re-uses the logits of layer l's heads. `render(model, params, images, out)` does the
same for any params and model.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (the backend must be chosen first)
import numpy as np  # noqa: E402

from nested_tnt_jax import models, predict  # noqa: E402
from nested_tnt_jax.models.layers import word_grid  # noqa: E402

# Attention module name -> chain. TNT has an inner (words) and an outer (sentences) chain; ViT's
# single `attn` is over patches with a class token, like TNT's outer one.
CHAINS = {"attn_out": "outer", "attn": "outer", "attn_in": "inner"}


@functools.partial(jax.jit, static_argnames="model")
def _sown(model: nn.Module, params: Any, images: jax.Array) -> Any:
    """The "intermediates" of an eval-mode forward pass (compiled once per model and shape)."""
    _, state = model.apply({"params": params}, images, train=False, mutable=["intermediates"])
    return state["intermediates"]


def attention_logits(
    model: nn.Module, params: Any, images: jax.Array
) -> dict[str, list[np.ndarray]]:
    """Pre-softmax attention logits per chain, one (batch, heads, queries, keys) array per layer.

    Runs the model in eval mode with the blocks unrolled (scan layout params are converted), so
    every layer's logits are sown separately. Inner logits have batch B * patches.
    """
    if getattr(model, "scan_blocks", False) or getattr(model, "remat", False):
        model = model.clone(scan_blocks=False, remat=False)
        params = models.params_to_loop(flax.core.unfreeze(params))
    found: dict[str, dict[int, np.ndarray]] = {}
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(_sown(model, params, images)))
    for path, (logits,) in flat.items():
        block, module = path[-3], path[-2]
        found.setdefault(CHAINS[module], {})[int(re.fullmatch(r"blocks_(\d+)", block)[1])] = (
            np.asarray(logits, np.float32))
    return {chain: [layers[i] for i in sorted(layers)] for chain, layers in found.items()}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Attention weights from logits, over the last (key) axis, as the model computes them."""
    return np.asarray(jax.nn.softmax(logits, axis=-1))


def class_token_maps(layers: Sequence[np.ndarray], grid: int, index: int = 0) -> np.ndarray:
    """(layers, heads, grid, grid): attention of the class token over the patches of image
    `index` (the class token's weight on itself is left out, so maps need not sum to 1)."""
    return np.stack([softmax(l[index])[:, 0, 1:].reshape(-1, grid, grid) for l in layers])


def word_maps(layers: Sequence[np.ndarray], grid: int, words: int, index: int = 0,
              query: int | None = None) -> np.ndarray:
    """(layers, heads, grid * words, grid * words): inner attention of image `index`.

    Each patch's tile shows the attention to its words, from word `query` or (None) averaged
    over all query words, placed where the patch and word lie in the image.
    """
    n = grid * grid
    if query is not None and not 0 <= query < words * words:
        raise ValueError(f"query word {query} does not exist: a patch has {words * words} words "
                         f"({words}x{words}, numbered row-major from 0); pick one in range.")
    maps = []
    for logits in layers:
        attn = softmax(logits[index * n:(index + 1) * n])  # (patches, heads, words, words)
        attn = attn.mean(axis=2) if query is None else attn[:, :, query]
        heads = attn.shape[1]
        tiles = attn.reshape(grid, grid, heads, words, words).transpose(2, 0, 3, 1, 4)
        maps.append(tiles.reshape(heads, grid * words, grid * words))
    return np.stack(maps)


def head_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(heads_a, heads_b) Pearson correlation of two layers' logits (batch, heads, q, k),
    each head's logits taken as one vector over batch, queries and keys."""
    x = np.moveaxis(a, 1, 0).reshape(a.shape[1], -1).astype(np.float64)
    y = np.moveaxis(b, 1, 0).reshape(b.shape[1], -1).astype(np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    norms = np.outer(np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1))
    return (x @ y.T) / np.maximum(norms, np.finfo(np.float64).tiny)


def adjacent_correlations(layers: Sequence[np.ndarray]) -> list[np.ndarray]:
    """`head_correlation(layer l, layer l + 1)` for every adjacent pair of a chain."""
    return [head_correlation(a, b) for a, b in zip(layers[:-1], layers[1:])]


def _panel_grid(rows: int, cols: int, size: float = 1.8):
    width = max(4.0, size * cols + 0.8)  # room for the title when there are few panels
    return plt.subplots(rows, cols, figsize=(width, size * rows + 0.5), squeeze=False,
                        layout="constrained")


def plot_maps(maps: np.ndarray, title: str, path: str) -> int:
    """Saves a (layers, heads, h, w) stack as one panel per (layer, head); returns the count."""
    layers, heads = maps.shape[:2]
    fig, axes = _panel_grid(layers, heads)
    for l in range(layers):
        for h in range(heads):
            ax = axes[l, h]
            ax.imshow(maps[l, h], cmap="viridis", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"layer {l} head {h}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return layers * heads


def plot_correlations(matrices: Sequence[np.ndarray], chain: str, path: str) -> int:
    """Saves one heads x heads heatmap (colour scale -1..1) per adjacent layer pair."""
    fig, axes = _panel_grid(1, len(matrices), size=2.4)
    for l, (ax, m) in enumerate(zip(axes[0], matrices)):
        image = ax.imshow(m, cmap="RdBu_r", vmin=-1.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"layer {l} -> {l + 1}", fontsize=8)
        ax.set_xlabel(f"head (layer {l + 1})", fontsize=7)
        ax.set_ylabel(f"head (layer {l})", fontsize=7)
        ax.set_xticks(range(m.shape[1]))
        ax.set_yticks(range(m.shape[0]))
        ax.tick_params(labelsize=6)
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8)
    fig.suptitle(f"{chain} chain: head-logit correlation", fontsize=9)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return len(matrices)


def render(model: nn.Module, params: Any, images: jax.Array, out_dir: str,
           query: int | None = None) -> dict[str, int]:
    """Writes the PNGs for the first of `images` (normalised, at the model's size) to `out_dir`.

    Returns {png path: number of panels}. The correlations use every image given. Layer pairs
    need depth >= 2; the inner-attention figure is TNT-only.
    """
    os.makedirs(out_dir, exist_ok=True)
    chains = attention_logits(model, params, images)
    grid = model.img_size // model.patch_size
    written = {}
    path = os.path.join(out_dir, "outer_attention.png")
    written[path] = plot_maps(class_token_maps(chains["outer"], grid), (
        "class token attention over patches"), path)
    if "inner" in chains:
        words = word_grid(model.patch_size, model.word_kernel, model.word_stride)
        which = "mean over query words" if query is None else f"from word {query}"
        path = os.path.join(out_dir, "inner_attention.png")
        written[path] = plot_maps(word_maps(chains["inner"], grid, words, query=query),
                                  f"attention within each patch ({which})", path)
    for chain, layers in sorted(chains.items()):
        if len(layers) > 1:
            path = os.path.join(out_dir, f"correlation_{chain}.png")
            written[path] = plot_correlations(adjacent_correlations(layers), chain, path)
    return written


def visualize(workdir: str, image_path: str, out_dir: str,
              query: int | None = None) -> dict[str, int]:
    """`render` for the run in `workdir` on the image file `image_path`, seen as in eval."""
    run = predict.load_run(workdir)
    images = predict.model_inputs(predict.load_image(image_path, run)[None], run)
    return render(run.model, run.params, images, out_dir, query)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI; prints each PNG written. Exit 2 for an unusable workdir or image."""
    parser = argparse.ArgumentParser(
        prog="python -m nested_tnt_jax.visualize",
        description="Per-head attention maps and adjacent-layer head-logit correlations.")
    parser.add_argument("--workdir", required=True, help="the training run's workdir")
    parser.add_argument("--image", required=True, help="an image file")
    parser.add_argument("--out", required=True, help="directory for the PNGs")
    parser.add_argument("--query_word", type=int, default=None,
                        help="inner attention from this word (row-major) instead of the mean")
    args = parser.parse_args(argv)
    try:
        written = visualize(args.workdir, args.image, args.out, args.query_word)
    except (predict.RunError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, panels in written.items():
        print(f"{path} ({panels} panels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
