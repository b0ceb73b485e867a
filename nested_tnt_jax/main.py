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

Errors the program can explain (a mistyped field, an impossible config, a missing dataset, an
unwritable workdir or checkpoint, an unreadable init_from, divergence) end the run with one
paragraph on stderr, `error: ...`, and no traceback: exit code 2 for the command line and the
config (nothing was read or written), 1 for the rest. A run stopped by SIGTERM saves a
checkpoint and exits 0.
"""

import logging as std_logging
import os
import sys
from typing import NoReturn

from absl import app, flags, logging
from ml_collections import ConfigDict, config_flags

EXIT_RUN_ERROR = 1
EXIT_USAGE = 2

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file, with optional `:args`.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "Call jax.distributed.initialize(): 'auto' when the environment shows several processes.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS"),
    "host:port of process 0's coordinator (default $JAX_COORDINATOR_ADDRESS; TPU, SLURM and "
    "Open MPI jobs find it themselves).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", int(os.environ["JAX_NUM_PROCESSES"]) if "JAX_NUM_PROCESSES" in os.environ
    else None, "Number of processes of the job (default $JAX_NUM_PROCESSES, else detected).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", int(os.environ["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in os.environ
    else None, "This process's index in 0..num_processes-1 (default $JAX_PROCESS_ID, else "
    "detected).")
flags.mark_flags_as_required(["config", "workdir"])


def fail(message: str, code: int) -> NoReturn:
    """Ends the program with `message` as one paragraph on stderr (no traceback)."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    sys.exit(code)


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


def _root_cause(error: BaseException) -> BaseException:
    """The innermost exception of a chain: ml_collections wraps a config file's own error in
    ones that only say loading failed."""
    while error.__cause__ or error.__context__:
        error = error.__cause__ or error.__context__
    return error


def _unknown_field(config: ConfigDict, path: str) -> str | None:
    """Why `config.<path>` does not exist (naming the group and its fields), or None."""
    node, parts = config, path.split(".")
    for depth, key in enumerate(parts):
        group = ".".join(["config", *parts[:depth]])
        if not isinstance(node, ConfigDict):
            return f"{group} is a value, not a group of fields, so it has no field {key!r}"
        if key not in node:
            return (f"{group} has no field {key!r}; its fields are "
                    f"{', '.join(sorted(node.keys()))}")
        node = node[key]
    return None


def _flag_error(argv: list[str], error: Exception) -> str:
    """One paragraph on a command line that did not parse, naming the offending flag."""
    if isinstance(error, (KeyError, AttributeError)):  # config_flags on an unknown field
        config_args = [a for a in argv if a.startswith(("--config=", "-config="))]
        overrides = [a.lstrip("-").split("=", 1)[0] for a in argv
                     if a.lstrip("-").startswith("config.")]
        try:  # The config as loaded before the overrides, to look the fields up in.
            config = flags.FLAGS["config"].parser.parse(config_args[-1].split("=", 1)[1])
        except Exception:  # noqa: BLE001 (no or a broken config file: said below)
            config = None
        for override in overrides if isinstance(config, ConfigDict) else []:
            why = _unknown_field(config, override.split(".", 1)[1])
            if why:
                return (f"Unknown config field in --{override}: {why}. Fix the name (the "
                        "config file lists every field with its meaning).")
    if isinstance(error, flags.Error) and _CONFIG_FILE_FAILED not in str(error):
        # absl's message names the flag and its value.
        return f"Invalid command line: {str(error).rstrip('.')}. See --helpfull for the flags."
    return _config_file_error(error)


# ml_collections' message for a config file's get_config() that raised: the file's traceback,
# as text, whose last line is the error itself.
_CONFIG_FILE_FAILED = "Error whilst parsing config file"


def _config_file_error(error: Exception) -> str:
    """One paragraph on a config file that failed to load, with its own error."""
    cause = _root_cause(error)
    lines = str(cause).strip().splitlines()
    if len(lines) > 1 and _CONFIG_FILE_FAILED in lines[0]:
        detail = lines[-1]  # already "ValueError: ..."
    else:
        detail = f"{type(cause).__name__}: {' '.join(lines)}"
    return (f"The config did not load: {detail.rstrip('.')}. Check --config=FILE[:args] "
            "(the file's get_config and its arguments).")


def _config() -> ConfigDict:
    """The parsed --config. ml_collections defers a missing or unreadable config file to the
    first access; it is made here, so that the error is explained like the others."""
    config = _CONFIG.value
    try:
        config.keys()
    except Exception as e:  # noqa: BLE001 (a user's config file can raise anything)
        fail(_config_file_error(e), EXIT_USAGE)
    return config


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with any failure turned into one paragraph and exit code 2.

    Flags and config files are user input, so every exception here is a mistake to explain
    rather than a bug to trace (ml_collections reports an unknown field with a KeyError
    traceback, and a config file's own error behind a generic one).
    """
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001 (see the docstring)
        fail(_flag_error(argv, e), EXIT_USAGE)


class _TracebackToLine(std_logging.Filter):
    """Log records keep their exception's type and message, not its traceback; asyncio's
    reports of orphaned futures are dropped."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        if record.name == "asyncio" and "exception was never retrieved" in record.getMessage():
            return False
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            record.msg = f"{record.getMessage()} [{type(error).__name__}: {error}]"
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


def _keep_errors_readable() -> None:
    """Stops libraries burying the one-paragraph explanation under tracebacks.

    Orbax logs the exception of a failed background save with its traceback before raising it
    to the caller (which reports it in one paragraph). When orbax gives up on a failed save or
    restore, the rest of its work fails later for the same reason: tensorstore reports the
    `RuntimeError: Event loop is closed` of reads that complete after that as "unraisable",
    and asyncio logs the futures nobody awaits any more when they are garbage collected, both
    with tracebacks, possibly after the explanation. Those are dropped. Exceptions that reach
    the top (bugs) keep their traceback, and `-v 1` keeps the libraries' ones too.
    """
    if logging.get_verbosity() >= 1:
        return
    logging.get_absl_handler().addFilter(_TracebackToLine())
    default_hook = sys.unraisablehook

    def hook(unraisable) -> None:
        if not (unraisable.exc_type is RuntimeError
                and str(unraisable.exc_value) == "Event loop is closed"):
            default_hook(unraisable)

    sys.unraisablehook = hook


def _initialize_distributed() -> None:
    """`jax.distributed.initialize` per --distributed and the process flags."""
    import jax

    if _DISTRIBUTED.value == "off" or (_DISTRIBUTED.value == "auto"
                                       and not multihost_environment()):
        return
    try:
        jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                                   num_processes=_NUM_PROCESSES.value,
                                   process_id=_PROCESS_ID.value)
    except Exception as e:  # noqa: BLE001 (jax raises several types for a bad job description)
        fail(f"jax.distributed.initialize(coordinator_address={_COORDINATOR.value!r}, "
             f"num_processes={_NUM_PROCESSES.value}, process_id={_PROCESS_ID.value}) failed: "
             f"{type(e).__name__}: {e}. Set --coordinator_address, --num_processes and "
             "--process_id (or $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID), "
             "or pass --distributed=off for a single process.", EXIT_RUN_ERROR)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"Unexpected arguments: {' '.join(argv[1:])}. Every setting is a flag "
             "(--config=..., --config.<field>=value, --workdir=...).", EXIT_USAGE)
    config = _config()
    _keep_errors_readable()
    import jax  # After flag parsing, so XLA_FLAGS and friends from the shell apply.

    _initialize_distributed()
    from nested_tnt_jax import train

    logging.info("JAX process %d / %d, %d local devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count())
    try:
        train.train_and_evaluate(config, _WORKDIR.value)
    except train.ConfigError as e:
        fail(str(e), EXIT_USAGE)
    except train.RUN_ERRORS as e:
        fail(str(e), EXIT_RUN_ERROR)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
