"""`gs://` workdirs and data through the real CLI, against the local Cloud Storage emulator.

Run by `tests/test_gcs.py` inside a network namespace with only loopback (this module starts
the emulator there); on its own it would reach the emulator alone too, but nothing would catch
a client that missed its setting. Each case drives `python -m nested_tnt_jax.main` (and the
tools) as a user does, on the tiny CLI config (`tests/cli_config.py`) over a CIFAR-10 subset
copied into the emulator's bucket.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import gcsfs
import numpy as np
import pytest
from etils import epath
from PIL import Image
from tensorboard.backend.event_processing import event_file_loader

import cli_runs
import gcs_emulator
import shared_data
from benchmarks import prepare_device
from nested_tnt_jax import checkpointing, metrics

BUCKET = "runs"
DATA = f"gs://{BUCKET}/tfds"
SUBSET = {"train": 600, "test": 100}  # The CLI config reads train[:576] and test[:64].


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """The emulator with the bucket and the CIFAR-10 subset (also kept on local disk)."""
    root = tmp_path_factory.mktemp("gcs")
    server = gcs_emulator.Emulator(root / "emulator.log")
    os.environ.update(server.env)
    server.create_bucket(BUCKET)
    local_data = root / "tfds"
    prepare_device.write_subset(shared_data.shared_tfds(), local_data, SUBSET)
    gcsfs.GCSFileSystem().put(f"{local_data}/", DATA[len("gs://") :], recursive=True)
    server.local_data = local_data
    yield server
    server.stop()


@pytest.fixture(scope="module")
def env(tmp_path_factory, emulator):
    return {**cli_runs.environment(tmp_path_factory), **emulator.env}


def run(workdir: str, env, *flags: str, data_dir: str = DATA, timeout: float = 400):
    return cli_runs.run(
        cli_runs.command(workdir, f"--config.dataset.data_dir={data_dir}", *flags),
        env,
        timeout=timeout,
    )


def path(url: str) -> epath.Path:
    return epath.Path(url)


def rows(workdir: str, splits=("eval", "test")) -> list[dict]:
    return [r for r in metrics.read_history(workdir) if r["split"] in splits]


def results(workdir: str) -> dict:
    return json.loads((path(workdir) / "results.json").read_text())


@pytest.fixture(scope="module")
def gcs_run(env):
    """An uninterrupted run with its workdir and data on Cloud Storage."""
    workdir = f"gs://{BUCKET}/reference"
    proc = run(workdir, env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir


def test_quick_start_on_cloud_storage_equals_local(gcs_run, emulator, env, tmp_path):
    local = tmp_path / "local"
    proc = run(str(local), env, data_dir=str(emulator.local_data))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert rows(gcs_run) == rows(str(local))
    assert [r for r in rows(gcs_run, ("train",))] != []
    for key in cli_runs.RESULT_METRICS:
        assert results(gcs_run)[key] == results(str(local))[key], key
    names = {p.name for p in path(gcs_run).iterdir()}
    assert {
        "config.json",
        "history.jsonl",
        "results.json",
        "parameters.txt",
        "checkpoints",
    } <= names
    assert any(n.startswith("events.out.tfevents.") for n in names)
    assert "trainer.lock" not in names  # A clean exit removes the lock.


def test_events_on_cloud_storage_read_back(gcs_run):
    event_file = next(p for p in path(gcs_run).iterdir() if "tfevents" in p.name)
    local = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / f"events-{os.getpid()}"
    local.write_bytes(event_file.read_bytes())
    tags = {
        v.tag for e in event_file_loader.EventFileLoader(str(local)).Load() for v in e.summary.value
    }
    local.unlink()
    assert {"train/loss", "eval/top1", "test/top1"} <= tags


def test_killed_run_resumes_exactly(gcs_run, env, tmp_path):
    workdir = f"gs://{BUCKET}/killed"
    log = tmp_path / "killed.log"
    proc = cli_runs.start(cli_runs.command(workdir, f"--config.dataset.data_dir={DATA}"), env, log)
    # Orbax writes commit_success.txt last on Cloud Storage: one object to poll.
    marker = path(workdir) / checkpointing.CHECKPOINT_DIR / "3" / "commit_success.txt"
    cli_runs.wait_until(proc, log, marker.exists, "checkpoint 3")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (path(workdir) / "results.json").exists(), "finished before the kill"
    assert (path(workdir) / "trainer.lock").exists()  # Left behind by the kill.
    again = run(workdir, env)
    assert again.returncode == 0, again.stderr[-4000:]
    assert 3 <= results(workdir)["resumed_from_step"] < cli_runs.STEPS
    assert "Took over the lock" in again.stderr and "its process is gone" in again.stderr
    assert rows(workdir) == rows(gcs_run)
    for key in cli_runs.RESULT_METRICS:
        assert results(workdir)[key] == results(gcs_run)[key], key
    history = [(r["step"], r["split"]) for r in rows(workdir, ("train", "eval", "test"))]
    assert len(history) == len(set(history))  # No row twice after the resume.


def test_a_step_without_its_commit_mark_is_not_resumed_from(gcs_run, env):
    """Orbax marks a step finished on Cloud Storage by writing `commit_success.txt` last (there
    is no rename); a save cut off before it leaves a step the resume must not trust."""
    workdir = f"gs://{BUCKET}/uncommitted"
    fs = gcsfs.GCSFileSystem()
    for step in ("6", "9"):
        fs.copy(
            f"{gcs_run[5:]}/checkpoints/{step}", f"{workdir[5:]}/checkpoints/{step}", recursive=True
        )
    fs.copy(f"{gcs_run[5:]}/config.json", f"{workdir[5:]}/config.json")
    fs.rm(f"{workdir[5:]}/checkpoints/9/commit_success.txt")
    assert checkpointing.complete_steps(workdir) == [6]
    proc = run(workdir, env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert results(workdir)["resumed_from_step"] == 6
    for key in cli_runs.RESULT_METRICS:
        assert results(workdir)[key] == results(gcs_run)[key], key


def hold_cloud_lock(workdir: str, env) -> subprocess.Popen:
    code = (
        "import sys, time; from nested_tnt_jax import workdir; "
        "workdir.CloudLock(sys.argv[1]).acquire(); print('held', flush=True); "
        "time.sleep(600)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, workdir],
        cwd=cli_runs.ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_trainer_is_refused_and_writes_nothing(env):
    workdir = f"gs://{BUCKET}/held"
    holder = hold_cloud_lock(workdir, env)
    try:
        before = {p.name: p.read_bytes() for p in path(workdir).iterdir()}
        proc = run(workdir, env)
        after = {p.name: p.read_bytes() for p in path(workdir).iterdir()}
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "in use by another trainer" in proc.stderr and f"pid {holder.pid}" in proc.stderr
    assert before == after == {k: v for k, v in before.items() if k == "trainer.lock"}


def test_stale_lock_is_taken_over_with_a_line_naming_its_holder(env):
    workdir = f"gs://{BUCKET}/stale"
    stale = {
        "pid": 4321,
        "host": "tpu-worker-gone",
        "started": "2026-01-01 00:00:00",
        "heartbeat": time.time() - 1000,
    }
    (path(workdir) / "trainer.lock").write_text(json.dumps(stale))
    proc = run(workdir, env, "--config.lock_timeout_s=60")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Took over the lock" in proc.stderr
    assert "pid 4321 on host tpu-worker-gone" in proc.stderr
    assert not (path(workdir) / "trainer.lock").exists()


def test_tools_read_a_cloud_storage_run(gcs_run, env, tmp_path):
    # The data through $TFDS_DATA_DIR this time.
    tuned = run(
        f"gs://{BUCKET}/tuned",
        {**env, "TFDS_DATA_DIR": DATA},
        f"--config.init_from={gcs_run}",
        data_dir="",
    )
    assert tuned.returncode == 0, tuned.stderr[-4000:]
    assert (
        json.loads((path(f"gs://{BUCKET}/tuned") / "config.json").read_text())["init_from_loaded"][
            "path"
        ]
        == gcs_run
    )
    image = tmp_path / "cat.png"
    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(image)
    for module, args in (
        ("nested_tnt_jax.predict", [f"--workdir={gcs_run}", str(image)]),
        (
            "nested_tnt_jax.visualize",
            [f"--workdir={gcs_run}", f"--image={image}", f"--out={tmp_path / 'maps'}"],
        ),
        ("experiments.curves", [gcs_run, str(tmp_path / "curve.png")]),
    ):
        proc = cli_runs.run([sys.executable, "-m", module, *args], env)
        assert proc.returncode == 0, (module, proc.stderr[-3000:])
    assert (tmp_path / "curve.png").stat().st_size > 0
    assert list((tmp_path / "maps").glob("*.png"))


def test_missing_bucket_and_data_are_named(env):
    proc = run("gs://no-such-bucket/run", env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "gs://no-such-bucket" in proc.stderr and "does not exist" in proc.stderr
    proc = run(f"gs://{BUCKET}/nodata", env, data_dir=f"gs://{BUCKET}/missing")
    assert proc.returncode != 0
    assert f"gs://{BUCKET}/missing" in proc.stderr and "Traceback" not in proc.stderr
    assert not path(f"gs://{BUCKET}/nodata").exists()  # Refused before anything was written.
