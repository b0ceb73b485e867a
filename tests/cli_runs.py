"""The real CLI in subprocesses, for test_faults and test_multiprocess.

Runs use `tests/cli_config.py` (a tiny model on slices of the shared CIFAR-10). Compiled
programs go to a persistent compilation cache shared by every subprocess of the test session,
so only the first run of each layout compiles (about a minute on a 2-core CPU; later runs take
seconds). Runs that several tests compare with (the uninterrupted 12-step reference) are made
once per session and shared, under a file lock, by the xdist workers.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

import jax
import numpy as np
import pytest

from nested_tnt_jax import checkpointing, metrics

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG = "tests/cli_config.py"
STEPS = 12
# results.json entries that depend on the training alone (not on timing or on a resume).
RESULT_METRICS = (
    "test_top1",
    "test_top5",
    "test_loss",
    "test_examples",
    "num_params",
    "steps",
    "last_checkpoint_step",
)


def session_dir(tmp_path_factory, name: str) -> pathlib.Path:
    """A path shared by all xdist workers of this session (their base temp's parent)."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name


def environment(tmp_path_factory, devices: int = 8) -> dict[str, str]:
    """The subprocess environment: `devices` simulated CPU devices, the session's compilation
    cache, and compile logging (so that a test can tell that nothing was compiled)."""
    env = dict(os.environ)
    xla = [
        f
        for f in env.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    ]
    env.update(
        XLA_FLAGS=" ".join([*xla, f"--xla_force_host_platform_device_count={devices}"]),
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="3",
        JAX_COMPILATION_CACHE_DIR=str(session_dir(tmp_path_factory, "jax_cache")),
        JAX_LOG_COMPILES="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def command(workdir, *flags: str, config_args: str = "") -> list[str]:
    """`python -m nested_tnt_jax.main` on the test config, with extra `flags`."""
    config = f"{CONFIG}:{config_args}" if config_args else CONFIG
    return [
        sys.executable,
        "-m",
        "nested_tnt_jax.main",
        f"--config={config}",
        f"--workdir={workdir}",
        *flags,
    ]


def run(
    cmd: list[str], env: dict[str, str], timeout: float = 400, **kwargs
) -> subprocess.CompletedProcess:
    """Runs `cmd` to completion from the repository root, capturing text output."""
    return subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, **kwargs
    )


def start(cmd: list[str], env: dict[str, str], log: pathlib.Path) -> subprocess.Popen:
    """Starts `cmd` in the background, stdout and stderr to `log`."""
    with open(log, "w") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_until(
    proc: subprocess.Popen, log, ready: Callable[[], bool], what: str, timeout: float = 400
) -> None:
    """Polls `ready()` until it holds, failing if the running `proc` exits first."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"exited ({proc.returncode}) before {what}:\n{tail(log)}"
        assert time.monotonic() < deadline, f"no {what}:\n{tail(log)}"
        time.sleep(0.01)


def wait_for_checkpoint(proc: subprocess.Popen, workdir, step: int, log) -> None:
    """Waits until checkpoint `step` of the running `proc` is complete on disk."""
    path = pathlib.Path(workdir) / checkpointing.CHECKPOINT_DIR / str(step)
    wait_until(proc, log, path.is_dir, f"checkpoint {step}")


def tail(log: pathlib.Path, chars: int = 4000) -> str:
    """The end of a log, for assertion messages."""
    return pathlib.Path(log).read_text(errors="replace")[-chars:]


@contextlib.contextmanager
def _locked(path: pathlib.Path):
    """An exclusive lock on `path`, held across processes (xdist workers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def shared_run(tmp_path_factory, name: str, make: Callable[[pathlib.Path], None]) -> pathlib.Path:
    """`make(workdir)` once per session for all xdist workers (under a lock); the workdir.

    Read only: tests copy what they change. A run is complete once it has results.json.
    """
    workdir = session_dir(tmp_path_factory, name)
    with _locked(workdir.with_name(f"{name}.lock")):
        if not (workdir / metrics.RESULTS_FILE).exists():
            shutil.rmtree(workdir, ignore_errors=True)
            make(workdir)
    return workdir


def reference_run(tmp_path_factory) -> pathlib.Path:
    """The workdir of the uninterrupted run: 1 process, 8 devices, at the default verbosity
    and without compile logging, as a user runs it; its stderr is `reference_log`."""

    def make(workdir):
        env = environment(tmp_path_factory)
        del env["JAX_LOG_COMPILES"]
        proc = run(command(workdir), env)
        assert proc.returncode == 0, proc.stderr[-4000:]
        reference_log(workdir).write_text(proc.stderr)

    return shared_run(tmp_path_factory, "cli_reference", make)


def reference_log(reference: pathlib.Path) -> pathlib.Path:
    """The terminal output (stderr) of the reference run."""
    return reference.with_name(reference.name + ".stderr")


def copy_run(source, workdir) -> pathlib.Path:
    """A copy of the whole run in `source` (checkpoints, config, history, results, events)."""
    shutil.copytree(source, workdir, symlinks=True)
    return pathlib.Path(workdir)


def snapshot(workdir) -> dict[str, bytes]:
    """Every file under `workdir` by relative path, with its contents."""
    root = pathlib.Path(workdir)
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def hold_lock(workdir) -> subprocess.Popen:
    """Another process that holds `workdir`'s trainer lock (as a running trainer does) until
    killed; returns once it holds it."""
    code = (
        "import sys, time; from nested_tnt_jax import workdir; "
        "workdir.Lock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(workdir)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def copy_checkpoints(
    source, workdir, steps: list[int] | None = None, config: bool = False
) -> pathlib.Path:
    """A fresh `workdir` holding `source`'s checkpoints (only `steps`, if given), and its
    config.json if `config` (a run stopped there, as the trainer leaves it)."""
    target = pathlib.Path(workdir) / checkpointing.CHECKPOINT_DIR
    shutil.copytree(pathlib.Path(source) / checkpointing.CHECKPOINT_DIR, target)
    if config:
        shutil.copy(pathlib.Path(source) / metrics.CONFIG_FILE, workdir)
    if steps is not None:
        for name in os.listdir(target):
            if int(name) not in steps:
                shutil.rmtree(target / name)
    return pathlib.Path(workdir)


def complete_steps(workdir) -> list[int]:
    """The finished checkpoints of the run in `workdir`, by step."""
    directory = pathlib.Path(workdir) / checkpointing.CHECKPOINT_DIR
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def results(workdir) -> dict:
    """The run's results.json."""
    return json.loads((pathlib.Path(workdir) / metrics.RESULTS_FILE).read_text())


def assert_same_params(workdir, reference, rtol: float = 0.0) -> None:
    """The latest checkpoints' params are equal: bit for bit, or to `rtol` (and 1e-6
    absolute for values near 0)."""
    got, expected = (checkpointing.load_run_params(str(w)) for w in (workdir, reference))
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        if rtol:
            np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-6)
        else:
            np.testing.assert_array_equal(a, b)


def assert_same_results(workdir, reference, rtol: float = 0.0) -> None:
    """The results that do not depend on timing are equal (`test_loss` to `rtol`)."""
    got, expected = results(workdir), results(reference)
    for key in RESULT_METRICS:
        if key == "test_loss" and rtol:
            assert got[key] == pytest.approx(expected[key], rel=rtol)
        else:
            assert got[key] == expected[key], key
