"""The nesting study's runner: the committed record decides what runs, resumes, reports.

Runs go through the real subprocess machinery with the sweep tests' fake trainer, which writes
a results.json and a history.jsonl whose numbers depend on the model, the overrides and the seed.
"""

import csv
import json
import shlex
import shutil

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from experiments import curves, nesting_study, stats, sweep
from nested_tnt_jax import train
from tests.test_sweep import fake, fake_top1  # noqa: F401  (a fixture)

KEYS = {"vit": "vit", "tnt": "tnt", "nested_tnt": "nested_tnt", "nested_vit": "nested_vit"}


def _study(trainer, work, *extra):
    study_dir = work / "study"
    code = nesting_study.main(
        [
            "--work-root",
            str(work / "runs"),
            "--study-dir",
            str(study_dir),
            "--trainer",
            shlex.join(trainer),
            *extra,
        ]
    )
    return code, study_dir


def _record(study_dir):
    with open(study_dir / "runs.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_plan_is_35_runs_paired_by_seed_with_the_cpu_configs():
    runs = nesting_study.planned_runs("../shared/tfds")
    assert len(runs) == 4 * 5 + 5 * 3 and len({r.name for r in runs}) == 35
    assert [r.variant.name for r in runs[:4]] == ["vit", "tnt", "nested_tnt", "nested_vit"]
    assert {r.seed for r in runs[:20]} == set(range(5))
    assert {r.seed for r in runs[20:]} == {0, 1, 2}
    for run in runs:
        assert run.config == f"cifar10.py:model={run.variant.family},cpu"
        assert f"--config.seed={run.seed}" in run.flags
        assert "--config.dataset.data_dir=../shared/tfds" in run.flags
        assert not any("num_train_steps" in f for f in run.flags)  # the config's own 8,000
    noise = next(r for r in runs if r.variant.name == "nested_tnt-noise_1")
    assert "--config.model.nesting.logit_noise=1.0" in noise.flags
    assert nesting_study.command(noise).startswith(
        "python -m nested_tnt_jax.main --config=configs/cifar10.py:model=nested_tnt,cpu "
    )


def test_record_decides_what_runs_and_the_table_says_what_is_missing(fake, tmp_path):  # noqa: F811
    trainer, calls, _ = fake
    code, study_dir = _study(trainer, tmp_path, "--max-runs", "6")
    assert code == 1 and len(calls()) == 6
    record = _record(study_dir)
    assert [r["run"] for r in record] == [
        r.name for r in nesting_study.planned_runs("../shared/tfds")[:6]
    ]
    first = record[0]
    assert float(first["test_top1"]) == pytest.approx(fake_top1("vit", 0))
    assert float(first["best_val_top1"]) == pytest.approx(fake_top1("vit", 0) - 0.1 / 6)
    assert first["best_val_step"] == "6" and first["commit"] and first["host"].startswith("host:")
    table = (study_dir / "table.md").read_text()
    assert "6 of 35 runs recorded" in table and "## Runs still missing (29)" in table

    # A restart trains only what the record lacks, even with the workdirs gone (a new machine).
    shutil.rmtree(tmp_path / "runs")
    code, _ = _study(trainer, tmp_path, "--max-runs", "2")
    assert [c["workdir"].rsplit("/", 2)[-2] for c in calls()] == ["nested_tnt", "nested_vit"]
    assert len(_record(study_dir)) == 8

    # A run that finished but was not recorded (stopped in between) is recorded, not re-trained.
    runs = nesting_study.planned_runs("../shared/tfds")
    nxt = runs[8]
    (tmp_path / "runs" / nxt.name).mkdir(parents=True)
    (tmp_path / "runs" / nxt.name / "results.json").write_text('{"test_top1": 0.5}')
    (tmp_path / "runs" / nxt.name / "history.jsonl").write_text(
        '{"step": 1, "split": "eval", "top1": 0.4, "loss": 2.0}\n'
    )
    _study(trainer, tmp_path, "--max-runs", "1")
    assert calls() == [] and _record(study_dir)[-1]["run"] == nxt.name
    assert (study_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (study_dir / "plot.png").read_bytes()[:4] == b"\x89PNG"


def test_table_holds_paired_differences_with_holm_correction(fake, tmp_path):  # noqa: F811
    trainer, calls, _ = fake
    code, study_dir = _study(trainer, tmp_path, "--max-runs", "20")  # the four families x 5
    assert code == 1 and len(calls()) == 20
    top1 = {v: np.array([100 * fake_top1(k, s) for s in range(5)]) for v, k in KEYS.items()}
    expected = [
        stats.paired_test(top1[a], top1[b])
        for a, b in (("nested_tnt", "tnt"), ("nested_tnt", "vit"), ("nested_vit", "vit"))
    ]
    holm = stats.holm([t.p for t in expected])
    table = (study_dir / "table.md").read_text().splitlines()
    rows = [
        line
        for line in table
        if line.startswith(("| nested_tnt | tnt |", "| nested_tnt | vit |", "| nested_vit | vit |"))
    ]
    assert len(rows) == 3
    for line, test, adjusted in zip(rows, expected, holm):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2] == "5" and cells[3].startswith(f"{test.mean_diff:+.2f} [")
        assert float(cells[5]) == pytest.approx(test.p, rel=1e-2)
        assert float(cells[6]) == pytest.approx(adjusted, rel=1e-2)
    nt = top1["nested_tnt"]
    line = next(x for x in table if x.startswith("| nested_tnt | Nested-TNT |"))
    assert f"| 5 | {nt.mean():.2f} ± {nt.std(ddof=1):.2f} |" in line
    assert not any(line.startswith("| nested_tnt-no_mixer | nested_tnt |") for line in table)


def test_dry_run_lists_the_missing_commands(fake, tmp_path, capsys):  # noqa: F811
    trainer, calls, _ = fake
    _study(trainer, tmp_path, "--max-runs", "1")
    capsys.readouterr()
    assert _study(trainer, tmp_path, "--dry-run")[0] == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 34 and all(
        line.startswith("python -m nested_tnt_jax.main") for line in lines
    )
    assert "model=vit,cpu --config.seed=0" not in lines[0]
    assert _study(trainer, tmp_path, "--max-runs", "-1")[0] == 2


def test_run_curves_show_training_loss_and_validation(tmp_path, monkeypatch, capsys):
    workdir = tmp_path / "run"
    workdir.mkdir()
    rows = [
        {
            "step": s,
            "split": "train",
            "loss": 2.0 / s,
            "accuracy": 0.1 * s,
            "learning_rate": 1e-3,
            "grad_norm": 1.0,
            "img_per_sec": 100.0,
        }
        for s in (1, 2, 3)
    ]
    rows += [
        {"step": 3, "split": "eval", "top1": 0.3, "loss": 1.5, "examples": 10},
        {"step": 3, "split": "test", "top1": 0.25, "loss": 1.6, "examples": 20},
    ]
    (workdir / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    closed = []
    monkeypatch.setattr(curves.plt, "close", closed.append)
    curves.main([str(workdir), str(tmp_path / "curve.png")])
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert capsys.readouterr().out == (
        f"Wrote {tmp_path / 'curve.png'}: the training loss and accuracy of {workdir} by step "
        "(3 training rows, 1 validation and the final test).\n"
    )
    loss_ax, acc_ax = closed[0].axes
    assert [list(line.get_ydata()) for line in loss_ax.lines] == [[2.0, 1.0, 2.0 / 3], [1.5]]
    assert [len(line.get_xdata()) for line in acc_ax.lines] == [3, 1, 1]


def test_reproduce_trains_a_recorded_run_again_and_compares_it(fake, tmp_path, capsys):  # noqa: F811
    trainer, calls, _ = fake
    _, study_dir = _study(trainer, tmp_path, "--max-runs", "2")
    calls()
    name = "cifar10/tnt/seed0"
    assert _study(trainer, tmp_path, f"--reproduce={name}")[0] == 0
    [call] = calls()
    assert call["workdir"].endswith(f"reproduce/{name}")
    assert "identical to its record" in capsys.readouterr().out
    with open(study_dir / "reproductions.csv", newline="") as f:
        [row] = list(csv.DictReader(f))
    assert row["run"] == name and row["identical"] == "True" and row["recorded_commit"]

    # A record that does not match what the trainer gives is reported, with the field.
    rows = _record(study_dir)
    rows[1]["test_top1"] = "0.123"
    with open(study_dir / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, nesting_study.RUN_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    shutil.rmtree(tmp_path / "runs" / "reproduce")
    assert _study(trainer, tmp_path, f"--reproduce={name}")[0] == 1
    assert "test_top1 0.123 ->" in capsys.readouterr().out and len(calls()) == 1
    with open(study_dir / "reproductions.csv", newline="") as f:
        assert [r["identical"] for r in csv.DictReader(f)] == ["True", "False"]

    # Only recorded runs can be reproduced; nothing is trained for another name.
    assert _study(trainer, tmp_path, "--reproduce=cifar10/nested_tnt/seed0")[0] == 2
    assert "not a recorded run" in capsys.readouterr().err and calls() == []


def test_every_recorded_run_builds_its_config_as_the_trainer_would():
    """`--reproduce=RUN` accepts every row of the committed record: its flags (today's names)
    parse over its config file exactly as `python -m nested_tnt_jax.main` parses them, and the
    config passes the trainer's checks with the nesting the run's variant names."""
    record = _record(nesting_study.STUDY_DIR)
    runs = {run.name: run for run in nesting_study.planned_runs("../shared/tfds")}
    assert len(record) == 35 and {r["run"] for r in record} == set(runs)
    for row in record:
        run = runs[row["run"]]
        argv = ["main", f"--config={sweep.CONFIG_DIR / run.config}", *run.flags]
        values = flags.FlagValues()
        config_flags.DEFINE_config_file("config", flag_values=values, sys_argv=argv)
        values(argv)
        config = values.config
        train.validate_config(config)
        assert config.seed == int(row["seed"]) and config.num_train_steps == int(row["steps"])
        expected = dict(run.variant.nesting)
        for field, value in expected.items():
            assert str(config.model.nesting[field]) == value, (row["run"], field)
