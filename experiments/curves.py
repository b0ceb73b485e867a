"""Training curves from `history.jsonl`: one run's loss and accuracy, or groups of runs.

  python -m experiments.curves runs/c10_cpu docs/cifar10_cpu_curve.png

One run: training loss (the `train` rows, logged every `log_every_steps`) and validation
accuracy (the `eval` rows) against steps, with the final test accuracy as a star. Groups (the
nesting study's `curves.png`): validation accuracy per group, the mean over its runs with a
min-max band, at the steps every run of the group has.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from nested_tnt_jax import paths
from nested_tnt_jax.metrics import RESULTS_FILE, read_history


def plot_run(workdir: str, out: str) -> dict[str, int]:
    """Writes the loss and accuracy curves of the run in `workdir` to `out` (a PNG); returns
    the number of rows drawn per split ("train", "eval", "test")."""
    history = read_history(workdir)
    rows = {
        split: [h for h in history if h["split"] == split] for split in ("train", "eval", "test")
    }
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    if rows["train"]:
        loss_ax.plot(
            [h["step"] for h in rows["train"]],
            [h["loss"] for h in rows["train"]],
            "-",
            lw=1,
            label="training loss (mean over each logging interval)",
        )
    if rows["eval"]:
        loss_ax.plot(
            [h["step"] for h in rows["eval"]],
            [h["loss"] for h in rows["eval"]],
            "o-",
            markersize=3,
            label="validation loss",
        )
    for split, style, name in (
        ("train", "-", "training batches"),
        ("eval", "o-", "validation"),
        ("test", "*", "test"),
    ):
        points = rows[split]
        key = "accuracy" if split == "train" else "top1"
        if points:
            count = f" ({int(points[-1]['examples']):,} images)" if "examples" in points[-1] else ""
            acc_ax.plot(
                [p["step"] for p in points],
                [100 * p[key] for p in points],
                style,
                lw=1,
                markersize=10 if split == "test" else 3,
                label=name + count,
            )
    title = os.path.basename(os.path.normpath(workdir))
    results_path = paths.resolve(workdir) / RESULTS_FILE
    if results_path.exists():
        r = json.loads(results_path.read_text(encoding="utf-8"))
        title = (
            f"{r['model']} on {r['dataset']}: test top-1 {100 * r['test_top1']:.1f}% "
            f"in {r['wall_time_s'] / 60:.1f} min"
        )
    loss_ax.set_ylabel("cross-entropy loss")
    acc_ax.set_ylabel("top-1 accuracy (%)")
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return {split: len(points) for split, points in rows.items()}


def plot_groups(groups: Mapping[str, Sequence[Sequence[Mapping]]], out, title: str = "") -> None:
    """Validation top-1 by step per group of runs (each a list of history rows): the mean
    over the group's runs as a line, their min-max as a band."""
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for label, runs in groups.items():
        curves = [
            {h["step"]: 100 * h["top1"] for h in rows if h["split"] == "eval"} for rows in runs
        ]
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        values = np.array([[c[s] for s in steps] for c in curves])
        (line,) = ax.plot(
            steps,
            values.mean(axis=0),
            "-",
            lw=1.5,
            label=f"{label} ({len(runs)} run{'s' * (len(runs) > 1)})",
        )
        ax.fill_between(
            steps, values.min(axis=0), values.max(axis=0), alpha=0.2, color=line.get_color()
        )
    ax.set_xlabel("training step")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", help="a run's workdir (holds history.jsonl)")
    parser.add_argument("out", help="the PNG to write")
    args = parser.parse_args(argv)
    drawn = plot_run(args.workdir, args.out)
    test = " and the final test" if drawn["test"] else ""
    print(
        f"Wrote {args.out}: the training loss and accuracy of {args.workdir} by step "
        f"({drawn['train']} training rows, {drawn['eval']} validation"
        f"{'s' * (drawn['eval'] != 1)}{test})."
    )


if __name__ == "__main__":
    main()
