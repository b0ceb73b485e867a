"""experiments/tpu/ end to end on a simulated pod, against the local Cloud Storage emulator.

Run by `tests/test_tpu_scripts.py` inside a network namespace with only loopback. The scripts
run as a user runs them, with the stand-in gcloud (`tests/fake_gcloud.py`) first on PATH: a
v4-16 slice is two hosts of 4 chips, here two worker homes of 4 CPU devices each. setup.sh
clones the repository from a bare copy of this checkout (INSTALL=no: the hosts' image has the
environment, and no network), data.sh uploads a CIFAR-10 subset to the emulator's bucket, and
launch.sh starts the real two-process job on it with the tiny CLI config
(`tests/cli_config.py`). spot.sh then goes through a preemption with queued resources.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess

import pytest

import cli_runs
import fake_gcloud
import gcs_emulator
import shared_data
from benchmarks import prepare_device
from gcs_cases import SUBSET, path, results, rows
from nested_tnt_jax import checkpointing

BUCKET = "pod"
TPU = "nested-tnt"
SCRIPTS = cli_runs.ROOT / "experiments" / "tpu"
PROJECT_HELP = "gcloud config set project PROJECT_ID"
# Reaches the trainer as one argument only if launch.sh quotes it for the hosts' shell; the
# trainer's refusal repeats it as it arrived.
HOSTILE = """--config.seed=it's "q" $HOME `id` *"""
# Spaces and glob characters: the same records as train[:512], recorded in config.json.
SPLIT = "train[:256] + train[256:512]"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """The emulator with an empty bucket; the CIFAR-10 subset prepared on local disk."""
    root = tmp_path_factory.mktemp("gcs")
    server = gcs_emulator.Emulator(root / "emulator.log")
    os.environ.update(server.env)
    server.create_bucket(BUCKET)
    server.local_data = root / "tfds"
    prepare_device.write_subset(shared_data.shared_tfds(), server.local_data, SUBSET)
    yield server
    server.stop()


def _git(*args: str, cwd=cli_runs.ROOT) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def pod(tmp_path_factory, emulator):
    """The stand-in gcloud and the scripts' environment: (state file, env)."""
    root = tmp_path_factory.mktemp("pod")
    # REPO_URL: a bare repository whose main branch is this checkout's tracked files as they
    # are now (`git stash create`: the committed tree plus uncommitted changes).
    origin = root / "origin.git"
    _git("init", "--bare", "--quiet", str(origin), cwd=root)
    _git(
        "push",
        "--quiet",
        str(origin),
        f"{_git('stash', 'create') or _git('rev-parse', 'HEAD')}:refs/heads/main",
    )
    _git("symbolic-ref", "HEAD", "refs/heads/main", cwd=origin)
    host_env = {
        **emulator.env,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONDONTWRITEBYTECODE": "1",
        "JAX_COMPILATION_CACHE_DIR": str(root / "jax_cache"),
    }
    added = fake_gcloud.install(root / "gcloud", "test-project", host_env)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PROJECT", "WORKDIR", "TFDS_DATA_DIR", "TPU_NAME")
    }
    env.update(
        added,
        BUCKET=BUCKET,
        REPO_URL=str(origin),
        REPO_REF="main",
        ACCELERATOR_TYPE="v4-16",
        INSTALL="no",
        POLL_S="0.2",
        LOCAL_TFDS_DIR=str(emulator.local_data),
        CONFIG=cli_runs.CONFIG,
    )
    return pathlib.Path(added["FAKE_GCLOUD_STATE"]), env


def script(
    name: str, env: dict, *args: str, timeout: float = 120, **more: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPTS / name), *args],
        env={**env, **more},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def calls(state_path, *prefix: str) -> list[list[str]]:
    """The stand-in's calls so far that start with `prefix`."""
    return [c for c in fake_gcloud.read(state_path)["calls"] if c[: len(prefix)] == list(prefix)]


def test_without_a_project_each_script_stops_at_once(pod):
    state_path, env = pod
    with fake_gcloud.state(state_path) as data:
        data["project"] = None
    try:
        for name in ("create.sh", "setup.sh", "data.sh", "launch.sh", "spot.sh", "delete.sh"):
            proc = script(name, env)
            assert proc.returncode == 2, (name, proc.stderr)
            assert proc.stderr.count("\n") == 1 and PROJECT_HELP in proc.stderr, proc.stderr
    finally:
        with fake_gcloud.state(state_path) as data:
            data["project"] = "test-project"
    assert all(c[:2] == ["config", "get-value"] for c in fake_gcloud.read(state_path)["calls"])


def test_a_local_workdir_or_data_dir_is_refused(pod):
    state_path, env = pod
    before = len(fake_gcloud.read(state_path)["calls"])
    for var in ("WORKDIR", "TFDS_DATA_DIR"):
        proc = script("launch.sh", env, **{var: "/home/me/tfds"})
        assert proc.returncode == 2, proc.stderr
        assert f"{var} is '/home/me/tfds'; the hosts share it only as a gs:// path" in proc.stderr
    assert all(
        c[:2] == ["config", "get-value"] for c in fake_gcloud.read(state_path)["calls"][before:]
    )


def test_spot_counts_failed_creates_and_gives_up(pod):
    state_path, env = pod
    with fake_gcloud.state(state_path) as data:
        data["fail"]["create"] = 100  # No capacity, ever.
    try:
        proc = script("spot.sh", env, MAX_ATTEMPTS="3", TPU_NAME="no-capacity", RUN="never")
    finally:
        with fake_gcloud.state(state_path) as data:
            data["fail"]["create"] = 0
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "giving up after 3 creates and launches (MAX_ATTEMPTS)" in proc.stderr
    assert len(calls(state_path, "compute", "tpus", "tpu-vm", "create")) == 3


def test_spot_retries_a_failed_delete(pod):
    state_path, env = pod
    proc = script("create.sh", env, TPU_NAME="flaky", ACCELERATOR_TYPE="v4-8")
    assert proc.returncode == 0, proc.stderr
    fake_gcloud.preempt(state_path, "flaky")
    with fake_gcloud.state(state_path) as data:
        data["fail"]["delete"] = 1
    # MAX_ATTEMPTS=0: once the TPU is gone, the next step (a create) is refused.
    proc = script("spot.sh", env, MAX_ATTEMPTS="0", TPU_NAME="flaky", RUN="never")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "deleting flaky failed; trying again" in proc.stdout
    assert "giving up after 0 creates and launches" in proc.stderr
    assert len(calls(state_path, "compute", "tpus", "tpu-vm", "delete", "flaky")) == 2
    assert "flaky" not in fake_gcloud.read(state_path)["tpus"]


@pytest.fixture(scope="module")
def slice_ready(pod):
    """create.sh, setup.sh and data.sh on the two-host slice."""
    state_path, env = pod
    proc = script("create.sh", env)
    assert proc.returncode == 0, proc.stderr
    tpu = fake_gcloud.read(state_path)["tpus"][TPU]
    assert (tpu["state"], tpu["hosts"], tpu["chips_per_host"]) == ("READY", 2, 4)
    proc = script("setup.sh", env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-2:] == ["4 cpu", "4 cpu"]  # Each host's jax devices.
    for i in range(2):
        clone = pathlib.Path(tpu["homes"]) / f"worker-{i}" / "nested_tnt_jax"
        assert (clone / "nested_tnt_jax" / "main.py").is_file()
    proc = script("data.sh", env)
    assert proc.returncode == 0, proc.stderr
    assert (path(f"gs://{BUCKET}/tfds/cifar10") / "3.0.2" / "dataset_info.json").exists()
    again = script("data.sh", env)
    assert again.returncode == 0 and "already there" in again.stdout, again.stderr
    assert len(calls(state_path, "storage", "cp")) == 1
    return state_path, env


def test_launch_passes_each_argument_intact(slice_ready):
    _, env = slice_ready
    proc = script("launch.sh", env, HOSTILE, RUN="refused")
    assert proc.returncode != 0
    # Both hosts' trainers refuse the one argument, as it was given.
    assert proc.stderr.count(f"flag {HOSTILE}: invalid literal for int()") == 2, proc.stderr
    assert not path(f"gs://{BUCKET}/runs/refused").exists()


@pytest.fixture(scope="module")
def two_host_run(slice_ready):
    """launch.sh: an uninterrupted two-host run in gs://pod/runs/plain; its workdir."""
    _, env = slice_ready
    proc = script(
        "launch.sh", env, f"--config.dataset.train_split={SPLIT}", RUN="plain", timeout=400
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    for i in range(2):
        assert f"JAX process {i} / 2, 4 local devices" in proc.stderr
    return f"gs://{BUCKET}/runs/plain"


def test_two_host_run_on_cloud_storage(two_host_run):
    config = json.loads((path(two_host_run) / "config.json").read_text())
    assert config["dataset"]["train_split"] == SPLIT
    assert config["dataset"]["data_dir"] == f"gs://{BUCKET}/tfds"
    assert results(two_host_run)["devices"] == 8
    assert results(two_host_run)["steps"] == cli_runs.STEPS
    assert [r["split"] for r in rows(two_host_run)] == ["eval", "test"]


def test_spot_recreates_a_preempted_slice_and_finishes_like_an_uninterrupted_run(
    slice_ready, two_host_run, tmp_path
):
    state_path, env = slice_ready
    assert script("delete.sh", env).returncode == 0
    workdir = f"gs://{BUCKET}/runs/spot"
    log = tmp_path / "spot.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            ["bash", str(SCRIPTS / "spot.sh"), f"--config.dataset.train_split={SPLIT}"],
            env={**env, "RUN": "spot", "PROVISIONING": "queued"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        marker = path(workdir) / checkpointing.CHECKPOINT_DIR / "3" / "commit_success.txt"
        cli_runs.wait_until(proc, log, marker.exists, "checkpoint 3")
        fake_gcloud.preempt(state_path, TPU)
        proc.wait(timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert proc.returncode == 0, text[-6000:]
    assert "the run stopped (preempted or failed)" in text
    assert f"Finished: {workdir}/results.json" in text
    qr = ("compute", "tpus", "queued-resources")
    assert len(calls(state_path, *qr, "create")) == 2
    assert all("--spot" in c for c in calls(state_path, *qr, "create"))
    assert len(calls(state_path, *qr, "delete")) == 1
    assert 3 <= results(workdir)["resumed_from_step"] < cli_runs.STEPS
    assert rows(workdir) == rows(two_host_run)
    for key in cli_runs.RESULT_METRICS:
        assert results(workdir)[key] == results(two_host_run)[key], key
    assert script("delete.sh", env, PROVISIONING="queued").returncode == 0
    assert fake_gcloud.read(state_path)["tpus"] == {}
