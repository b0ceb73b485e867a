"""A workdir's guards through the real CLI: one writer, the same run on resume, a finished run
left alone, data read before training, init_from recorded, Ctrl-C, a quiet terminal.

Each case as docs/failure_modes.md states it, on `tests/cli_config.py` (see `cli_runs`), with
the session's shared 12-step reference run.
"""

import json
import os
import shutil
import signal
import socket
import time

import pytest

import cli_runs
from nested_tnt_jax import checkpointing, metrics, workdir as workdir_lib
from test_faults import COMPILING, refused_early


def test_a_second_trainer_is_refused_naming_the_holder_and_writes_nothing(reference, env, tmp_path):
    workdir = cli_runs.copy_checkpoints(reference, tmp_path / "run", steps=[6], config=True)
    holder = cli_runs.hold_lock(workdir)
    try:
        before = cli_runs.snapshot(workdir)
        message = refused_early(
            cli_runs.command(workdir),
            env,
            2,
            "in use by another trainer",
            f"pid {holder.pid}",
            f"host {socket.gethostname()}",
            "since ",
        )
        assert str(workdir) in message
        assert cli_runs.snapshot(workdir) == before
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock, nothing stale is left.
        holder.wait()
    proc = cli_runs.run(cli_runs.command(workdir), env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert cli_runs.results(workdir)["resumed_from_step"] == 6
    cli_runs.assert_same_results(workdir, reference)


def test_a_refused_fresh_run_leaves_no_workdir(env, tmp_path):
    """Refused after the lock was taken (here: an init_from of another model): no directory,
    no lock file."""
    workdir = tmp_path / "new" / "run"
    source = tmp_path / "model.safetensors"
    source.write_bytes(b"not a safetensors file")
    refused_early(cli_runs.command(workdir, f"--config.init_from={source}"), env, 1, str(source))
    assert not (tmp_path / "new").exists()


RESUME_CHANGES = {
    "batch size": (["--config.batch_size=32"], "", ["batch_size: 16 -> 32"]),
    "length": (
        [],
        "steps=24",
        ["num_train_steps: 12 -> 24", "new --workdir", "--config.init_from="],
    ),
    "optimiser and model": (
        ["--config.optim.learning_rate=0.5", "--config.model.overrides.depth=3"],
        "",
        ["optim.learning_rate: ", "-> 0.5", "model.overrides.depth: 2 -> 3"],
    ),
}


@pytest.mark.parametrize("flags,args,phrases", RESUME_CHANGES.values(), ids=RESUME_CHANGES)
def test_a_resume_that_changes_the_training_is_refused_before_writing(
    reference, env, tmp_path, flags, args, phrases
):
    workdir = cli_runs.copy_checkpoints(reference, tmp_path / "run", steps=[6], config=True)
    before = cli_runs.snapshot(workdir)
    refused_early(
        cli_runs.command(workdir, *flags, config_args=args),
        env,
        2,
        "holds a run with another config",
        *phrases,
    )
    assert cli_runs.snapshot(workdir) == before


def test_a_resume_may_change_what_does_not_alter_training(reference, env, tmp_path):
    workdir = cli_runs.copy_checkpoints(reference, tmp_path / "run", steps=[6], config=True)
    proc = cli_runs.run(
        cli_runs.command(
            workdir, "--config.eval_every_steps=4", "--config.checkpoint_every_steps=2"
        ),
        env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Resuming with config.eval_every_steps: 6 -> 4" in proc.stderr
    assert json.loads((workdir / metrics.CONFIG_FILE).read_text())["eval_every_steps"] == 4
    cli_runs.assert_same_params(workdir, reference)
    cli_runs.assert_same_results(workdir, reference)


def test_a_finished_run_run_again_is_left_untouched(reference, env, tmp_path):
    """Everything but the lock file, which names the trainer that last held it."""
    workdir = cli_runs.copy_run(reference, tmp_path / "run")
    before = cli_runs.snapshot(workdir)
    del before[workdir_lib.LOCK_FILE]
    proc = cli_runs.run(cli_runs.command(workdir), env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "already finished at step 12" in proc.stderr and "--reevaluate" in proc.stderr
    assert COMPILING not in proc.stderr
    after = cli_runs.snapshot(workdir)
    assert after.pop(workdir_lib.LOCK_FILE) and after == before

    proc = cli_runs.run(cli_runs.command(workdir, "--reevaluate"), env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    top1 = 100 * cli_runs.results(reference)["test_top1"]
    assert f"Re-evaluated: test at step 12: top-1 {top1:.1f}%" in proc.stderr
    after = cli_runs.snapshot(workdir)
    assert after.pop(workdir_lib.LOCK_FILE) and after == before


def _damaged_data_dir(shared_tfds, tmp_path):
    """A TFDS data_dir whose CIFAR-10 test file is a copy with 16 bytes overwritten among its
    first records (the others are links to the shared, read-only files)."""
    shared = shared_tfds / "cifar10"
    (version,) = [p for p in shared.iterdir() if p.is_dir()]
    target = tmp_path / "tfds" / "cifar10" / version.name
    target.mkdir(parents=True)
    for path in version.iterdir():
        (target / path.name).symlink_to(path)
    (damaged,) = target.glob("cifar10-test.array_record-*")
    damaged.unlink()
    shutil.copyfile(version / damaged.name, damaged)
    os.chmod(damaged, 0o644)
    with open(damaged, "r+b") as f:
        f.seek(4000)
        f.write(b"\xff" * 16)
    return tmp_path / "tfds", damaged


def test_a_damaged_data_file_is_named_with_its_split_before_training(env, shared_tfds, tmp_path):
    data_dir, damaged = _damaged_data_dir(shared_tfds, tmp_path)
    workdir = tmp_path / "run"
    start = time.monotonic()
    refused_early(
        cli_runs.command(workdir, f"--config.dataset.data_dir={data_dir}"),
        env,
        1,
        f"The data file {damaged}",
        "'test[:64]' split of cifar10",
        "config.dataset.test_split",
        "Nothing was trained",
    )
    assert time.monotonic() - start < 60
    assert not workdir.exists()


def test_ctrl_c_saves_and_exits_zero_and_a_second_one_stops_at_once(reference, env, tmp_path):
    """SIGINT as SIGTERM (test_faults): a checkpoint at the step, exit 0, no traceback; and a
    second one while it saves ends the program at once."""
    sig = signal.SIGINT
    workdir, log = tmp_path / "run", tmp_path / "stopped.log"
    proc = cli_runs.start(cli_runs.command(workdir, config_args="steps=400"), env, log)
    try:
        cli_runs.wait_for_checkpoint(proc, workdir, 3, log)
        proc.send_signal(sig)
        assert proc.wait(timeout=120) == 0, cli_runs.tail(log)
    finally:
        proc.kill()
        proc.wait()
    text = log.read_text()
    assert "Traceback" not in text and f"Received {sig.name}" in text
    stopped = max(cli_runs.complete_steps(workdir))
    assert f"Stopped at step {stopped} on request" in text

    log = tmp_path / "stopped_twice.log"
    proc = cli_runs.start(cli_runs.command(workdir, config_args="steps=400"), env, log)
    try:
        cli_runs.wait_for_checkpoint(proc, workdir, (stopped // 3 + 2) * 3, log)
        proc.send_signal(sig)
        cli_runs.wait_until(
            proc,
            log,
            lambda: log.read_text().count("Received SIGINT") == 1,
            "the first signal's handler",
        )
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == -sig
    finally:
        proc.kill()
        proc.wait()
    assert "Traceback" not in log.read_text()


def test_init_from_records_what_it_loaded_and_refuses_a_run_still_training(
    reference, env, tmp_path
):
    source = cli_runs.copy_run(reference, tmp_path / "source")
    workdir = tmp_path / "run"
    holder = cli_runs.hold_lock(source)
    try:
        refused_early(
            cli_runs.command(workdir, f"--config.init_from={source}"),
            env,
            2,
            "still training",
            f"pid {holder.pid}",
            f"--config.init_from={source / 'checkpoints' / 'N'}",
            "complete steps now: 6, 9, 12",
        )
        assert not workdir.exists()
        step_dir = source / checkpointing.CHECKPOINT_DIR / "6"
        proc = cli_runs.run(cli_runs.command(workdir, f"--config.init_from={step_dir}"), env)
        assert proc.returncode == 0, proc.stderr[-4000:]
    finally:
        holder.kill()
        holder.wait()
    recorded = json.loads((workdir / metrics.CONFIG_FILE).read_text())[workdir_lib.INIT_RECORD]
    assert recorded["path"] == str(step_dir) and recorded["step"] == 6
    assert len(recorded["digest"]) == 64
    assert cli_runs.results(workdir)["init_from"] == recorded
    # The digest is that of the loaded parameters: another step gives another one.
    other = tmp_path / "other"
    proc = cli_runs.run(cli_runs.command(other, f"--config.init_from={reference}"), env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    again = cli_runs.results(other)["init_from"]
    assert again["step"] == 12 and again["digest"] != recorded["digest"]


def test_the_terminal_of_a_short_run_holds_what_a_user_needs(reference):
    """The reference run (12 steps, logging every 3, validation at 6) at the default
    verbosity: the start block, one line per logging interval, the validation and test lines,
    the result; no library chatter."""
    lines = cli_runs.reference_log(reference).read_text().splitlines()
    assert len(lines) <= 22, "\n".join(lines)
    text = "\n".join(lines)
    for phrase in (
        "Training:",
        "model:",
        "12,858 parameters",
        "dataset:",
        "512",
        "devices:",
        "8 x cpu",
        f"workdir: {reference}",
        "fresh, 12 steps",
        "step 3/12: loss",
        "img/s, ETA",
        "validation at step 6: top-1",
        "test at step 12: top-1",
        "Finished in",
        "results in",
    ):
        assert phrase in text, phrase
    for noise in (
        "orbax",
        "absl::InitializeLog",
        "overriding",
        "Traceback",
        "parameter_overview",
        "oneDNN",
        "| Name",
    ):
        assert noise not in text, noise
    assert "| Name" in (reference / metrics.PARAMETERS_FILE).read_text()


def test_verbose_shows_the_libraries_lines(reference, env, tmp_path):
    workdir = cli_runs.copy_run(reference, tmp_path / "run")
    proc = cli_runs.run(cli_runs.command(workdir, "--reevaluate", "-v", "1"), env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "checkpoint_manager.py" in proc.stderr  # orbax's INFO lines


def test_history_has_training_rows_apart_from_the_evaluations(reference):
    history = metrics.read_history(str(reference))
    train = [h for h in history if h["split"] == "train"]
    assert [h["step"] for h in train] == [3, 6, 9, 12]
    for row in train:
        assert tuple(row) == metrics.TRAIN_KEYS
        assert row["img_per_sec"] > 0 and row["learning_rate"] > 0 and row["grad_norm"] > 0
    evaluations = [h for h in history if h["split"] != "train"]
    assert [(h["step"], h["split"]) for h in evaluations] == [(6, "eval"), (12, "test")]
    for row in evaluations:
        assert set(row) == {"step", "split", "top1", "top5", "loss", "examples"}


def test_the_first_progress_line_does_not_overstate_the_speed(env, tmp_path):
    """A run whose first logging interval is long prints an early progress line 10 steps
    after its first (compiling) step. Its steps/s must be measured over steps that ran, so it
    is at most twice the whole run's rate (steps are dispatched asynchronously: counted when
    dispatched, 10 steps "ran" in a fraction of their time)."""
    workdir = tmp_path / "run"
    every = [
        "--config.log_every_steps=40",
        "--config.eval_every_steps=40",
        "--config.checkpoint_every_steps=40",
    ]
    proc = cli_runs.run(cli_runs.command(workdir, *every, config_args="steps=40"), env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    early = [line for line in proc.stderr.splitlines() if "step 11/40: " in line]
    assert len(early) == 1, proc.stderr[-4000:]
    first_rate = float(early[0].split("step 11/40: ")[1].split(" steps/s")[0])
    results = cli_runs.results(workdir)
    whole_rate = results["train_img_per_sec_per_device"] * results["devices"] / 16  # batch 16
    assert first_rate <= 2 * whole_rate, (first_rate, whole_rate)
