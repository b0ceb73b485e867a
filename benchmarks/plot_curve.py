"""Plots a run's accuracy by step from its `history.jsonl` (validation points, final test).

  python benchmarks/plot_curve.py runs/c10_cpu docs/cifar10_cpu_curve.png
"""

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from nested_tnt_jax.metrics import RESULTS_FILE, read_history  # noqa: E402


def plot(workdir: str, out: str) -> None:
    """Writes the accuracy-by-step figure of the run in `workdir` to `out`."""
    history = read_history(workdir)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for split, style in (("eval", "o-"), ("test", "*")):
        points = [h for h in history if h["split"] == split]
        if points:
            ax.plot([p["step"] for p in points], [100 * p["top1"] for p in points], style,
                    markersize=10 if split == "test" else 4,
                    label=f"{'validation' if split == 'eval' else 'test'} "
                          f"({int(points[-1]['examples']):,} images)")
    title = os.path.basename(os.path.normpath(workdir))
    results_path = os.path.join(workdir, RESULTS_FILE)
    if os.path.exists(results_path):
        with open(results_path, encoding="utf-8") as f:
            r = json.load(f)
        title = (f"{r['model']} on {r['dataset']}: test top-1 {100 * r['test_top1']:.1f}% "
                 f"in {r['wall_time_s'] / 60:.1f} min")
    ax.set_xlabel("step")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("out")
    args = parser.parse_args()
    plot(args.workdir, args.out)


if __name__ == "__main__":
    main()
