r"""Seed sweep: ViT, TNT, Nested-TNT, Nested-ViT (and Nested-TNT ablations) over datasets.

Every run is a subprocess of the real trainer CLI (`python -m nested_tnt_jax.main`) in its own
workdir `SWEEP_DIR/<dataset>/<model>/seed<k>`, so a sweep trains exactly what a user would by
hand. The report compares models over the same seeds: per (dataset, model) mean ± std of test
top-1 (percent), the 95% Student-t interval and n, and paired t-tests (mean difference with its
95% interval, t, p) of Nested-TNT against TNT and ViT, Nested-ViT against ViT, and of each
ablation against Nested-TNT and TNT. `experiments/nesting_study.py` runs the fixed CIFAR-10
study on top of this machinery, with a committed record. Outputs in SWEEP_DIR: table.md, table.csv,
runs.csv (one line per run), plot.png.

  # 3 seeds, CPU-sized models, a short schedule:
  python -m experiments.sweep --sweep-dir=runs/sweep_c10 --datasets cifar10 --num-seeds 3 \
      --cpu --set dataset.data_dir=../shared/tfds --set num_train_steps=500
  # The paper's pipeline: pre-train on CIFAR-100 (once per model and seed), then fine-tune:
  python -m experiments.sweep --sweep-dir=runs/sweep_paper --pretrain \
      --datasets cifar10 flowers102 --num-seeds 3 --ablations

Re-running the same command resumes: runs with a valid results.json are skipped, unfinished
ones are started again in their workdir (the trainer resumes from its own checkpoint there), and
the table is rebuilt. A failing run is reported with its log (`train.log` in its workdir) and the
sweep goes on; the table lists the seeds it lacks. `--report-only` rebuilds the table alone.
Run from the repository root (`python -m experiments.sweep`).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import pathlib
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence

from experiments import stats
from nested_tnt_jax.models import nesting, registry

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"
DEFAULT_TRAINER = (sys.executable, "-m", "nested_tnt_jax.main")
RESULTS_FILE = "results.json"
RECORD_FILE = "sweep_run.json"
LOG_FILE = "train.log"
PRETRAIN_DATASET = "cifar100"
# Sweep dataset name -> config file under configs/.
DATASETS = {"cifar10": "cifar10.py", "cifar100": "cifar100.py", "flowers102": "flowers102.py"}


@dataclasses.dataclass(frozen=True)
class Variant:
    """A model family (the config's `model=` argument) plus nesting fields (`models.Nesting`,
    set as `--config.model.nesting.<field>=<value>`) for an ablation."""

    name: str
    family: str
    nesting: tuple[tuple[str, str], ...] = ()


# Every model choice the families register (`models.registry`), then the Nested-TNT ablations.
MODELS = tuple(registry.choices())
VARIANTS = {
    v.name: v
    for v in (
        *(Variant(name, name) for name in MODELS),
        Variant("nested_tnt-no_inner", "nested_tnt", (("inner", "False"),)),
        Variant("nested_tnt-no_outer", "nested_tnt", (("outer", "False"),)),
        Variant("nested_tnt-no_mixer", "nested_tnt", (("mixer", "False"),)),
        Variant("nested_tnt-no_noise", "nested_tnt", (("logit_noise", "0.0"),)),
        Variant("nested_tnt-noise_1", "nested_tnt", (("logit_noise", "1.0"),)),
    )
}
ABLATIONS = tuple(name for name in VARIANTS if name not in MODELS)
# Paired comparisons reported per row: the row's model minus each reference, same seeds.
REFERENCES = {
    **{c.name: c.references for c in registry.choices().values() if c.references},
    **{a: ("nested_tnt", "tnt") for a in ABLATIONS},
}
REFERENCE_COLUMNS = tuple(dict.fromkeys(ref for refs in REFERENCES.values() for ref in refs))


class SweepError(ValueError):
    """A sweep that cannot start as asked; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run: what it trains, its trainer flags, and the run it fine-tunes from."""

    dataset: str
    variant: Variant
    seed: int
    config: str  # `cifar10.py:model=tnt,cpu`, relative to configs/.
    flags: tuple[str, ...]  # `--config.x=y` flags, seed and nesting fields included.
    pretrain: Run | None = None

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.variant.name}/seed{self.seed}"

    def workdir(self, sweep_dir: pathlib.Path) -> pathlib.Path:
        return sweep_dir / self.name

    def spec(self) -> dict:
        """What the run trains, independent of where the repository or sweep lives."""
        return {
            "config": self.config,
            "flags": list(self.flags),
            "init_from": self.pretrain.name if self.pretrain else None,
        }

    def trainer_args(self, sweep_dir: pathlib.Path) -> list[str]:
        args = [
            f"--config={CONFIG_DIR / self.config}",
            f"--workdir={self.workdir(sweep_dir)}",
            *self.flags,
        ]
        if self.pretrain:
            args.append(f"--config.init_from={self.pretrain.workdir(sweep_dir)}")
        return args


def current_flag(flag: str) -> str:
    """A recorded trainer flag under today's config names: the nesting switches that older
    sweeps set as model overrides (`--config.model.overrides.nest_inner=False`) become
    `--config.model.nesting.inner=False` (`nesting.from_legacy`); other flags are unchanged."""
    key, sep, value = flag.partition("=")
    if not sep or not key.startswith("--config."):
        return flag
    (new_key,) = nesting.from_legacy({key[len("--config.") :]: value})
    return f"--config.{new_key}={value}"


def _config_flags(settings: Sequence[str]) -> list[str]:
    """`key=value` settings -> `--config.key=value` trainer flags."""
    out = []
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key or key.startswith("-"):
            raise SweepError(
                f"--set / --pretrain-set takes config settings as key=value (a config field path "
                f"without the `--config.` prefix), e.g. `--set num_train_steps=500`; got {item!r}."
            )
        out.append(f"--config.{key}={value}")
    return out


def plan(
    datasets: Sequence[str],
    variants: Sequence[str],
    seeds: Sequence[int],
    *,
    cpu: bool = False,
    pretrain: bool = False,
    settings: Sequence[str] = (),
    pretrain_settings: Sequence[str] = (),
) -> list[Run]:
    """The runs of a sweep, each after the pre-training it fine-tunes from.

    With `pretrain`, every dataset other than CIFAR-100 is fine-tuned from one CIFAR-100 run per
    (model, seed), shared by all of them; that run is also the CIFAR-100 row when CIFAR-100 is
    among `datasets`. `settings` apply to every run, `pretrain_settings` to the CIFAR-100 ones.
    """
    for kind, given, known in (("dataset", datasets, DATASETS), ("model", variants, VARIANTS)):
        unknown = [x for x in given if x not in known]
        if unknown or not given:
            raise SweepError(
                f"Unknown or missing {kind} {', '.join(map(repr, unknown))}: choose one or more "
                f"of {', '.join(known)}."
            )
    if not seeds or len(set(seeds)) != len(seeds):
        raise SweepError(f"Seeds must be distinct and at least one; got {list(seeds)}.")
    if pretrain_settings and not pretrain:
        raise SweepError(
            "--pretrain-set only applies with --pretrain; add --pretrain or use --set."
        )
    common = _config_flags(settings)
    pre_flags = _config_flags(pretrain_settings)

    def make(dataset: str, variant: Variant, seed: int, parent: Run | None) -> Run:
        arg = f"model={variant.family}" + (",cpu" if cpu else "")
        extra = pre_flags if dataset == PRETRAIN_DATASET and pretrain else []
        flags = (
            f"--config.seed={seed}",
            *(f"--config.model.nesting.{k}={v}" for k, v in variant.nesting),
            *common,
            *extra,
        )
        return Run(dataset, variant, seed, f"{DATASETS[dataset]}:{arg}", flags, parent)

    runs: dict[str, Run] = {}
    for dataset in datasets:
        for name in variants:
            for seed in seeds:
                parent = None
                if pretrain:
                    parent = make(PRETRAIN_DATASET, VARIANTS[name], seed, None)
                    parent = runs.setdefault(parent.name, parent)
                    if dataset == PRETRAIN_DATASET:
                        continue
                run = make(dataset, VARIANTS[name], seed, parent)
                runs.setdefault(run.name, run)
    return list(runs.values())


def load_results(workdir: pathlib.Path) -> dict | None:
    """The run's results.json if it is complete (a finite test_top1 in [0, 1]), else None."""
    try:
        results = json.loads((workdir / RESULTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    top1 = results.get("test_top1") if isinstance(results, dict) else None
    if isinstance(top1, bool) or not isinstance(top1, (int, float)):
        return None
    return results if math.isfinite(top1) and 0.0 <= top1 <= 1.0 else None


def check_records(runs: Sequence[Run], sweep_dir: pathlib.Path) -> None:
    """Refuses to reuse a workdir that was started with different settings.

    Resuming (or skipping) such a run would mix two setups in one table, silently.
    """
    clashes = []
    for run in runs:
        path = run.workdir(sweep_dir) / RECORD_FILE
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            continue
        except (OSError, ValueError):
            recorded = None
        if recorded is not None and isinstance(recorded.get("flags"), list):
            recorded["flags"] = [current_flag(f) for f in recorded["flags"]]
        if recorded != run.spec():
            clashes.append(run.name)
    if clashes:
        raise SweepError(
            f"{len(clashes)} run(s) in {sweep_dir} were started with other settings "
            f"({', '.join(clashes[:5])}{', ...' if len(clashes) > 5 else ''}; see {RECORD_FILE} "
            "in each). Use a new --sweep-dir for a different setup, or re-run with the original "
            "options."
        )


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What happened to a run in this invocation: done (found complete), trained, failed,
    blocked (its pre-training has no results)."""

    status: str
    message: str = ""


def _log_tail(path: pathlib.Path, lines: int = 3) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def execute(
    runs: Sequence[Run],
    sweep_dir: pathlib.Path,
    *,
    trainer: Sequence[str] = DEFAULT_TRAINER,
    echo: Callable[[str], None] = print,
) -> dict[str, Outcome]:
    """Trains every run that lacks valid results, in order, one subprocess at a time.

    Runs are sequential: each trainer process uses every local accelerator. The trainer's output
    is appended to the run's train.log, so the log of an interrupted attempt survives a resume.
    """
    check_records(runs, sweep_dir)
    outcomes: dict[str, Outcome] = {}
    for i, run in enumerate(runs, 1):
        workdir = run.workdir(sweep_dir)
        prefix = f"[{i}/{len(runs)}] {run.name}"
        if load_results(workdir) is not None:
            outcomes[run.name] = Outcome("done")
            echo(f"{prefix}: done, skipped")
            continue
        if run.pretrain and load_results(run.pretrain.workdir(sweep_dir)) is None:
            why = f"pre-training {run.pretrain.name} has no results"
            outcomes[run.name] = Outcome("blocked", why)
            echo(f"{prefix}: not run, {why}")
            continue
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / RECORD_FILE).write_text(json.dumps(run.spec(), indent=2), encoding="utf-8")
        command = [*trainer, *run.trainer_args(sweep_dir)]
        echo(f"{prefix}: training")
        start = time.time()
        with open(workdir / LOG_FILE, "a", encoding="utf-8") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(command)}\n")
            log.flush()
            code = subprocess.run(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False
            ).returncode
        if code == 0 and load_results(workdir) is not None:
            outcomes[run.name] = Outcome("trained")
            echo(f"{prefix}: trained in {time.time() - start:.0f}s")
        else:
            why = f"exit code {code}" if code else f"exit code 0 but no valid {RESULTS_FILE}"
            message = f"{why}; log {workdir / LOG_FILE}: {_log_tail(workdir / LOG_FILE)}"
            outcomes[run.name] = Outcome("failed", message)
            echo(f"{prefix}: FAILED, {message}")
    return outcomes


@dataclasses.dataclass(frozen=True)
class Row:
    """One (dataset, model) line of the table: top-1 per seed (percent) and its statistics."""

    dataset: str
    model: str
    top1: Mapping[int, float]
    missing: tuple[int, ...]
    summary: stats.Summary
    paired: Mapping[str, stats.PairedTest]  # reference model -> test of (model - reference)


def table_rows(runs: Sequence[Run], sweep_dir: pathlib.Path, datasets: Sequence[str]) -> list[Row]:
    """Collects results into rows for `datasets` (in that order), pairing models by seed."""
    cells: dict[tuple[str, str], dict[int, float | None]] = {}
    for run in runs:
        results = load_results(run.workdir(sweep_dir))
        cells.setdefault((run.dataset, run.variant.name), {})[run.seed] = (
            100.0 * results["test_top1"] if results else None
        )
    rows = []
    for (dataset, model), by_seed in cells.items():
        if dataset not in datasets:
            continue
        top1 = {s: v for s, v in sorted(by_seed.items()) if v is not None}
        paired = {}
        for ref in REFERENCES.get(model, ()):
            ref_top1 = cells.get((dataset, ref), {})
            seeds = [s for s in top1 if ref_top1.get(s) is not None]
            if seeds:
                paired[ref] = stats.paired_test(
                    [top1[s] for s in seeds], [ref_top1[s] for s in seeds]
                )
        rows.append(
            Row(
                dataset,
                model,
                top1,
                tuple(s for s, v in by_seed.items() if v is None),
                stats.summarize(list(top1.values())),
                paired,
            )
        )
    order = {d: i for i, d in enumerate(datasets)}
    return sorted(rows, key=lambda r: order[r.dataset])


def _num(x: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(x) else f"{x:.{digits}f}"


def _p(p: float) -> str:
    return "n/a" if math.isnan(p) else f"{p:.3g}"


def _paired_cell(test: stats.PairedTest | None) -> str:
    if test is None:
        return ""
    return (
        f"{test.mean_diff:+.2f} [{_num(test.ci_low)}, {_num(test.ci_high)}], "
        f"t={_num(test.t)}, p={_p(test.p)} (n={test.n})"
    )


def write_markdown(
    rows: Sequence[Row], outcomes: Mapping[str, Outcome] | None, path: pathlib.Path
) -> None:
    """table.md: one table over all datasets, then the runs that failed or are missing."""
    head = [
        "dataset",
        "model",
        "n",
        "top-1 % (mean ± std)",
        "95% CI",
        *(f"Δ vs {ref} [95% CI], paired t" for ref in REFERENCE_COLUMNS),
        "missing seeds",
    ]
    lines = [
        "# Sweep results",
        "",
        "Test top-1 in percent over seeds. 95% CI: Student t on the mean. Δ vs X: mean paired "
        "difference (this model − X) over the seeds both have, with its 95% CI, the paired "
        "t statistic and the two-sided p-value.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        s = r.summary
        lines.append(
            "| "
            + " | ".join(
                [
                    r.dataset,
                    r.model,
                    str(s.n),
                    f"{_num(s.mean)} ± {_num(s.std)}",
                    f"[{_num(s.ci_low)}, {_num(s.ci_high)}]",
                    *(_paired_cell(r.paired.get(ref)) for ref in REFERENCE_COLUMNS),
                    ", ".join(map(str, r.missing)) or "—",
                ]
            )
            + " |"
        )
    problems = {
        name: o for name, o in (outcomes or {}).items() if o.status in ("failed", "blocked")
    }
    if problems:
        lines += ["", "## Runs without results", ""]
        lines += [f"- `{name}`: {o.status}, {o.message}" for name, o in problems.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_csv(rows: Sequence[Row], path: pathlib.Path) -> None:
    """table.csv: the table's numbers unformatted, one row per (dataset, model)."""
    fields = ["dataset", "model", "n", "mean", "std", "ci_low", "ci_high", "missing_seeds"]
    for ref in REFERENCE_COLUMNS:
        fields += [f"{k}_vs_{ref}" for k in ("n", "diff", "diff_ci_low", "diff_ci_high", "t", "p")]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        for r in rows:
            line = {
                "dataset": r.dataset,
                "model": r.model,
                **dataclasses.asdict(r.summary),
                "missing_seeds": " ".join(map(str, r.missing)),
            }
            for ref, t in r.paired.items():
                line.update(
                    {
                        f"n_vs_{ref}": t.n,
                        f"diff_vs_{ref}": t.mean_diff,
                        f"diff_ci_low_vs_{ref}": t.ci_low,
                        f"diff_ci_high_vs_{ref}": t.ci_high,
                        f"t_vs_{ref}": t.t,
                        f"p_vs_{ref}": t.p,
                    }
                )
            writer.writerow(line)


RUN_FIELDS = (
    "test_top1",
    "test_top5",
    "test_loss",
    "test_examples",
    "num_params",
    "steps",
    "train_img_per_sec_per_device",
    "wall_time_s",
)


def write_runs_csv(runs: Sequence[Run], sweep_dir: pathlib.Path, path: pathlib.Path) -> None:
    """runs.csv: every planned run with its results.json fields (empty where it has none)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "dataset", "model", "seed", "init_from", *RUN_FIELDS])
        for run in runs:
            results = load_results(run.workdir(sweep_dir)) or {}
            writer.writerow(
                [
                    run.name,
                    run.dataset,
                    run.variant.name,
                    run.seed,
                    run.pretrain.name if run.pretrain else "",
                    *(results.get(k, "") for k in RUN_FIELDS),
                ]
            )


# The plot's y-axis spans at least this many points of top-1, so that seeds a hundredth of a
# point apart do not look far apart.
MIN_PLOT_SPAN = 1.0


def write_plot(rows: Sequence[Row], path: pathlib.Path) -> None:
    """plot.png: per dataset, each seed's top-1 as a dot and the mean with its 95% CI bar;
    each model's label gives its number of seeds n, and a model with n = 1 is marked as
    having no interval. The y-axis spans at least `MIN_PLOT_SPAN` points."""
    import matplotlib  # noqa: PLC0415 (only the plot needs it)

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # noqa: PLC0415 (only the plot needs it)

    datasets = list(dict.fromkeys(r.dataset for r in rows))
    widest = max((sum(r.dataset == d for r in rows) for d in datasets), default=1)
    fig, axes = plt.subplots(
        max(1, len(datasets)),
        1,
        squeeze=False,
        figsize=(max(5.0, 1.0 * widest + 2.0), 3.6 * max(1, len(datasets))),
    )
    for ax, dataset in zip(axes[:, 0], datasets):
        mine = [r for r in rows if r.dataset == dataset]
        for x, r in enumerate(mine):
            values = list(r.top1.values())
            offsets = [0.3 * (j / max(1, len(values) - 1) - 0.5) for j in range(len(values))]
            ax.scatter(
                [x + 0.15 + o / 2 for o in offsets],
                values,
                s=14,
                alpha=0.6,
                color="tab:blue",
                label="seed" if x == 0 else None,
            )
            s = r.summary
            if s.n:
                err = [[s.mean - s.ci_low], [s.ci_high - s.mean]] if s.n > 1 else None
                ax.errorbar(
                    [x - 0.1],
                    [s.mean],
                    yerr=err,
                    fmt="o",
                    color="black",
                    capsize=4,
                    label="mean, 95% CI" if x == 0 else None,
                )
        ax.set_xticks(
            range(len(mine)),
            [f"{r.model}\n(n = {r.summary.n})" for r in mine],
            rotation=20,
            ha="right",
        )
        low, high = ax.get_ylim()
        if high - low < MIN_PLOT_SPAN:
            middle = (low + high) / 2
            ax.set_ylim(middle - MIN_PLOT_SPAN / 2, middle + MIN_PLOT_SPAN / 2)
        single = [r for r in mine if r.summary.n == 1]
        ax.set_title(
            dataset
            if not single
            else f"{dataset}\none seed (n = 1): no confidence interval"
            + ("" if len(single) == len(mine) else " for those models"),
            fontsize=10,
        )
        ax.set_ylabel("test top-1 (%)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(
    runs: Sequence[Run],
    sweep_dir: pathlib.Path,
    datasets: Sequence[str],
    outcomes: Mapping[str, Outcome] | None = None,
) -> list[Row]:
    """Writes table.md, table.csv, runs.csv and plot.png into `sweep_dir`; returns the rows."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    rows = table_rows(runs, sweep_dir, datasets)
    write_markdown(rows, outcomes, sweep_dir / "table.md")
    write_csv(rows, sweep_dir / "table.csv")
    write_runs_csv(runs, sweep_dir, sweep_dir / "runs.csv")
    write_plot(rows, sweep_dir / "plot.png")
    return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m experiments.sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--sweep-dir",
        required=True,
        type=pathlib.Path,
        help="Directory holding one workdir per run and the tables.",
    )
    p.add_argument(
        "--datasets",
        nargs="+",
        default=["cifar10"],
        choices=list(DATASETS),
        metavar="DATASET",
        help=f"Any of {', '.join(DATASETS)} (default: cifar10).",
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=list(MODELS),
        choices=list(VARIANTS),
        metavar="MODEL",
        help=f"Any of {', '.join(VARIANTS)} (default: {' '.join(MODELS)}).",
    )
    p.add_argument(
        "--ablations",
        action="store_true",
        help=f"Also train the Nested-TNT ablations: {', '.join(ABLATIONS)}.",
    )
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--num-seeds", type=int, default=3, help="Seeds 0 .. K-1 (default 3).")
    seeds.add_argument("--seeds", type=int, nargs="+", help="Explicit seeds.")
    p.add_argument(
        "--cpu", action="store_true", help="Use the configs' `cpu` variant (small 32 px models)."
    )
    p.add_argument(
        "--pretrain",
        action="store_true",
        help="Pre-train on CIFAR-100 once per model and seed, then fine-tune.",
    )
    p.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Config override for every run, e.g. dataset.data_dir=../shared/tfds.",
    )
    p.add_argument(
        "--pretrain-set",
        dest="pretrain_settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Config override for the CIFAR-100 runs only.",
    )
    p.add_argument(
        "--trainer",
        default=shlex.join(DEFAULT_TRAINER),
        help="Command that trains one run (default: python -m nested_tnt_jax.main).",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="Rebuild the tables from existing results; train nothing.",
    )
    p.add_argument("--dry-run", action="store_true", help="Print the trainer commands and exit.")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns 0 when every run has results, 1 when some failed, 2 on misuse."""
    args = parse_args(argv)
    models = list(dict.fromkeys(args.models + (list(ABLATIONS) if args.ablations else [])))
    seeds = args.seeds if args.seeds is not None else list(range(args.num_seeds))
    sweep_dir = args.sweep_dir.resolve()
    trainer = shlex.split(args.trainer)
    try:
        runs = plan(
            args.datasets,
            models,
            seeds,
            cpu=args.cpu,
            pretrain=args.pretrain,
            settings=args.settings,
            pretrain_settings=args.pretrain_settings,
        )
        if args.dry_run:
            for run in runs:
                print(shlex.join([*trainer, *run.trainer_args(sweep_dir)]))
            return 0
        outcomes = None if args.report_only else execute(runs, sweep_dir, trainer=trainer)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report(runs, sweep_dir, args.datasets, outcomes)
    missing = [r.name for r in runs if load_results(r.workdir(sweep_dir)) is None]
    listed = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    print(
        f"Table: {sweep_dir / 'table.md'} ({len(runs) - len(missing)}/{len(runs)} runs with "
        f"results{'; missing: ' + listed if missing else ''})"
    )
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
