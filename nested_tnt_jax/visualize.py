"""Attention pictures of a trained model on one image, as PNGs.

`python -m nested_tnt_jax.visualize --workdir=DIR --image=PATH --out=DIR_OUT` runs the run's
newest checkpoint on the image in evaluation mode (so without logit noise) and writes:
  outer_attention.png      the class token's attention over the image patches, per layer and
                           head, drawn over the image at patch resolution (TNT: the outer
                           attention between sentences; ViT and Nested-ViT: their attention)
  inner_attention.png      TNT only: the inner attention between the words of each patch,
                           each patch's word weights drawn inside that patch's square (mean
                           over the query words, or from one word with --query_word)
  correlation_<chain>.png  Pearson correlation of the heads' attention logits between
                           adjacent layers l, l + 1 of each attention chain (outer, inner):
                           how much each head of layer l + 1 re-uses layer l's logits, which
                           nested attention carries forward
The maps of one figure share one colour scale (a colorbar below them) and sit beside the input
image as the model sees it. Attention is drawn as its ratio to the weight of evenly spread
attention, on a log scale centred at 1 that spans at least 1/2..2: red above even, blue below,
fading to clear at 1, so the image shows through where attention is near even and a
near-uniform map looks near-uniform. `--layers` / `--heads` pick rows and columns for large models.
The logits are those fed to softmax (after nesting), read from the "intermediates" that
`Attention` sows. At its default verbosity the program prints no library warnings; `-v 1`
shows them. `render(model, params, inputs, picture, out_dir)` does the same for any
params and model.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from nested_tnt_jax import cli, errors, models, runs, xla_options

# Colour maps: attention over even attention (a ratio, log scale) and correlations (-1..1).
RATIO_CMAP = "RdBu_r"
CORRELATION_CMAP = "RdBu_r"
# The ratio's colour scale spans at least 1/MIN_RATIO_SPAN..MIN_RATIO_SPAN, at most
# 1/MAX_RATIO_SPAN..MAX_RATIO_SPAN (beyond it, the colorbar's arrows).
MIN_RATIO_SPAN = 2.0
MAX_RATIO_SPAN = 16.0
# Opacity of the ratio's colours at the ends of its scale, over the image in grey; it falls
# linearly (in log ratio) to 0 at 1.
OVERLAY_ALPHA = 0.7
# Correlation panels per row.
PAIRS_PER_ROW = 6


@functools.partial(xla_options.step_jit, static_argnames="model")
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
    chains = models.family_of(model).chains  # attention submodule -> its chain
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(_sown(model, params, images)))
    for path, (logits,) in flat.items():
        block, module = path[-3], path[-2]
        found.setdefault(chains[module], {})[int(re.fullmatch(r"blocks_(\d+)", block)[1])] = (
            np.asarray(logits, np.float32)
        )
    return {chain: [layers[i] for i in sorted(layers)] for chain, layers in found.items()}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Attention weights from logits, over the last (key) axis, as the model computes them."""
    return np.asarray(jax.nn.softmax(logits, axis=-1))


def class_token_maps(layers: Sequence[np.ndarray], grid: int, index: int = 0) -> np.ndarray:
    """(layers, heads, grid, grid): attention of the class token over the patches of image
    `index` (the class token's weight on itself is left out, so maps need not sum to 1)."""
    return np.stack([softmax(layer[index])[:, 0, 1:].reshape(-1, grid, grid) for layer in layers])


def word_maps(
    layers: Sequence[np.ndarray], grid: int, words: int, index: int = 0, query: int | None = None
) -> np.ndarray:
    """(layers, heads, grid * words, grid * words): inner attention of image `index`.

    Each patch's tile shows the attention to its words, from word `query` (0-based, row-major)
    or (None) averaged over all query words, placed where the patch and word lie in the image.
    """
    n = grid * grid
    check_query(query, words)
    maps = []
    for logits in layers:
        attn = softmax(logits[index * n : (index + 1) * n])  # (patches, heads, words, words)
        attn = attn.mean(axis=2) if query is None else attn[:, :, query]
        heads = attn.shape[1]
        tiles = attn.reshape(grid, grid, heads, words, words).transpose(2, 0, 3, 1, 4)
        maps.append(tiles.reshape(heads, grid * words, grid * words))
    return np.stack(maps)


def check_query(query: int | None, words: int) -> None:
    """Refuses a query word (0-based) that a patch of `words` x `words` words does not have."""
    if query is not None and not 0 <= query < words * words:
        raise errors.ConfigError(
            f"query word {query + 1} does not exist: a patch has {words * words} words "
            f"({words}x{words}, numbered row by row from 1); pick one in 1..{words * words}."
        )


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


def parse_selection(spec: str | None, count: int, what: str) -> list[int] | None:
    """`"1,3,5-8"` (1-based, as the figures number layers and heads) -> 0-based indices.

    None or "" selects all (None is returned). Raises ConfigError naming `what` and its range.
    """
    if not spec:
        return None
    chosen: list[int] = []
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        first, last = (int(match[1]), int(match[2] or match[1])) if match else (0, -1)
        if not match or not 1 <= first <= last <= count:
            raise errors.ConfigError(
                f"--{what}={spec!r} does not select {what} of this model: it has {count} "
                f"{what}, numbered 1..{count}; give numbers or ranges in that span, comma "
                f"separated, e.g. --{what}=1,{count} or --{what}=1-{min(count, 3)}."
            )
        chosen.extend(i - 1 for i in range(first, last + 1) if i - 1 not in chosen)
    return chosen


def _heads_of(model: nn.Module) -> dict[str, int]:
    """Heads per chain, as the model's family declares them."""
    return models.family_of(model).heads(model)


def _chain_words(model: nn.Module, chain: str) -> str:
    """How the figures name a chain, in the words of the papers (the family's own)."""
    return models.family_of(model).chain_words[chain]


def _title(fig, text: str, width_in: float) -> None:
    """A figure title wrapped to the figure's width (about 15 characters per inch at 9 pt)."""
    lines = [textwrap.fill(line, max(40, int(width_in * 15))) for line in text.split("\n")]
    fig.suptitle("\n".join(lines), fontsize=9)


def _image_panel(ax, picture: np.ndarray) -> None:
    ax.imshow(picture, interpolation="nearest")
    ax.set_title(
        f"input as the model sees it\n({picture.shape[1]}x{picture.shape[0]} px)", fontsize=8
    )
    ax.set_xticks([])
    ax.set_yticks([])


def ratio_colormap() -> matplotlib.colors.Colormap:
    """`RATIO_CMAP` fading to clear at its centre (a ratio of 1) and to `OVERLAY_ALPHA` at its
    ends: laid over the image, it hides the image only where attention is far from even."""
    colours = plt.get_cmap(RATIO_CMAP)(np.linspace(0.0, 1.0, 256))
    colours[:, 3] = OVERLAY_ALPHA * np.abs(np.linspace(-1.0, 1.0, 256))
    return matplotlib.colors.ListedColormap(colours, name="ratio_over_image")


def ratio_span(ratios: np.ndarray) -> float:
    """s of the ratios' colour scale 1/s..s: the farthest ratio from 1 either way, within
    `MIN_RATIO_SPAN`..`MAX_RATIO_SPAN`."""
    farthest = max(float(ratios.max()), 1.0 / max(float(ratios.min()), 1.0 / MAX_RATIO_SPAN))
    return min(max(farthest, MIN_RATIO_SPAN), MAX_RATIO_SPAN)


def _ratio_ticks(span: float) -> tuple[list[float], list[str]]:
    """Powers of 2 within 1/span..span (every other one past 1/4..4), labelled 1/4, 1/2, 1, 2."""
    top = int(np.floor(np.log2(span) + 1e-9))
    step = 1 if top <= 2 else 2
    powers = [p for p in range(-top, top + 1) if p % step == 0]
    return ([2.0**p for p in powers], [f"{2**p}" if p >= 0 else f"1/{2**-p}" for p in powers])


def overlay_figure(
    picture: np.ndarray,
    maps: np.ndarray,
    layers: Sequence[int],
    heads: Sequence[int],
    title: str,
    uniform: float,
    borders: int | None = None,
) -> matplotlib.figure.Figure:
    """The figure of `plot_overlays` (see there)."""
    rows, cols = maps.shape[:2]
    height, width = picture.shape[:2]
    size = 1.7
    width_in = size * (cols + 1) + 1.2
    fig, axes = plt.subplots(
        rows, cols + 1, figsize=(width_in, size * rows + 2.0), squeeze=False, layout="constrained"
    )
    _image_panel(axes[0, 0], picture)
    for ax in axes[1:, 0]:
        ax.axis("off")
    grey = picture @ np.array([0.299, 0.587, 0.114])
    ratios = np.maximum(maps / uniform, np.finfo(np.float32).tiny)
    span = ratio_span(ratios)
    norm = matplotlib.colors.LogNorm(vmin=1.0 / span, vmax=span, clip=False)
    cmap = ratio_colormap()
    for r, layer in enumerate(layers):
        for c, head in enumerate(heads):
            ax = axes[r, c + 1]
            ax.imshow(grey, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            shown = ax.imshow(
                ratios[r, c],
                cmap=cmap,
                norm=norm,
                interpolation="nearest",
                extent=(-0.5, width - 0.5, height - 0.5, -0.5),
            )
            if borders:
                for x in range(borders, width, borders):
                    ax.axvline(x - 0.5, color="white", linewidth=0.6)
                for y in range(borders, height, borders):
                    ax.axhline(y - 0.5, color="white", linewidth=0.6)
            ax.set_xlim(-0.5, width - 0.5)
            ax.set_ylim(height - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"head {head + 1}", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"layer {layer + 1}", fontsize=8)
    extend = {
        (False, False): "neither",
        (True, False): "min",
        (False, True): "max",
        (True, True): "both",
    }[(float(ratios.min()) < 1.0 / span, float(ratios.max()) > span)]
    bar = fig.colorbar(
        shown, ax=list(axes[:, 1:].ravel()), location="bottom", shrink=0.9, aspect=30, extend=extend
    )
    ticks, labels = _ratio_ticks(span)
    bar.set_ticks(ticks, labels=labels)
    bar.ax.minorticks_off()
    bar.ax.tick_params(labelsize=7)
    bar.set_label(f"weight / even weight\n(1: every weight 1/{round(1 / uniform)})", fontsize=8)
    _title(fig, title, width_in)
    return fig


def plot_overlays(
    picture: np.ndarray,
    maps: np.ndarray,
    layers: Sequence[int],
    heads: Sequence[int],
    title: str,
    path: str,
    uniform: float,
    borders: int | None = None,
) -> int:
    """Saves `maps` (rows, cols, h, w) of attention weights laid over `picture` (H, W, 3 in
    [0, 1], drawn in grey), one panel per (layer, head), the input image first. Each weight is
    drawn as its ratio to `uniform` (the weight of attention spread evenly) in
    `ratio_colormap`, on one log scale for the figure centred at 1 (`ratio_span`), with its
    colorbar below the maps.

    `layers` / `heads` are the 0-based indices the rows / columns show (titled from 1);
    `borders` draws patch borders every that many pixels. Returns the number of maps.
    """
    fig = overlay_figure(picture, maps, layers, heads, title, uniform, borders)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return maps.shape[0] * maps.shape[1]


def plot_correlations(
    matrices: Sequence[np.ndarray], layers: Sequence[int], title: str, path: str
) -> int:
    """Saves one heads x heads heatmap (colour scale -1..1) per adjacent layer pair
    (`layers[i]` -> `layers[i] + 1`, 0-based, titled from 1); returns the number of pairs."""
    fig = correlation_figure(matrices, layers, title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return len(matrices)


def correlation_figure(
    matrices: Sequence[np.ndarray], layers: Sequence[int], title: str
) -> matplotlib.figure.Figure:
    """The figure of `plot_correlations` (see there)."""
    cols = min(len(matrices), PAIRS_PER_ROW)
    rows = -(-len(matrices) // cols)
    size = 2.3
    width_in = max(4.5, size * cols + 1.0)
    fig, axes = plt.subplots(
        rows, cols, figsize=(width_in, size * rows + 1.2), squeeze=False, layout="constrained"
    )
    for ax in axes.ravel()[len(matrices) :]:
        ax.axis("off")
    for ax, layer, m in zip(axes.ravel(), layers, matrices):
        shown = ax.imshow(m, cmap=CORRELATION_CMAP, vmin=-1.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"layer {layer + 1} -> {layer + 2}", fontsize=8)
        ax.set_xlabel(f"head of layer {layer + 2}", fontsize=7)
        ax.set_ylabel(f"head of layer {layer + 1}", fontsize=7)
        ax.set_xticks(range(m.shape[1]), range(1, m.shape[1] + 1))
        ax.set_yticks(range(m.shape[0]), range(1, m.shape[0] + 1))
        ax.tick_params(labelsize=6)
    fig.colorbar(shown, ax=list(axes.ravel()), shrink=0.8, label="Pearson correlation")
    _title(fig, title, width_in)
    return fig


# How the overlay figures' titles read their colours.
_KEY = "\nred: more than even, blue: less, clear: even (the image shows through)"


def render(
    model: nn.Module,
    params: Any,
    inputs: jax.Array,
    picture: np.ndarray,
    out_dir: str,
    *,
    query: int | None = None,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    caption: str = "",
) -> dict[str, int]:
    """Writes the PNGs for the first of `inputs` (normalised, at the model's size) to `out_dir`.

    `picture` is that image in [0, 1] RGB for display; `layers` / `heads` (0-based; None: all)
    select the maps shown, `query` (0-based) the query word of the inner maps (None: their
    mean); `caption` is added to each title (e.g. the run and step). Returns {png path: number
    of panels}. The correlations use every image given; they need depth >= 2; the inner
    figure is TNT's alone.
    """
    depth = model.depth
    layers = list(range(depth)) if layers is None else list(layers)
    heads_per_chain = _heads_of(model)
    if "inner" in heads_per_chain:
        words = models.family_of(model).word_grid(model)
        check_query(query, words)
    chosen = {}
    for chain, count in heads_per_chain.items():
        chosen[chain] = list(range(count)) if heads is None else [h for h in heads if h < count]
        if not chosen[chain]:
            raise errors.ConfigError(
                f"--heads selects none of the {count} heads of the {_chain_words(model, chain)}"
                f"; pick heads in 1..{count} too."
            )
    os.makedirs(out_dir, exist_ok=True)
    chains = attention_logits(model, params, inputs)
    grid = model.img_size // model.patch_size
    suffix = f"\n{caption}" if caption else ""
    written = {}

    def pick(maps: np.ndarray, chain: str) -> np.ndarray:
        return maps[np.ix_(layers, chosen[chain])]

    path = os.path.join(out_dir, "outer_attention.png")
    written[path] = plot_overlays(
        picture,
        pick(class_token_maps(chains["outer"], grid), "outer"),
        layers,
        chosen["outer"],
        f"Class-token {_chain_words(model, 'outer')}: the weight the class "
        f"token gives each patch, per layer and head, against even attention{_KEY}{suffix}",
        path,
        uniform=1.0 / (grid * grid + 1),
    )
    if "inner" in chains:
        which = (
            "mean over its query words" if query is None else f"from word {query + 1} of each patch"
        )
        path = os.path.join(out_dir, "inner_attention.png")
        maps = word_maps(chains["inner"], grid, words, query=query)
        written[path] = plot_overlays(
            picture,
            pick(maps, "inner"),
            layers,
            chosen["inner"],
            f"Inner attention: within each patch (white borders), the weight on each of its "
            f"{words}x{words} words ({which}), against even attention{_KEY}{suffix}",
            path,
            uniform=1.0 / words**2,
            borders=model.patch_size,
        )
    for chain, logits in sorted(chains.items()):
        pairs = [layer for layer in layers if layer + 1 < depth]
        if not pairs:
            continue
        path = os.path.join(out_dir, f"correlation_{chain}.png")
        matrices = [head_correlation(logits[i], logits[i + 1]) for i in pairs]
        written[path] = plot_correlations(
            matrices,
            pairs,
            f"{_chain_words(model, chain).capitalize()}: correlation of each "
            f"head's attention logits with each head's of the next layer{suffix}",
            path,
        )
    return written


def visualize(
    workdir: str,
    image_path: str,
    out_dir: str,
    query: int | None = None,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
) -> dict[str, int]:
    """`render` for the run in `workdir` on the image file `image_path`, seen as in eval."""
    run = runs.load_run(workdir)
    inputs = run.inputs(run.view(image_path)[None])
    caption = f"{run.model_name}, checkpoint at step {run.step}"
    return render(
        run.model,
        run.params,
        inputs,
        run.picture(inputs)[0],
        out_dir,
        query=query,
        layers=layers,
        heads=heads,
        caption=caption,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI; prints the checkpoint used and each PNG written. Exit 2 for an unusable run,
    image or selection (one paragraph on stderr, `cli.explained`; nothing written)."""
    parser = argparse.ArgumentParser(
        prog="python -m nested_tnt_jax.visualize",
        description="Attention maps over the image, per layer and head, and the head-logit "
        "correlation of adjacent layers, of a trained run on one image.",
    )
    parser.add_argument("--workdir", required=True, help="the training run's workdir")
    parser.add_argument("--image", required=True, help="an image file (any format Pillow reads)")
    parser.add_argument("--out", required=True, help="directory for the PNGs")
    parser.add_argument(
        "--layers", default="", help="layers to draw, from 1, e.g. 1,6,12 or 1-4 (default: all)"
    )
    parser.add_argument(
        "--heads", default="", help="heads to draw, from 1, e.g. 1,2 or 1-3 (default: all)"
    )
    parser.add_argument(
        "--query_word",
        type=int,
        default=None,
        help="inner attention from this word of each patch (numbered row by "
        "row from 1) instead of the mean over its words",
    )
    parser.add_argument(
        "-v",
        "--verbosity",
        type=int,
        default=0,
        help="absl's verbosity: 1 also shows the libraries' log lines",
    )
    args = parser.parse_args(argv)
    cli.setup_logging(args.verbosity)
    with cli.explained():
        run = runs.load_run(args.workdir)
        model = run.model
        layers = parse_selection(args.layers, model.depth, "layers")
        heads = parse_selection(args.heads, max(_heads_of(model).values()), "heads")
        query = None if args.query_word is None else args.query_word - 1
        inputs = run.inputs(run.view(args.image)[None])
        print(f"{run.workdir}: {run.model_name}, checkpoint at step {run.step}")
        written = render(
            model,
            run.params,
            inputs,
            run.picture(inputs)[0],
            args.out,
            query=query,
            layers=layers,
            heads=heads,
            caption=f"{run.model_name}, checkpoint at step {run.step}",
        )
    for path, panels in written.items():
        print(f"{path} ({panels} panels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
