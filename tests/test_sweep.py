"""The seed sweep: statistics, the plan of runs, resume, failures, tables; no real training.

Runs go through the real subprocess machinery with a fake trainer: a small script that parses
the trainer's flags and writes a results.json whose top-1 is `fake_top1(model, seed)`.
"""

import csv
import inspect
import json
import math
import pathlib
import shlex
import sys

import numpy as np
import pytest

from experiments import stats, sweep


# --- statistics -----------------------------------------------------------------------------


def test_holm_by_hand():
    # Sorted 0.01, 0.02, 0.04 (x3, x2, x1) -> 0.03, 0.04, 0.04 (kept non-decreasing); NaN skipped.
    adjusted = stats.holm([0.04, math.nan, 0.01, 0.02])
    assert adjusted[1] != adjusted[1]
    assert adjusted[2] == pytest.approx(0.03) and adjusted[3] == pytest.approx(0.04)
    assert adjusted[0] == pytest.approx(0.04)
    assert stats.holm([0.6, 0.5]) == [1.0, 1.0] and stats.holm([]) == []


def test_summarize_by_hand():
    s = stats.summarize([1.0, 2.0, 3.0, 4.0])
    std = math.sqrt(5.0 / 3.0)
    half = 3.1824463052837078 * std / 2.0  # t_{0.975, 3} * s / sqrt(n)
    assert (s.n, s.mean, s.std) == (4, 2.5, pytest.approx(std, rel=1e-12))
    assert (s.ci_low, s.ci_high) == (pytest.approx(2.5 - half), pytest.approx(2.5 + half))
    one = stats.summarize([7.0])
    assert one.n == 1 and one.mean == 7.0 and math.isnan(one.std) and math.isnan(one.ci_low)
    assert stats.summarize([]).n == 0


def test_paired_test_by_hand():
    # Differences 1, 2, 3: mean 2, sd 1, t = 2 sqrt(3), df 2: p = 1 - t / sqrt(2 + t^2).
    r = stats.paired_test([11.0, 12.0, 14.0], [10.0, 10.0, 11.0])
    t = 2.0 * math.sqrt(3.0)
    half = 4.302652729749464 / math.sqrt(3.0)  # t_{0.975, 2} * sd / sqrt(n)
    assert (r.n, r.mean_diff) == (3, pytest.approx(2.0))
    assert r.t == pytest.approx(t, rel=1e-12)
    # df = 2: the two-sided p-value of t has the closed form 1 - t / sqrt(2 + t^2).
    assert r.p == pytest.approx(1.0 - t / math.sqrt(2.0 + t * t), rel=1e-10)
    assert (r.ci_low, r.ci_high) == (pytest.approx(2.0 - half), pytest.approx(2.0 + half))
    swapped = stats.paired_test([10.0, 10.0, 11.0], [11.0, 12.0, 14.0])
    assert swapped.t == pytest.approx(-t) and swapped.p == pytest.approx(r.p)


def test_paired_test_degenerate_cases():
    same_gap = stats.paired_test([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    assert same_gap.t == math.inf and same_gap.p == 0.0 and same_gap.ci_low == 1.0
    equal = stats.paired_test([1.0, 2.0], [1.0, 2.0])
    assert math.isnan(equal.t) and equal.p == 1.0
    assert math.isnan(stats.paired_test([1.0], [0.0]).p)
    with pytest.raises(ValueError, match="equal lengths"):
        stats.paired_test([1.0, 2.0], [1.0])


# --- the plan -------------------------------------------------------------------------------


def test_plan_names_and_flags():
    runs = sweep.plan(
        ["cifar10"],
        ["tnt", "nested_tnt-no_mixer"],
        [0, 3],
        cpu=True,
        settings=["num_train_steps=5"],
    )
    assert [r.name for r in runs] == [
        "cifar10/tnt/seed0",
        "cifar10/tnt/seed3",
        "cifar10/nested_tnt-no_mixer/seed0",
        "cifar10/nested_tnt-no_mixer/seed3",
    ]
    ablation = runs[3]
    assert ablation.config == "cifar10.py:model=nested_tnt,cpu"
    assert ablation.flags == (
        "--config.seed=3",
        "--config.model.nesting.mixer=False",
        "--config.num_train_steps=5",
    )
    args = ablation.trainer_args(pathlib.Path("/sw"))
    assert args[:2] == [
        f"--config={sweep.CONFIG_DIR / 'cifar10.py'}:model=nested_tnt,cpu",
        "--workdir=/sw/cifar10/nested_tnt-no_mixer/seed3",
    ]
    assert not any("init_from" in a for a in args)
    noise = sweep.plan(["cifar10"], ["nested_tnt-no_noise"], [0])[0]
    assert noise.config == "cifar10.py:model=nested_tnt"
    assert "--config.model.nesting.logit_noise=0.0" in noise.flags


def test_plan_reuses_one_pretraining_per_model_and_seed():
    runs = sweep.plan(
        ["cifar10", "cifar100", "flowers102"],
        ["vit", "nested_tnt"],
        [0, 1],
        pretrain=True,
        pretrain_settings=["num_epochs=2"],
    )
    names = [r.name for r in runs]
    assert len(names) == len(set(names)) == 4 + 4 + 4  # pre-training (= cifar100), c10, flowers
    pre = {r.name: r for r in runs if r.dataset == "cifar100"}
    assert set(pre) == {f"cifar100/{m}/seed{s}" for m in ("vit", "nested_tnt") for s in (0, 1)}
    for r in runs:
        if r.dataset == "cifar100":
            assert r.pretrain is None and "--config.num_epochs=2" in r.flags
        else:
            assert r.pretrain is pre[f"cifar100/{r.variant.name}/seed{r.seed}"]
            assert names.index(r.pretrain.name) < names.index(r.name)
            assert "--config.num_epochs=2" not in r.flags
            assert r.trainer_args(pathlib.Path("/sw"))[-1] == (
                f"--config.init_from=/sw/cifar100/{r.variant.name}/seed{r.seed}"
            )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(datasets=["imagenet"]), "Unknown or missing dataset 'imagenet'"),
        (dict(variants=["nested_tnt-no_foo"]), "Unknown or missing model"),
        (dict(seeds=[1, 1]), "distinct"),
        (dict(pretrain_settings=["num_epochs=1"]), "only applies with --pretrain"),
        (dict(settings=["num_train_steps"]), "key=value"),
    ],
)
def test_plan_refusals(kwargs, match):
    args = dict(datasets=["cifar10"], variants=["tnt"], seeds=[0]) | kwargs
    with pytest.raises(sweep.SweepError, match=match):
        sweep.plan(args.pop("datasets"), args.pop("variants"), args.pop("seeds"), **args)


# --- running with a fake trainer ------------------------------------------------------------


def fake_top1(key: str, seed: int) -> float:
    """Top-1 the fake trainer reports: model-dependent, seed-dependent, not a constant gap."""
    base = {"vit": 0.60, "tnt": 0.62, "nested_tnt": 0.64, "nested_vit": 0.61}.get(key, 0.63)
    return base + 0.01 * seed + 0.002 * len(key) * (seed % 2)


FAKE_TRAINER = (
    inspect.getsource(fake_top1)
    + """
import json, os, pathlib, sys

args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
workdir = pathlib.Path(args["workdir"])
seed = int(args["config.seed"])
model = args["config"].split("model=")[1].split(",")[0]
key = model + "".join(f":{k.rsplit('.', 1)[1]}={v}" for k, v in sorted(args.items())
                      if k.startswith("config.model.nesting."))
with open(os.environ["FAKE_CALLS"], "a") as f:
    f.write(json.dumps({"workdir": str(workdir), "resumed": (workdir / "ckpt").exists()}) + "\\n")
print("training", key, seed)
if "/" + os.environ.get("FAKE_FAIL", "nothing") + "/" in str(workdir) + "/":
    print("boom: simulated failure")
    sys.exit(3)
init = args.get("config.init_from")
if init and not (pathlib.Path(init) / "results.json").exists():
    sys.exit("init_from has no finished pre-training")
workdir.mkdir(parents=True, exist_ok=True)
(workdir / "ckpt").write_text("step")
(workdir / "history.jsonl").write_text("".join(
    json.dumps({"step": step, "split": "eval", "top1": fake_top1(key, seed) - 0.1 / step,
                "loss": 1.0 / step}) + "\\n" for step in (2, 4, 6)))
(workdir / "results.json").write_text(json.dumps(
    {"test_top1": fake_top1(key, seed), "test_top5": 0.9, "steps": 7, "init_from": init}))
"""
)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """(trainer command, calls log reader, sweep dir) for runs through the fake trainer."""
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    monkeypatch.delenv("FAKE_FAIL", raising=False)

    def read_calls():
        if not calls.exists():
            return []
        out = [json.loads(line) for line in calls.read_text().splitlines()]
        calls.unlink()
        return out

    return [sys.executable, str(script)], read_calls, tmp_path / "sweep"


def _cli(trainer, sweep_dir, *extra):
    return sweep.main(["--sweep-dir", str(sweep_dir), "--trainer", shlex.join(trainer), *extra])


def _csv_rows(path):
    with open(path, newline="") as f:
        return {(r["dataset"], r["model"]): r for r in csv.DictReader(f)}


def test_sweep_resumes_and_skips_finished_runs(fake, capsys):
    trainer, calls, sweep_dir = fake
    runs = sweep.plan(["cifar10", "flowers102"], ["tnt", "nested_tnt"], [0, 1], pretrain=True)
    out = sweep.execute(runs, sweep_dir, trainer=trainer, echo=lambda _: None)
    assert {o.status for o in out.values()} == {"trained"}
    assert len(calls()) == 12
    ft = json.loads((sweep_dir / "flowers102/nested_tnt/seed1/results.json").read_text())
    assert ft["init_from"] == str(sweep_dir / "cifar100/nested_tnt/seed1")

    # Second pass: everything is done, nothing runs.
    out = sweep.execute(runs, sweep_dir, trainer=trainer, echo=lambda _: None)
    assert {o.status for o in out.values()} == {"done"} and calls() == []

    # A half-finished run (checkpoint, no results) and a corrupt results.json are re-run.
    (sweep_dir / "cifar10/tnt/seed0/results.json").unlink()
    (sweep_dir / "cifar10/nested_tnt/seed1/results.json").write_text('{"test_top1": nan')
    out = sweep.execute(runs, sweep_dir, trainer=trainer, echo=lambda _: None)
    rerun = calls()
    assert sorted(c["workdir"] for c in rerun) == [
        str(sweep_dir / "cifar10/nested_tnt/seed1"),
        str(sweep_dir / "cifar10/tnt/seed0"),
    ]
    assert all(c["resumed"] for c in rerun)
    assert [n for n, o in out.items() if o.status == "trained"] == [
        "cifar10/tnt/seed0",
        "cifar10/nested_tnt/seed1",
    ]
    log = (sweep_dir / "cifar10/tnt/seed0/train.log").read_text()
    assert log.count("=== ") == 2 and "--config.seed=0" in log  # both attempts kept


def test_failed_run_does_not_stop_the_sweep(fake, monkeypatch):
    trainer, calls, sweep_dir = fake
    monkeypatch.setenv("FAKE_FAIL", "seed1")
    args = [
        "--datasets",
        "cifar10",
        "--models",
        "vit",
        "tnt",
        "nested_tnt",
        "--num-seeds",
        "3",
        "--pretrain",
        "--set",
        "num_train_steps=3",
    ]
    assert _cli(trainer, sweep_dir, *args) == 1
    # Pre-trainings for seed 1 failed; their fine-tunes were not started; the rest ran.
    assert len(calls()) == 3 * 2 + 3 * 2 + 3
    log = (sweep_dir / "cifar100/tnt/seed1/train.log").read_text()
    assert "boom: simulated failure" in log
    table = (sweep_dir / "table.md").read_text()
    assert "`cifar100/tnt/seed1`: failed, exit code 3" in table
    assert "`cifar10/tnt/seed1`: blocked, pre-training cifar100/tnt/seed1 has no results" in table
    rows = _csv_rows(sweep_dir / "table.csv")
    assert rows["cifar10", "tnt"]["n"] == "2" and rows["cifar10", "tnt"]["missing_seeds"] == "1"

    # Fixed: the same command trains only the missing runs and completes the table.
    monkeypatch.delenv("FAKE_FAIL")
    assert _cli(trainer, sweep_dir, *args) == 0
    assert sorted(c["workdir"] for c in calls()) == sorted(
        str(sweep_dir / d / m / "seed1")
        for d in ("cifar100", "cifar10")
        for m in ("vit", "tnt", "nested_tnt")
    )
    rows = _csv_rows(sweep_dir / "table.csv")
    assert rows["cifar10", "tnt"]["n"] == "3" and rows["cifar10", "tnt"]["missing_seeds"] == ""
    assert "Runs without results" not in (sweep_dir / "table.md").read_text()


def test_tables_hold_the_statistics_of_the_results(fake):
    trainer, calls, sweep_dir = fake
    seeds = [0, 1, 2, 3]
    assert (
        _cli(
            trainer,
            sweep_dir,
            "--datasets",
            "cifar10",
            "--seeds",
            *map(str, seeds),
            "--ablations",
            "--cpu",
        )
        == 0
    )
    assert len(calls()) == 9 * 4
    keys = {
        "vit": "vit",
        "tnt": "tnt",
        "nested_tnt": "nested_tnt",
        "nested_vit": "nested_vit",
        "nested_tnt-no_inner": "nested_tnt:inner=False",
        "nested_tnt-no_outer": "nested_tnt:outer=False",
        "nested_tnt-no_mixer": "nested_tnt:mixer=False",
        "nested_tnt-no_noise": "nested_tnt:logit_noise=0.0",
        "nested_tnt-noise_1": "nested_tnt:logit_noise=1.0",
    }
    top1 = {m: np.array([100 * fake_top1(k, s) for s in seeds]) for m, k in keys.items()}
    rows = _csv_rows(sweep_dir / "table.csv")
    assert [m for (_, m) in rows] == list(keys)
    for model, values in top1.items():
        row = rows["cifar10", model]
        assert int(row["n"]) == 4
        assert float(row["mean"]) == pytest.approx(values.mean())
        assert float(row["std"]) == pytest.approx(values.std(ddof=1))
        half = 3.1824463052837078 * values.std(ddof=1) / 2.0
        assert float(row["ci_high"]) == pytest.approx(values.mean() + half)
    compared = {
        "nested_tnt": ("tnt", "vit"),
        "nested_vit": ("vit",),
        "nested_tnt-no_mixer": ("nested_tnt", "tnt"),
        "nested_tnt-no_inner": ("nested_tnt", "tnt"),
    }
    for model, refs in compared.items():
        row = rows["cifar10", model]
        for ref in refs:
            diff = top1[model] - top1[ref]
            assert float(row[f"diff_vs_{ref}"]) == pytest.approx(diff.mean())
            expected = stats.paired_test(top1[model], top1[ref])
            assert float(row[f"p_vs_{ref}"]) == pytest.approx(expected.p)
            assert float(row[f"diff_ci_low_vs_{ref}"]) == pytest.approx(expected.ci_low)
    assert rows["cifar10", "nested_tnt"]["diff_vs_nested_tnt"] == ""
    assert rows["cifar10", "tnt"]["diff_vs_vit"] == ""

    md = (sweep_dir / "table.md").read_text()
    nt = top1["nested_tnt"]
    line = next(x for x in md.splitlines() if x.startswith("| cifar10 | nested_tnt |"))
    assert f"{nt.mean():.2f} ± {nt.std(ddof=1):.2f}" in line
    assert f"{(nt - top1['tnt']).mean():+.2f} [" in line
    assert (sweep_dir / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs_csv = (sweep_dir / "runs.csv").read_text().splitlines()
    assert len(runs_csv) == 1 + 36 and runs_csv[1].startswith("cifar10/vit/seed0,cifar10,vit,0,")

    # --report-only rebuilds from results on disk without training.
    (sweep_dir / "table.md").unlink()
    (sweep_dir / "cifar10/vit/seed2/results.json").unlink()
    assert (
        _cli(
            trainer,
            sweep_dir,
            "--datasets",
            "cifar10",
            "--seeds",
            *map(str, seeds),
            "--ablations",
            "--cpu",
            "--report-only",
        )
        == 1
    )
    assert calls() == []
    assert _csv_rows(sweep_dir / "table.csv")["cifar10", "vit"]["missing_seeds"] == "2"


def test_changed_settings_are_refused_not_mixed(fake, capsys):
    trainer, calls, sweep_dir = fake
    base = ["--datasets", "cifar10", "--models", "tnt", "--num-seeds", "1"]
    assert _cli(trainer, sweep_dir, *base) == 0
    assert _cli(trainer, sweep_dir, *base, "--set", "num_train_steps=9") == 2
    assert "started with other settings (cifar10/tnt/seed0" in capsys.readouterr().err
    assert len(calls()) == 1


def test_dry_run_prints_commands_and_trains_nothing(fake, capsys):
    trainer, calls, sweep_dir = fake
    assert _cli(trainer, sweep_dir, "--models", "vit", "--num-seeds", "2", "--dry-run") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "--config.seed=1" in lines[1] and lines[0].startswith(trainer[0])
    assert calls() == [] and not sweep_dir.exists()


def _plotted(rows, tmp_path, monkeypatch):
    """The figure `write_plot` draws for `rows` (caught as it is closed)."""
    import matplotlib.pyplot as plt

    closed = []
    monkeypatch.setattr(plt, "close", closed.append)
    sweep.write_plot(rows, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    return closed[0]


def _row(model: str, values: list[float]) -> sweep.Row:
    return sweep.Row("cifar10", model, dict(enumerate(values)), (), stats.summarize(values), {})


def test_plot_of_one_seed_keeps_a_sensible_span_and_says_n_is_1(tmp_path, monkeypatch):
    fig = _plotted([_row("nested_tnt", [29.44]), _row("tnt", [29.42])], tmp_path, monkeypatch)
    (ax,) = fig.axes
    low, high = ax.get_ylim()
    assert high - low >= sweep.MIN_PLOT_SPAN and low < 29.42 and 29.44 < high
    assert "n = 1" in ax.get_title()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["nested_tnt\n(n = 1)", "tnt\n(n = 1)"]
    # Several seeds far apart keep their own span, and no n = 1 note.
    fig = _plotted(
        [_row("nested_tnt", [30.0, 33.0, 35.5]), _row("tnt", [29.0, 31.0, 32.0])],
        tmp_path,
        monkeypatch,
    )
    (ax,) = fig.axes
    low, high = ax.get_ylim()
    assert high - low > 6.5 and ax.get_title() == "cifar10"
    assert ax.get_xticklabels()[0].get_text() == "nested_tnt\n(n = 3)"
