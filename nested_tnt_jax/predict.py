"""Classify image files with a trained run: `python -m nested_tnt_jax.predict --workdir=DIR IMG...`.

The run is read back by `runs.load_run` (model, newest checkpoint, class names), and each file
is seen as the run's evaluation sees a test image (`Run.view`, `Run.inputs`). Every file is
tried on its own: an unreadable or non-image file gets a one-paragraph error on stderr and the
others are still classified. A picture far smaller than the view the model sees (its shorter
side under `FAR_SMALLER` of it, e.g. a 1x1 image upscaled to 32 px) is classified with a note
saying so. The CLI prints the checkpoint step it used; it exits 1 when any file failed, 2 when
the run cannot be used (`cli.explained`). Its terminal is `cli.setup_logging`'s: at the
default verbosity, none of the libraries' routine lines (orbax's note that it opens the run's
checkpoints read-only); `-v 1` shows them.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from nested_tnt_jax import cli, errors, runs, xla_options

TOP_K = 5
# A picture whose shorter side is below this fraction of the model's view is noted as upscaled.
FAR_SMALLER = 0.5


@functools.partial(xla_options.step_jit, static_argnames="model")
def probabilities(model: nn.Module, params: Any, inputs: jax.Array) -> jax.Array:
    """Eval-mode class probabilities; compiled once per (model, batch shape) per process."""
    return jax.nn.softmax(model.apply({"params": params}, inputs, train=False), axis=-1)


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One file's result: `top` is (label, probability) most likely first, or `error` is set;
    `note` says when the picture was far smaller than the model's view."""

    path: str
    top: list[tuple[str, float]]
    error: str | None = None
    note: str | None = None


def size_note(height: int, width: int, view: int) -> str | None:
    """`note: ...` when a `width` x `height` picture is far smaller than the model's `view` px
    square (`FAR_SMALLER`), else None."""
    if min(height, width) >= FAR_SMALLER * view:
        return None
    return (
        f"note: the image is {width}x{height} px, far smaller than the {view}x{view} px the "
        f"model sees; it was upscaled {view / min(height, width):.3g}x, so these classes "
        "say little about it"
    )


def classify(run: runs.Run, paths: Sequence[str], top_k: int = TOP_K) -> list[Prediction]:
    """Top-`top_k` predictions for each file, in order; bad files get an error entry."""
    views, failed, notes = {}, {}, {}
    for i, path in enumerate(paths):
        try:
            picture = runs.read_rgb(path)
        except errors.ConfigError as e:
            failed[i] = str(e)
            continue
        views[i] = run.view_of(picture)
        notes[i] = size_note(*picture.shape[:2], run.host_size)
    probs = np.zeros((0, run.info.num_classes), np.float32)
    if views:
        inputs = run.inputs(np.stack(list(views.values())))
        probs = np.asarray(probabilities(run.model, run.params, inputs))
    rows = dict(zip(views, probs))
    k = min(top_k, run.info.num_classes)
    results = []
    for i, path in enumerate(paths):
        if i in failed:
            results.append(Prediction(path, [], failed[i]))
            continue
        order = np.argsort(-rows[i], kind="stable")[:k]
        results.append(
            Prediction(path, [(run.labels[c], float(rows[i][c])) for c in order], note=notes[i])
        )
    return results


def predict(workdir: str, paths: Sequence[str], top_k: int = TOP_K) -> list[Prediction]:
    """Top-`top_k` (label, probability) for each image file with the run in `workdir`."""
    return classify(runs.load_run(workdir), paths, top_k)


def format_prediction(prediction: Prediction) -> str:
    """One block of text per classified file: its path, its note if any, the ranked labels."""
    width = max(len(label) for label, _ in prediction.top)
    lines = [
        f"  {rank}. {label:<{width}}  {p:.4f}"
        for rank, (label, p) in enumerate(prediction.top, start=1)
    ]
    note = [f"  ({prediction.note})"] if prediction.note else []
    return "\n".join([prediction.path, *note, *lines])


def main(argv: Sequence[str] | None = None) -> int:
    """CLI; returns 0 when every file was classified, 1 when any failed, 2 for a bad run."""
    parser = argparse.ArgumentParser(
        prog="python -m nested_tnt_jax.predict",
        description="Top-5 classes of image files with a trained run's latest checkpoint.",
    )
    parser.add_argument("--workdir", required=True, help="the training run's workdir")
    parser.add_argument("--top_k", type=int, default=TOP_K)
    parser.add_argument(
        "-v",
        "--verbosity",
        type=int,
        default=0,
        help="absl's verbosity: 1 also shows the libraries' log lines",
    )
    parser.add_argument("images", nargs="+", help="image files (any format Pillow reads)")
    args = parser.parse_args(argv)
    cli.setup_logging(args.verbosity)
    if args.top_k < 1:
        cli.fail(f"--top_k={args.top_k}: give a positive number of classes to list.")
    with cli.explained():
        run = runs.load_run(args.workdir)
    print(f"{run.workdir}: {run.model_name}, checkpoint at step {run.step}\n")
    results = classify(run, args.images, args.top_k)
    classified = [format_prediction(r) for r in results if r.error is None]
    if classified:
        print("\n\n".join(classified))
    for result in results:
        if result.error is not None:
            print(cli.paragraph(result.error), file=sys.stderr)
    return 1 if any(r.error is not None for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
