"""Multi-process training on one machine: 2 processes x 4 CPU devices equal 1 process x 8.

Both processes run the real CLI with `--coordinator_address=localhost:PORT --num_processes=2
--process_id=I` (`jax.distributed` over loopback, gloo CPU collectives: jax's default), on
`tests/cli_config.py` (see `cli_runs`); the 1 x 8 reference is the session's shared run. A
global batch is the same records on any layout, and checkpoints restore against the current
shardings, so a run can move between layouts. The numbers agree to float32 rounding, not bit
for bit: gloo adds the 8 devices' gradients in another order than the in-process all-reduce
(measured: relative differences up to ~1e-5 in the parameters after 12 steps, identical
validation and test losses).
"""

import signal
import socket
import time

import pytest

import cli_runs
from nested_tnt_jax import checkpointing, metrics

PROCESSES = 2
RTOL = 1e-4  # float32 rounding of differently ordered sums, over 12 steps


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start_two_processes(tmp_path_factory, workdir, logs) -> list:
    """Starts the CLI as processes 0 and 1 of one job on `workdir`; logs to `logs/process_I`."""
    address = f"localhost:{free_port()}"
    env = cli_runs.environment(tmp_path_factory, devices=8 // PROCESSES)
    logs.mkdir(parents=True, exist_ok=True)
    return [
        cli_runs.start(
            cli_runs.command(
                workdir,
                f"--coordinator_address={address}",
                f"--num_processes={PROCESSES}",
                f"--process_id={i}",
            ),
            env,
            logs / f"process_{i}.log",
        )
        for i in range(PROCESSES)
    ]


def wait_all(procs, logs, timeout: float = 500) -> None:
    """Waits for every process to exit 0; one failing stops the others (which would otherwise
    wait for it in a collective until jax's timeout)."""
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            failed = [i for i, p in enumerate(procs) if p.poll() not in (None, 0)]
            assert not failed, cli_runs.tail(logs / f"process_{failed[0]}.log")
            assert time.monotonic() < deadline, cli_runs.tail(logs / "process_0.log")
            time.sleep(0.2)
        for i, p in enumerate(procs):
            assert p.returncode == 0, cli_runs.tail(logs / f"process_{i}.log")
    finally:
        for p in procs:
            p.kill()
            p.wait()


def run_two_processes(tmp_path_factory, workdir, logs) -> None:
    wait_all(start_two_processes(tmp_path_factory, workdir, logs), logs)


@pytest.fixture(scope="module")
def two_process_run(shared_tfds, tmp_path_factory):
    """The reference's training from scratch as 2 processes x 4 devices, made once per
    session (it also fills the compilation cache for the other 2-process runs, which wait
    for it rather than compile the same programs at the same time): (workdir, logs)."""
    logs = cli_runs.session_dir(tmp_path_factory, "two_processes_logs")
    workdir = cli_runs.shared_run(
        tmp_path_factory, "two_processes", lambda w: run_two_processes(tmp_path_factory, w, logs)
    )
    return workdir, logs


@pytest.fixture(scope="module")
def reference(shared_tfds, tmp_path_factory):
    return cli_runs.reference_run(tmp_path_factory)


def test_two_processes_train_like_one(two_process_run, reference):
    workdir, logs = two_process_run
    for i in range(PROCESSES):
        log = (logs / f"process_{i}.log").read_text()
        assert f"JAX process {i} / {PROCESSES}, 4 local devices" in log
        assert "Traceback" not in log
    # Validation at step 6 and the test at 12: the same losses and accuracies.
    history, expected = (
        [h for h in metrics.read_history(str(w)) if h["split"] != "train"]
        for w in (workdir, reference)
    )
    assert [{**h, "loss": None} for h in history] == [{**h, "loss": None} for h in expected]
    assert [h["loss"] for h in history] == pytest.approx([h["loss"] for h in expected], rel=RTOL)
    cli_runs.assert_same_params(workdir, reference, rtol=RTOL)
    cli_runs.assert_same_results(workdir, reference, rtol=RTOL)
    assert cli_runs.results(workdir)["devices"] == 8
    # Only process 0 writes the run's files (one events file, one line per evaluation).
    assert len(list(workdir.glob("events.out.tfevents.*"))) == 1
    assert (workdir / metrics.CONFIG_FILE).exists()


def test_checkpoints_move_between_layouts_and_ctrl_c_to_one_process_stops_both(
    two_process_run, reference, tmp_path_factory, tmp_path
):
    """The 1 x 8 checkpoint of step 6 resumes as 2 x 4; a Ctrl-C (SIGINT) reaches process 1
    only, is handed on to jax's preemption notifier as a SIGTERM, and both processes agree on a
    step, save and exit 0; that checkpoint (written by 2 processes) resumes as 1 x 8 and
    finishes like the uninterrupted run.

    `two_process_run` is requested so that the 2 x 4 programs are compiled (and cached) once.
    """
    workdir = cli_runs.copy_checkpoints(reference, tmp_path / "run", steps=[6])
    logs = tmp_path / "logs"
    procs = start_two_processes(tmp_path_factory, workdir, logs)
    log = logs / "process_0.log"
    try:
        # jax's preemption notifier takes SIGTERM from jax.distributed.initialize on (and the
        # trainer hands SIGINT on to it); process 0's start block comes after the restore,
        # which both processes take part in.
        cli_runs.wait_until(
            procs[0], log, lambda: "resumed from step 6 of 12" in log.read_text(), "the resume"
        )
        procs[1].send_signal(signal.SIGINT)
    except BaseException:
        for p in procs:
            p.kill()
        raise
    wait_all(procs, logs)
    stopped = max(cli_runs.complete_steps(workdir))
    assert 6 < stopped < cli_runs.STEPS
    for i in range(PROCESSES):
        assert f"Stopped at step {stopped} on request" in (logs / f"process_{i}.log").read_text()
    assert not (workdir / metrics.RESULTS_FILE).exists()

    proc = cli_runs.run(cli_runs.command(workdir), cli_runs.environment(tmp_path_factory))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert cli_runs.results(workdir)["resumed_from_step"] == stopped
    assert (workdir / checkpointing.CHECKPOINT_DIR / str(cli_runs.STEPS)).is_dir()
    cli_runs.assert_same_params(workdir, reference, rtol=RTOL)
    cli_runs.assert_same_results(workdir, reference, rtol=RTOL)
