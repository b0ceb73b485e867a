r"""Command line: train and evaluate one config.

  python -m nested_tnt_jax.main --config=configs/cifar10.py:model=nested_tnt,cpu \
      --config.dataset.data_dir=../shared/tfds --workdir=runs/c10_cpu

Any config field can be overridden (`--config.model.name=tnt_s_patch16_224`,
`--config.optim.learning_rate=0.01`); unknown fields are refused. Re-running with the same
`--workdir` resumes from its latest checkpoint.

Several processes (hosts, or processes on one machine) train one run together after
`jax.distributed.initialize()`. `--distributed=auto` (the default) calls it when the
environment shows a multi-process job (a TPU pod slice, SLURM, Open MPI) or when a
coordinator or a process count is given; `on` / `off` force it. `--coordinator_address`,
`--num_processes` and `--process_id` (or `$JAX_COORDINATOR_ADDRESS`, `$JAX_NUM_PROCESSES`,
`$JAX_PROCESS_ID`) describe a job that jax cannot detect, e.g. 2 processes on one machine:

  XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m nested_tnt_jax.main \
      --config=... --workdir=DIR --coordinator_address=localhost:12355 --num_processes=2 \
      --process_id=0        # and the same with --process_id=1 in a second shell

One trainer at a time writes a workdir (a second one is refused). A workdir is resumed only by
the config it was started with, up to fields that do not change what is trained (see
`workdir.py`); a finished run is left as it is (`--reevaluate` evaluates it again without
writing). Errors the program can explain end the run with one paragraph on stderr,
`error: ...`, and no traceback: exit code 2 when the command is refused (nothing was read or
written), 1 for the rest (`cli.py`). SIGTERM or Ctrl-C saves a checkpoint and exits 0; a
second Ctrl-C stops at once. docs/failure_modes.md lists every case.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from nested_tnt_jax import cli, errors

cli.quiet_native_logs(sys.argv)

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file, with optional `:args`.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_REEVALUATE = flags.DEFINE_bool(
    "reevaluate",
    False,
    "For a finished run: evaluate its final checkpoint again on the "
    "validation and test splits and print the numbers (its files are left as they are).",
)
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "on", "off"],
    "Call jax.distributed.initialize(): 'auto' when the environment shows several processes.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    os.environ.get("JAX_COORDINATOR_ADDRESS"),
    "host:port of process 0's coordinator (default $JAX_COORDINATOR_ADDRESS; TPU, SLURM and "
    "Open MPI jobs find it themselves).",
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes",
    int(os.environ["JAX_NUM_PROCESSES"]) if "JAX_NUM_PROCESSES" in os.environ else None,
    "Number of processes of the job (default $JAX_NUM_PROCESSES, else detected).",
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id",
    int(os.environ["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in os.environ else None,
    "This process's index in 0..num_processes-1 (default $JAX_PROCESS_ID, else detected).",
)
flags.mark_flags_as_required(["config", "workdir"])


def multihost_environment() -> bool:
    """True when the environment or the flags describe a multi-process jax job."""
    env = os.environ
    return bool(
        _COORDINATOR.value
        or (_NUM_PROCESSES.value or 1) > 1
        or int(env.get("SLURM_NTASKS", "1")) > 1
        or "," in env.get("TPU_WORKER_HOSTNAMES", "")
        or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    )


def _initialize_distributed() -> None:
    """`jax.distributed.initialize` per --distributed and the process flags."""
    import jax  # noqa: PLC0415 (after flag parsing, so XLA_FLAGS from the shell apply)

    if _DISTRIBUTED.value == "off" or (
        _DISTRIBUTED.value == "auto" and not multihost_environment()
    ):
        return
    try:
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    except Exception as e:  # noqa: BLE001 (jax raises several types for a bad job description)
        cli.fail(
            f"jax.distributed.initialize(coordinator_address={_COORDINATOR.value!r}, "
            f"num_processes={_NUM_PROCESSES.value}, process_id={_PROCESS_ID.value}) failed: "
            f"{type(e).__name__}: {e}. Set --coordinator_address, --num_processes and "
            "--process_id (or $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, "
            "$JAX_PROCESS_ID), or pass --distributed=off for a single process.",
            errors.EXIT_RUN_ERROR,
        )


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(
            f"Unexpected arguments: {' '.join(argv[1:])}. Every setting is a flag "
            "(--config=..., --config.<field>=value, --workdir=...).",
            errors.EXIT_USAGE,
        )
    config = cli.loaded_config(_CONFIG)
    cli.setup_logging()
    with cli.explained():
        import jax  # noqa: PLC0415 (after flag parsing, so XLA_FLAGS and friends from the shell apply)

        _initialize_distributed()
        from nested_tnt_jax import checkpointing, train  # noqa: PLC0415 (after flag parsing, so XLA_FLAGS from the shell apply)

        if jax.process_count() > 1:
            checkpointing.hand_ctrl_c_to_preemption()
            logging.info(
                "JAX process %d / %d, %d local devices",
                jax.process_index(),
                jax.process_count(),
                jax.local_device_count(),
            )
        train.train_and_evaluate(config, _WORKDIR.value, reevaluate=_REEVALUATE.value)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_absl_flags)
