r"""Does nesting help? The paired multi-seed CIFAR-10 study, resumable from its committed record.

ViT, TNT, Nested-TNT and Nested-ViT, 5 seeds each, and five Nested-TNT ablations, 3 seeds each,
all trained with `configs/cifar10.py:model=<family>,cpu` exactly as shipped (the quick start's
recipe: 32 px, AdamW, batch 64, 8,000 steps) on the real CIFAR-10 and tested on all 10,000 test
images. A seed fixes the initialisation and the data order and is shared across families, so
every comparison is paired by seed.

  python -m experiments.nesting_study --data-dir=../shared/tfds            # train what is missing
  python -m experiments.nesting_study --data-dir=../shared/tfds --max-runs=2
  python -m experiments.nesting_study --report-only                       # tables and plots only
  python -m experiments.nesting_study --costs                           # parameters, GFLOPs, img/s
  python -m experiments.nesting_study --reproduce=cifar10/vit/seed3         # train a row again

The record is `experiments/nesting_study/runs.csv` (one row per finished run, with the commit and
host it ran on) and `history.csv` (each run's validation curve); commit them as runs finish.
The runner skips every run already in the record, trains the rest one subprocess at a time (each
a real `python -m nested_tnt_jax.main` in `--work-root/<run>`, resumed from its checkpoint if it
was interrupted), appends the row and rebuilds `table.md`, `curves.png` and `plot.png`. It can be
stopped at any point and restarted on any machine. A change that alters the CPU trainer's
numerics invalidates the recorded runs: delete the rows and re-run.

`--reproduce=RUN` trains a recorded run again in `--work-root/reproduce/<run>` and compares its
test metrics and validation curve with the record, number for number (the trainer is
deterministic on CPU); the outcome is appended to `reproductions.csv`, with both commits and
hosts. Exit 0 when identical, 1 when not.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import pathlib
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence

from experiments import stats, sweep

STUDY_DIR = pathlib.Path(__file__).resolve().with_name("nesting_study")
DEFAULT_WORK_ROOT = sweep.REPO / "runs" / "nesting_study"
FAMILIES = ("vit", "tnt", "nested_tnt", "nested_vit")
FAMILY_SEEDS = (0, 1, 2, 3, 4)
# Nested-TNT ablations (sweep.VARIANTS): what each keeps of the nesting.
ABLATIONS = {
    "nested_tnt-no_outer": "inner chain only",
    "nested_tnt-no_inner": "outer chain only",
    "nested_tnt-no_mixer": "no mixer (logits carried and added)",
    "nested_tnt-no_noise": "no logit noise",
    "nested_tnt-noise_1": "logit noise 1.0 (CODA's) instead of 0.1",
}
ABLATION_SEEDS = (0, 1, 2)
# The comparisons made (variant minus reference, paired by seed), Holm-corrected together.
COMPARISONS = (
    ("nested_tnt", "tnt"),
    ("nested_tnt", "vit"),
    ("nested_vit", "vit"),
    *((name, "nested_tnt") for name in ABLATIONS),
)
RUN_COLUMNS = (
    "run",
    "family",
    "variant",
    "seed",
    "test_top1",
    "test_top5",
    "test_loss",
    "test_examples",
    "best_val_top1",
    "best_val_step",
    "steps",
    "num_params",
    "wall_time_s",
    "train_img_per_sec",
    "commit",
    "host",
    "finished",
)
HISTORY_COLUMNS = ("run", "step", "val_top1", "val_loss")
REPRODUCTION_COLUMNS = (
    "run",
    "identical",
    "differences",
    "recorded_commit",
    "recorded_host",
    "commit",
    "host",
    "finished",
)
COST_COLUMNS = (
    "variant",
    "model",
    "num_params",
    "gflops_per_image",
    "train_img_per_sec",
    "vs_tnt",
    "host",
    "date",
    "commit",
)


def planned_runs(data_dir: str) -> list[sweep.Run]:
    """Every run of the study, in training order: seed by seed over the families (so that
    paired comparisons fill in early), then the ablations seed by seed."""
    settings = [f"dataset.data_dir={data_dir}"]
    order = [(v, s) for s in FAMILY_SEEDS for v in FAMILIES]
    order += [(v, s) for s in ABLATION_SEEDS for v in ABLATIONS]
    return [sweep.plan(["cifar10"], [v], [s], cpu=True, settings=settings)[0] for v, s in order]


def command(run: sweep.Run, work_root: str = "runs/nesting_study") -> str:
    """The trainer command that reproduces `run`, from the repository root."""
    return shlex.join(
        [
            "python",
            "-m",
            "nested_tnt_jax.main",
            f"--config=configs/{run.config}",
            *run.flags,
            f"--workdir={work_root}/{run.name}",
        ]
    )


def read_csv(path: pathlib.Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def append_csv(path: pathlib.Path, columns: Sequence[str], rows: Sequence[Mapping]) -> None:
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def code_commit() -> str:
    """HEAD of the repository the trainer runs from, `+changes` if its code differs from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=sweep.REPO, capture_output=True, text=True, check=False
        ).stdout.strip()

    head = git("rev-parse", "--short=10", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "nested_tnt_jax", "configs")
    return head + ("+changes" if dirty else "")


def host() -> str:
    """The benchmarks' host line (CPU model, cores, vector units, jax version)."""
    from benchmarks.throughput import host_description, host_line  # noqa: PLC0415 (only this command needs it)

    return host_line(host_description())


def validation_rows(workdir: pathlib.Path) -> list[dict]:
    """The run's validation rows of history.jsonl, in step order."""
    from nested_tnt_jax.metrics import read_history  # noqa: PLC0415 (only this command needs it)

    return [h for h in read_history(str(workdir)) if h["split"] == "eval"]


def utc_minute() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")


def record_run(
    run: sweep.Run, workdir: pathlib.Path, study_dir: pathlib.Path, commit: str, host_text: str
) -> dict:
    """Appends the finished run's row to runs.csv and its validation curve to history.csv."""
    results = sweep.load_results(workdir)
    val = validation_rows(workdir)
    best = max(val, key=lambda h: h["top1"]) if val else {}
    row = {
        "run": run.name,
        "family": run.variant.family,
        "variant": run.variant.name,
        "seed": run.seed,
        **{
            k: results.get(k, "")
            for k in (
                "test_top1",
                "test_top5",
                "test_loss",
                "test_examples",
                "steps",
                "num_params",
                "wall_time_s",
            )
        },
        "best_val_top1": best.get("top1", ""),
        "best_val_step": best.get("step", ""),
        "train_img_per_sec": results.get("train_img_per_sec_per_device", ""),
        "commit": commit,
        "host": host_text,
        "finished": utc_minute(),
    }
    append_csv(
        study_dir / "history.csv",
        HISTORY_COLUMNS,
        [
            {"run": run.name, "step": h["step"], "val_top1": h["top1"], "val_loss": h["loss"]}
            for h in val
        ],
    )
    append_csv(study_dir / "runs.csv", RUN_COLUMNS, [row])
    return row


def train_missing(
    runs: Sequence[sweep.Run],
    work_root: pathlib.Path,
    study_dir: pathlib.Path,
    *,
    max_runs: int | None,
    trainer: Sequence[str],
) -> int:
    """Trains the runs absent from the record (at most `max_runs`); returns how many failed."""
    recorded = {r["run"] for r in read_csv(study_dir / "runs.csv")}
    todo = [r for r in runs if r.name not in recorded][:max_runs]
    print(f"{len(recorded)} of {len(runs)} runs recorded; training {len(todo)}.", flush=True)
    failed = 0
    commit, host_text = code_commit(), host()
    for run in todo:
        outcome = sweep.execute(
            [run], work_root, trainer=trainer, echo=lambda line: print(line, flush=True)
        )[run.name]
        if outcome.status in ("trained", "done"):
            row = record_run(run, run.workdir(work_root), study_dir, commit, host_text)
            print(f"{run.name}: test top-1 {100 * float(row['test_top1']):.2f}%", flush=True)
            report(runs, study_dir)
        else:
            failed += 1
    return failed


def _number(value: object) -> float | None:
    return None if value in ("", None) else float(value)


def reproduce(
    run: sweep.Run,
    recorded: Mapping[str, str],
    work_root: pathlib.Path,
    study_dir: pathlib.Path,
    trainer: Sequence[str],
) -> int:
    """Trains a recorded run again and compares it with its row of runs.csv (`recorded`) and
    its curve in history.csv: 0 same, 1 not."""
    root = work_root / "reproduce"
    outcome = sweep.execute(
        [run], root, trainer=trainer, echo=lambda line: print(line, flush=True)
    )[run.name]
    if outcome.status not in ("trained", "done"):
        print(
            f"error: {run.name} did not train again ({outcome.status}); see "
            f"{run.workdir(root) / sweep.LOG_FILE}.",
            file=sys.stderr,
        )
        return 1
    results = sweep.load_results(run.workdir(root))
    differences = [
        f"{key} {recorded[key]} -> {results.get(key)}"
        for key in ("test_top1", "test_top5", "test_loss", "test_examples")
        if _number(recorded[key]) != _number(results.get(key))
    ]
    old_curve = [
        (int(h["step"]), float(h["val_top1"]), float(h["val_loss"]))
        for h in read_csv(study_dir / "history.csv")
        if h["run"] == run.name
    ]
    new_curve = [
        (int(h["step"]), float(h["top1"]), float(h["loss"]))
        for h in validation_rows(run.workdir(root))
    ]
    if old_curve != new_curve:
        step = next(
            (a[0] for a, b in zip(old_curve, new_curve) if a != b),
            min(len(old_curve), len(new_curve)),
        )
        differences.append(f"validation curve from step {step}")
    append_csv(
        study_dir / "reproductions.csv",
        REPRODUCTION_COLUMNS,
        [
            {
                "run": run.name,
                "identical": not differences,
                "differences": "; ".join(differences),
                "recorded_commit": recorded["commit"],
                "recorded_host": recorded["host"],
                "commit": code_commit(),
                "host": host(),
                "finished": utc_minute(),
            }
        ],
    )
    if differences:
        print(f"{run.name}: differs from its record: {'; '.join(differences)}.")
        return 1
    print(
        f"{run.name}: identical to its record (test top-1 "
        f"{100 * float(recorded['test_top1']):.2f}%, {len(new_curve)} validation points)."
    )
    return 0


# --- the report -----------------------------------------------------------------------------


def top1_by_variant(record: Sequence[Mapping[str, str]]) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for r in record:
        out.setdefault(r["variant"], {})[int(r["seed"])] = 100.0 * float(r["test_top1"])
    return out


def comparisons(
    top1: Mapping[str, Mapping[int, float]],
) -> list[tuple[str, str, stats.PairedTest, float]]:
    """(variant, reference, paired test, Holm-adjusted p) for each comparison with data."""
    tests = []
    for variant, ref in COMPARISONS:
        seeds = sorted(set(top1.get(variant, {})) & set(top1.get(ref, {})))
        if seeds:
            tests.append(
                (
                    variant,
                    ref,
                    stats.paired_test(
                        [top1[variant][s] for s in seeds], [top1[ref][s] for s in seeds]
                    ),
                )
            )
    adjusted = stats.holm([t.p for _, _, t in tests])
    return [(v, r, t, p) for (v, r, t), p in zip(tests, adjusted)]


def _num(x: float | str, digits: int = 2) -> str:
    return "n/a" if x == "" or math.isnan(float(x)) else f"{float(x):.{digits}f}"


def _p(p: float) -> str:
    return "n/a" if math.isnan(p) else f"{p:.3g}"


def write_table(
    runs: Sequence[sweep.Run],
    record: Sequence[Mapping[str, str]],
    costs: Sequence[Mapping[str, str]],
    path: pathlib.Path,
) -> None:
    """table.md: per-variant statistics and cost, the paired comparisons, what is missing."""
    top1 = top1_by_variant(record)
    cost = {c["variant"]: c for c in costs}
    planned: dict[str, list[int]] = {}
    for run in runs:
        planned.setdefault(run.variant.name, []).append(run.seed)
    lines = [
        "# Does nesting help? CIFAR-10, paired seeds",
        "",
        f"{len(record)} of {len(runs)} runs recorded. Each run: `configs/cifar10.py:model="
        "<family>,cpu` as shipped (32 px, AdamW, batch 64, 8,000 steps), test top-1 on all "
        "10,000 test images. The same seed gives every family the same data order.",
        "",
        "Reproduce the study: `python -m experiments.nesting_study --data-dir=../shared/tfds`; "
        "one run: its `command` in the list at the end.",
        "",
        "| variant | what | n | test top-1 % (mean ± std) | 95% CI | params | GFLOPs/img "
        "| train img/s (vs TNT) | missing seeds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    what = {
        "vit": "ViT",
        "tnt": "TNT",
        "nested_tnt": "Nested-TNT",
        "nested_vit": "Nested-ViT",
        **ABLATIONS,
    }
    for variant, seeds in planned.items():
        values = top1.get(variant, {})
        s = stats.summarize(list(values.values()))
        c = cost.get(variant, {})
        speed = (
            f"{float(c['train_img_per_sec']):.0f} ({float(c['vs_tnt']):.2f}x)"
            if c
            else "not measured"
        )
        params = f"{int(c['num_params']):,}" if c else ""
        lines.append(
            f"| {variant} | {what[variant]} | {s.n} | {_num(s.mean)} ± {_num(s.std)} | "
            f"[{_num(s.ci_low)}, {_num(s.ci_high)}] | {params} | "
            f"{_num(c.get('gflops_per_image', ''), 3)} | {speed} | "
            f"{', '.join(str(x) for x in seeds if x not in values) or '—'} |"
        )
    lines += [
        "",
        "## Paired differences (variant − reference, percentage points)",
        "",
        "Paired t-test over the seeds both have; p Holm-corrected over the comparisons listed.",
        "",
        "| variant | reference | n | mean difference [95% CI] | t | p | p (Holm) |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, ref, t, adjusted in comparisons(top1):
        lines.append(
            f"| {variant} | {ref} | {t.n} | {t.mean_diff:+.2f} [{_num(t.ci_low)}, "
            f"{_num(t.ci_high)}] | {_num(t.t)} | {_p(t.p)} | {_p(adjusted)} |"
        )
    if costs:
        c0 = costs[0]
        lines += [
            "",
            f"Cost columns: `python -m experiments.nesting_study --costs`, "
            f"{c0['date']}, commit {c0['commit']}, `{c0['host']}`. Each ratio is "
            "timed against TNT in the same process, in alternating rounds; the img/s of "
            "different rows come from different processes and drift with the machine's "
            "load, so compare the ratios. TNT's row times the configured TNT against the "
            "registry's (the same network), which shows a ratio's noise.",
        ]
    recorded = {r["run"] for r in record}
    missing = [run for run in runs if run.name not in recorded]
    lines += ["", f"## Runs still missing ({len(missing)})", ""]
    lines += [f"- `{run.name}`: `{command(run)}`" for run in missing] or ["None."]
    lines += [
        "",
        "## Recorded runs",
        "",
        "| run | test top-1 % | best val % (step) | commit | command |",
        "|---|---|---|---|---|",
    ]
    by_name = {run.name: run for run in runs}
    for r in record:
        lines.append(
            f"| {r['run']} | {100 * float(r['test_top1']):.2f} | "
            f"{100 * float(r['best_val_top1']):.2f} ({r['best_val_step']}) | "
            f"{r['commit']} | `{command(by_name[r['run']])}` |"
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_plot(record: Sequence[Mapping[str, str]], path: pathlib.Path) -> None:
    """plot.png: each seed's test top-1 as a dot, the mean with its 95% CI, per variant."""
    from matplotlib import pyplot as plt  # noqa: PLC0415 (only this command needs it)

    top1 = top1_by_variant(record)
    variants = [v for v in (*FAMILIES, *ABLATIONS) if v in top1]
    fig, ax = plt.subplots(figsize=(1.0 * len(variants) + 3.0, 4.2), dpi=120)
    for x, variant in enumerate(variants):
        seeds = sorted(top1[variant])
        ax.scatter(
            [x + 0.12] * len(seeds),
            [top1[variant][s] for s in seeds],
            s=16,
            alpha=0.7,
            color="tab:blue",
            label="one seed" if x == 0 else None,
        )
        s = stats.summarize([top1[variant][k] for k in seeds])
        err = [[s.mean - s.ci_low], [s.ci_high - s.mean]] if s.n > 1 else None
        ax.errorbar(
            [x - 0.12],
            [s.mean],
            yerr=err,
            fmt="o",
            color="black",
            capsize=4,
            label="mean, 95% CI" if x == 0 else None,
        )
    ax.set_xticks(range(len(variants)), variants, rotation=25, ha="right")
    ax.set_ylabel("CIFAR-10 test top-1 (%)")
    ax.set_title("Test accuracy per seed (8,000 steps, CPU recipe)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_curves(
    record: Sequence[Mapping[str, str]], history: Sequence[Mapping[str, str]], path: pathlib.Path
) -> None:
    """curves.png: validation top-1 by step per family, mean over seeds with a min-max band."""
    from experiments import curves  # noqa: PLC0415 (only this command needs it)

    variant_of = {r["run"]: r["variant"] for r in record}
    by_run: dict[str, list[dict]] = {}
    for h in history:
        if h["run"] in variant_of:
            by_run.setdefault(h["run"], []).append(
                {"step": int(h["step"]), "split": "eval", "top1": float(h["val_top1"])}
            )
    groups = {
        family: [rows for run, rows in by_run.items() if variant_of[run] == family]
        for family in FAMILIES
    }
    curves.plot_groups(
        {k: v for k, v in groups.items() if v},
        path,
        title="CIFAR-10 validation accuracy (mean over seeds, band: min-max)",
    )


def report(runs: Sequence[sweep.Run], study_dir: pathlib.Path) -> None:
    """Rebuilds table.md, plot.png and curves.png from the record."""
    import matplotlib  # noqa: PLC0415 (only this command needs it)

    matplotlib.use("Agg")
    record = read_csv(study_dir / "runs.csv")
    write_table(runs, record, read_csv(study_dir / "costs.csv"), study_dir / "table.md")
    if record:
        write_plot(record, study_dir / "plot.png")
        write_curves(record, read_csv(study_dir / "history.csv"), study_dir / "curves.png")


# --- the cost of each variant ---------------------------------------------------------------


def measure_costs(
    runs: Sequence[sweep.Run], study_dir: pathlib.Path, rounds: int, iters: int
) -> None:
    """costs.csv: parameters, GFLOPs per image and training img/s of each variant, each timed
    by `benchmarks/throughput.py` against TNT in the same process (run it on an idle machine)."""
    from configs import cifar10  # noqa: PLC0415 (only this command needs it)
    from nested_tnt_jax import models  # noqa: PLC0415 (only this command needs it)

    seen: dict[str, sweep.Run] = {}
    for run in runs:
        seen.setdefault(run.variant.name, run)
    tnt_model = cifar10.get_config("model=tnt,cpu").model.name
    fields = models.create_model(tnt_model).__dataclass_fields__
    rows = []
    commit, host_text = code_commit(), host()
    for variant, run in seen.items():
        config = cifar10.get_config(f"model={run.variant.family},cpu")
        overrides = {
            **config.model.overrides.to_dict(),
            **{f"nesting.{k}": v for k, v in config.model.nesting.items()},
            **{f"nesting.{k}": v for k, v in run.variant.nesting},
        }
        args = [
            sys.executable,
            str(sweep.REPO / "benchmarks" / "throughput.py"),
            f"--model={config.model.name}",
            f"--baseline={tnt_model}",
            f"--batch={config.batch_size}",
            "--num-classes=10",
            f"--rounds={rounds}",
            f"--iters={iters}",
            "--json",
            *(
                f"--override={k}={v}"
                for k, v in sorted(overrides.items())
                if k.startswith("nesting.") or k in fields
            ),
        ]
        print(shlex.join(args[1:]), flush=True)
        out = subprocess.run(args, capture_output=True, text=True, check=True, cwd=sweep.REPO)
        ours, base = json.loads(out.stdout)["rows"][:2]
        rows.append(
            {
                "variant": variant,
                "model": config.model.name,
                "num_params": ours["params"],
                "gflops_per_image": ours["gflops_per_image"],
                "train_img_per_sec": ours["train_img_s"],
                "vs_tnt": ours["train_img_s"] / base["train_img_s"],
                "host": host_text,
                "date": datetime.date.today().isoformat(),
                "commit": commit,
            }
        )
    path = study_dir / "costs.csv"
    path.unlink(missing_ok=True)
    append_csv(path, COST_COLUMNS, rows)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m experiments.nesting_study",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data-dir",
        default="../shared/tfds",
        help="TFDS data_dir holding cifar10 (default: ../shared/tfds).",
    )
    p.add_argument(
        "--work-root",
        type=pathlib.Path,
        default=DEFAULT_WORK_ROOT,
        help="Where each run's workdir goes (not committed; default runs/nesting_study).",
    )
    p.add_argument(
        "--study-dir",
        type=pathlib.Path,
        default=STUDY_DIR,
        help="The committed record and report (default experiments/nesting_study).",
    )
    p.add_argument("--max-runs", type=int, default=None, help="Stop after training this many.")
    p.add_argument(
        "--trainer",
        default=shlex.join(sweep.DEFAULT_TRAINER),
        help="Command that trains one run (default: python -m nested_tnt_jax.main).",
    )
    p.add_argument("--report-only", action="store_true", help="Rebuild the report; train nothing.")
    p.add_argument("--dry-run", action="store_true", help="Print the missing runs' commands.")
    p.add_argument(
        "--reproduce",
        metavar="RUN",
        default=None,
        help="Train a recorded run (e.g. cifar10/vit/seed3) again and compare it with its record.",
    )
    p.add_argument(
        "--costs",
        action="store_true",
        help="Measure each variant's parameters, GFLOPs and training img/s.",
    )
    p.add_argument("--rounds", type=int, default=20, help="--costs: alternating rounds.")
    p.add_argument("--iters", type=int, default=3, help="--costs: timed steps per round.")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """0 when every run is recorded, 1 while some are missing or failed, 2 on misuse."""
    args = parse_args(argv)
    if args.max_runs is not None and args.max_runs < 0:
        print("error: --max-runs must be 0 or more.", file=sys.stderr)
        return 2
    runs = planned_runs(args.data_dir)
    study_dir = args.study_dir.resolve()
    study_dir.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        recorded = {r["run"] for r in read_csv(study_dir / "runs.csv")}
        for run in runs:
            if run.name not in recorded:
                print(command(run))
        return 0
    if args.reproduce is not None:
        record = {r["run"]: r for r in read_csv(study_dir / "runs.csv")}
        run = next((r for r in runs if r.name == args.reproduce), None)
        if run is None or run.name not in record:
            print(
                f"error: --reproduce={args.reproduce} is not a recorded run of the study; "
                f"recorded: {', '.join(sorted(record)) or 'none'}.",
                file=sys.stderr,
            )
            return 2
        try:
            return reproduce(
                run,
                record[run.name],
                args.work_root.resolve(),
                study_dir,
                shlex.split(args.trainer),
            )
        except sweep.SweepError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.costs:
        measure_costs(runs, study_dir, args.rounds, args.iters)
    elif not args.report_only:
        try:
            train_missing(
                runs,
                args.work_root.resolve(),
                study_dir,
                max_runs=args.max_runs,
                trainer=shlex.split(args.trainer),
            )
        except sweep.SweepError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    report(runs, study_dir)
    recorded = {r["run"] for r in read_csv(study_dir / "runs.csv")}
    missing = len(runs) - len(recorded & {run.name for run in runs})
    print(f"Report: {study_dir / 'table.md'} ({len(runs) - missing}/{len(runs)} runs recorded)")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
