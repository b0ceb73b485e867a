"""Fault injection through the real CLI, each case as README "Failure modes" states it.

Kills, a truncated or half-written checkpoint, mistyped and impossible configs, a missing
dataset, an unwritable workdir, a write error while checkpointing, divergence and untrusted
checkpoint files, all driven as a user would: `python -m nested_tnt_jax.main` in a
subprocess (see `cli_runs`), on 8 simulated CPU devices, compared with one uninterrupted run.
"""

import os
import pathlib
import pickle
import random
import re
import resource
import signal
import subprocess
import time

import numpy as np
import pytest

import cli_runs
from nested_tnt_jax import checkpointing, metrics

# A refusal must come before any compilation: `JAX_LOG_COMPILES` (set by `cli_runs`) makes
# jax log this for every compiled program.
COMPILING = "Compiling "


def assert_explained(proc: subprocess.CompletedProcess, code: int, *phrases: str) -> str:
    """Exit `code`, no traceback, and one paragraph (line) `error: ...` on stderr holding
    `phrases`; returns that paragraph."""
    assert proc.returncode == code, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    messages = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(messages) == 1, proc.stderr[-4000:]
    message = messages[0]
    for phrase in phrases:
        assert phrase in message, message
    return message


def refused_early(cmd, env, code: int, *phrases: str) -> str:
    """Runs `cmd`, which must be refused in seconds without compiling anything."""
    start = time.monotonic()
    proc = cli_runs.run(cmd, env, timeout=120)
    message = assert_explained(proc, code, *phrases)
    assert COMPILING not in proc.stderr, proc.stderr[-4000:]
    assert time.monotonic() - start < 90
    return message


CONFIG_MISTAKES = {
    "unknown key": (["--config.optim.lr=0.1"], "config.optim has no field 'lr'"),
    "wrong type": (["--config.batch_size=big"], "--config.batch_size=big"),
    "image size not a multiple of the patch": (
        ["--config.image_size=36"],
        "config.image_size is 36",
    ),
    "batch not divisible over 8 devices": (["--config.batch_size=12"], "config.batch_size is 12"),
    "unknown attention core": (
        ["--config.model.overrides.attention_core=flash"],
        "Unknown attention_core 'flash'",
    ),
    "negative length": (["--config.num_train_steps=-5"], "config.num_train_steps is -5"),
    "negative learning rate": (
        ["--config.optim.learning_rate=-1"],
        "config.optim.learning_rate is -1",
    ),
    "warmup as long as the run": (
        ["--config.optim.warmup_steps=12"],
        "config.optim.warmup_steps is 12",
    ),
}


@pytest.mark.parametrize("flags,phrase", CONFIG_MISTAKES.values(), ids=CONFIG_MISTAKES)
def test_config_mistakes_are_refused_before_any_work(env, tmp_path, flags, phrase):
    workdir = tmp_path / "run"
    refused_early(cli_runs.command(workdir, *flags), env, 2, phrase)
    assert not workdir.exists()


def test_unwritable_workdir_is_explained(env, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    workdir = blocker / "run"
    refused_early(cli_runs.command(workdir), env, 1, str(workdir), "cannot be written")


class _Exploit:
    """Pickled, it runs `touch MARKER` when unpickled: what a malicious .pth file does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _pickle_exploit(tmp_path) -> pathlib.Path:
    path = tmp_path / "model.pth"
    path.write_bytes(pickle.dumps({"state_dict": _Exploit(tmp_path / "unpickled")}))
    return path


def _random_safetensors(tmp_path) -> pathlib.Path:
    path = tmp_path / "model.safetensors"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


UNTRUSTED_FILES = {
    "pickle exploit": (_pickle_exploit, "Weights only load failed"),
    "random safetensors": (_random_safetensors, "model.safetensors"),
}


@pytest.mark.parametrize("make,phrase", UNTRUSTED_FILES.values(), ids=UNTRUSTED_FILES)
def test_untrusted_checkpoint_file_is_refused_and_never_unpickled(env, tmp_path, make, phrase):
    source = make(tmp_path)
    workdir = tmp_path / "run"
    refused_early(
        cli_runs.command(workdir, f"--config.init_from={source}"), env, 1, str(source), phrase
    )
    assert not (tmp_path / "unpickled").exists()
    assert not workdir.exists()


def test_init_from_a_run_with_random_bytes_is_refused(reference, env, tmp_path):
    source = cli_runs.copy_checkpoints(reference, tmp_path / "other_run")
    rng = np.random.default_rng(0)
    for path in (source / checkpointing.CHECKPOINT_DIR).rglob("d/*"):
        path.write_bytes(rng.bytes(path.stat().st_size))
    workdir = tmp_path / "run"
    refused_early(
        cli_runs.command(workdir, f"--config.init_from={source}"),
        env,
        1,
        f"Checkpoint 12 in {source / 'checkpoints'} cannot be read",
    )
    assert not workdir.exists()


def test_init_from_a_run_of_another_model_is_refused_before_any_work(reference, env, tmp_path):
    """Fine-tuning the ViT from the TNT reference run: shapes are compared before compiling."""
    workdir = tmp_path / "run"
    cmd = cli_runs.command(workdir, f"--config.init_from={reference}", config_args="model=vit")
    refused_early(cmd, env, 1, "config.init_from does not match the model", "blocks_0/")
    assert not workdir.exists()


def test_missing_dataset_offline_is_explained_and_the_run_is_untouched(reference, env, tmp_path):
    # No network for the subprocess: TFDS must not start downloading CIFAR-10.
    offline = tmp_path / "offline"
    offline.mkdir()
    (offline / "sitecustomize.py").write_text(
        "import socket\n\n\ndef _offline(*args, **kwargs):\n"
        "    raise OSError('network disabled by test_faults')\n\n\n"
        "socket.create_connection = _offline\n"
    )
    empty = tmp_path / "tfds"
    empty.mkdir()
    workdir = cli_runs.copy_checkpoints(reference, tmp_path / "run")
    before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
    offline_env = {
        **env,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(offline), env.get("PYTHONPATH")])),
    }
    cmd = cli_runs.command(workdir, f"--config.dataset.data_dir={empty}")
    refused_early(
        cmd,
        offline_env,
        1,
        "'cifar10' is not prepared",
        str(empty),
        str(empty / "downloads" / "manual"),
    )
    assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before
    assert not list(empty.iterdir())


def test_sigkill_at_a_random_step_then_same_command_equals_uninterrupted(reference, env, tmp_path):
    rng = random.Random()
    after, delay = rng.choice([3, 6]), rng.uniform(0.0, 0.2)
    workdir, log = tmp_path / "run", tmp_path / "killed.log"
    proc = cli_runs.start(cli_runs.command(workdir), env, log)
    try:
        cli_runs.wait_for_checkpoint(proc, workdir, after, log)
        time.sleep(delay)
        assert proc.poll() is None, f"finished before the kill ({after}, {delay:.2f} s)"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (workdir / metrics.RESULTS_FILE).exists()

    again = cli_runs.run(cli_runs.command(workdir), env)
    assert again.returncode == 0, again.stderr[-4000:]
    resumed = cli_runs.results(workdir)["resumed_from_step"]
    assert after <= resumed < cli_runs.STEPS, (after, delay)
    assert not any("tmp" in p.name for p in (workdir / checkpointing.CHECKPOINT_DIR).iterdir())
    cli_runs.assert_same_params(workdir, reference)
    cli_runs.assert_same_results(workdir, reference)


def test_sigterm_saves_exits_zero_and_resumes_exactly(reference, env, tmp_path):
    workdir, log = tmp_path / "run", tmp_path / "terminated.log"
    proc = cli_runs.start(cli_runs.command(workdir), env, log)
    try:
        cli_runs.wait_for_checkpoint(proc, workdir, 3, log)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, cli_runs.tail(log)
    finally:
        proc.kill()
        proc.wait()
    stopped = max(cli_runs.complete_steps(workdir))
    assert 3 <= stopped < cli_runs.STEPS
    assert f"Stopped at step {stopped} on request" in log.read_text()
    assert not (workdir / metrics.RESULTS_FILE).exists()

    again = cli_runs.run(cli_runs.command(workdir), env)
    assert again.returncode == 0, again.stderr[-4000:]
    assert cli_runs.results(workdir)["resumed_from_step"] == stopped
    cli_runs.assert_same_params(workdir, reference)
    cli_runs.assert_same_results(workdir, reference)


def test_truncated_and_half_written_checkpoints_fall_back(reference, env, tmp_path):
    """Newest (12) killed mid-write, the next (9) cut short: resume from 6, as if nothing
    happened."""
    workdir = cli_runs.copy_checkpoints(reference, tmp_path / "run")
    checkpoints = workdir / checkpointing.CHECKPOINT_DIR
    assert cli_runs.complete_steps(workdir) == [6, 9, 12]
    (checkpoints / "12").rename(checkpoints / "12.orbax-checkpoint-tmp")  # orbax's tmp name
    (checkpoints / "12.orbax-checkpoint-tmp" / "state" / "_METADATA").unlink()
    for path in (checkpoints / "9" / "state").rglob("d/*"):
        os.truncate(path, path.stat().st_size // 2)

    proc = cli_runs.run(cli_runs.command(workdir), env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"Checkpoint 9 in {checkpoints} cannot be restored" in proc.stderr
    assert cli_runs.results(workdir)["resumed_from_step"] == 6
    assert [p.name.split("-")[0] for p in (workdir / checkpointing.UNREADABLE_DIR).iterdir()] == [
        "9"
    ]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["12", "6", "9"]  # tmp cleaned
    cli_runs.assert_same_params(workdir, reference)
    cli_runs.assert_same_results(workdir, reference)


def test_write_error_while_checkpointing_keeps_earlier_checkpoints(reference, env, tmp_path):
    """A full disk, simulated by a 16 KiB file size limit (RLIMIT_FSIZE binds root too, and
    Python ignores SIGXFSZ, so writes fail with EFBIG): resumed at 6, the save of 9 fails."""
    workdir = cli_runs.copy_checkpoints(reference, tmp_path / "run", steps=[6])
    proc = subprocess.Popen(
        cli_runs.command(workdir),
        cwd=cli_runs.ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    limit = 16 * 1024  # above the config and log files, below a checkpoint's files
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (limit, limit))
    stdout, stderr = proc.communicate(timeout=400)
    assert_explained(
        subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr),
        1,
        f"Writing a checkpoint into {workdir / 'checkpoints'} failed",
        "File too large",
        "(steps 6) are intact",
    )
    assert cli_runs.complete_steps(workdir) == [6]
    assert checkpointing.load_run_params(str(workdir))["head"]["kernel"].shape == (16, 10)


def test_divergence_stops_naming_step_and_metric_and_keeps_the_last_good_checkpoint(
    reference, env, tmp_path
):
    workdir = cli_runs.copy_checkpoints(reference, tmp_path / "run")
    cmd = cli_runs.command(workdir, "--config.optim.learning_rate=1e6", config_args="steps=18")
    message = assert_explained(cli_runs.run(cmd, env), 1)
    stop = re.search(r"Training stopped: (loss|grad_norm) is (nan|-?inf) at step (\d+)\.", message)
    assert stop and 12 < int(stop[3]) <= 18, message
    assert cli_runs.complete_steps(workdir) == [6, 9, 12]
    cli_runs.assert_same_params(workdir, reference)
