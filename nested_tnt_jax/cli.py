"""What the command-line programs share: one-paragraph errors, exit codes, a quiet terminal.

A program's `main` runs its work inside `explained()`:

    from nested_tnt_jax import cli, errors

    def main(argv):
        cli.setup_logging()
        with cli.explained():
            do_the_work()          # raises errors.ConfigError / RunError / CheckpointError

and then
  * an `errors.EXPLAINED` exception ends the program with `error: <message>` as one paragraph
    on stderr and its exit code (`errors.EXIT_USAGE` = 2 for a refused command, where nothing
    was read or written; `errors.EXIT_RUN_ERROR` = 1 for the rest), without a traceback;
  * Ctrl-C outside a handler of its own ends it with one line and exit code 130;
  * any other exception is a bug and keeps its traceback.
`fail(message, code)` ends the program the same way from anywhere. `parse_absl_flags` is the
`flags_parser` for `absl.app.run` that explains bad flags and config files (an unknown config
field, a config file that raised) the same way, with exit code 2.

`setup_logging()` leaves the terminal to what the user needs: at absl's default verbosity
(`-v 0`) it shows this package's own INFO lines and everyone's warnings, with a short time
stamp, and drops the other libraries' INFO chatter (orbax internals, TFDS, the event writer's
lines) and the exceptions' tracebacks they log before re-raising; `-v 1` shows everything.
Programs that parse their own flags (argparse: `predict`, `visualize`) pass the verbosity they
parsed.
"""

from __future__ import annotations

import contextlib
import logging as std_logging
import os
import sys
from collections.abc import Iterator
from typing import NoReturn

from nested_tnt_jax import errors

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
# Warnings libraries print on every run that the user neither caused nor can act on: orbax
# warns of every run it reads back (`predict`, `visualize`, `--config.init_from`) that it opens
# its checkpoints read-only, as asked.
_NOISE = (
    "OpenCV is not installed",
    "CheckpointManagerOptions.read_only=True",
    "Given directory is read only",
)


def paragraph(message: str) -> str:
    """`message` as one line: `error: ...` with every run of whitespace made one space."""
    return f"error: {' '.join(str(message).split())}"


def fail(message: str, code: int = errors.EXIT_USAGE) -> NoReturn:
    """Ends the program with `message` as one paragraph on stderr (no traceback)."""
    print(paragraph(message), file=sys.stderr, flush=True)
    sys.exit(code)


@contextlib.contextmanager
def explained() -> Iterator[None]:
    """Turns the errors a user can act on (and Ctrl-C) into one paragraph and an exit code."""
    try:
        yield
    except errors.EXPLAINED as e:
        fail(str(e), errors.exit_code(e))
    except KeyboardInterrupt:
        fail(
            "Interrupted (Ctrl-C). What was saved before is kept: checkpoints, history and "
            "results. Run the same command again to resume.",
            EXIT_INTERRUPTED,
        )


# --- absl flags and ml_collections config files -------------------------------------------

# ml_collections' message for a config file's get_config() that raised: the file's traceback,
# as text, whose last line is the error itself.
_CONFIG_FILE_FAILED = "Error whilst parsing config file"


def _root_cause(error: BaseException) -> BaseException:
    """The innermost exception of a chain: ml_collections wraps a config file's own error in
    ones that only say loading failed."""
    while error.__cause__ or error.__context__:
        error = error.__cause__ or error.__context__
    return error


def _unknown_field(config, path: str) -> str | None:
    """Why `config.<path>` does not exist (naming the group and its fields), or None."""
    from ml_collections import ConfigDict  # noqa: PLC0415 (only the programs that use it load it)

    node, parts = config, path.split(".")
    for depth, key in enumerate(parts):
        group = ".".join(["config", *parts[:depth]])
        if not isinstance(node, ConfigDict):
            return f"{group} is a value, not a group of fields, so it has no field {key!r}"
        if key not in node:
            return f"{group} has no field {key!r}; its fields are {', '.join(sorted(node.keys()))}"
        node = node[key]
    return None


def config_file_error(error: BaseException) -> str:
    """One paragraph on a config file that failed to load, with its own error."""
    cause = _root_cause(error)
    lines = str(cause).strip().splitlines()
    if len(lines) > 1 and _CONFIG_FILE_FAILED in lines[0]:
        detail = lines[-1]  # already "ValueError: ..."
    else:
        detail = f"{type(cause).__name__}: {' '.join(lines)}"
    return (
        f"The config did not load: {detail.rstrip('.')}. Check --config=FILE[:args] "
        "(the file's get_config and its arguments)."
    )


def _renamed(override: str) -> str:
    """A sentence naming today's field for a nesting switch's old name, else ""."""
    from nested_tnt_jax.models import nesting  # noqa: PLC0415 (jax only after the flags)

    (new,) = nesting.from_legacy({override.split(".", 1)[1]: None})
    if new == override.split(".", 1)[1]:
        return ""
    return f"The nesting switches are one spec now, config.model.nesting: use --config.{new}. "


def _flag_error(argv: list[str], error: Exception) -> str:
    """One paragraph on a command line that did not parse, naming the offending flag."""
    from absl import flags  # noqa: PLC0415 (only the programs that use it load it)
    from ml_collections import ConfigDict  # noqa: PLC0415 (only the programs that use it load it)

    if isinstance(error, (KeyError, AttributeError)):  # config_flags on an unknown field
        config_args = [a for a in argv if a.startswith(("--config=", "-config="))]
        overrides = [
            a.lstrip("-").split("=", 1)[0] for a in argv if a.lstrip("-").startswith("config.")
        ]
        try:  # The config as loaded before the overrides, to look the fields up in.
            config = flags.FLAGS["config"].parser.parse(config_args[-1].split("=", 1)[1])
        except Exception:  # noqa: BLE001 (no or a broken config file: said below)
            config = None
        for override in overrides if isinstance(config, ConfigDict) else []:
            why = _unknown_field(config, override.split(".", 1)[1])
            if why:
                return (
                    f"Unknown config field in --{override}: {why}. "
                    f"{_renamed(override)}Fix the name (the config file lists every field "
                    "with its meaning)."
                )
    if isinstance(error, flags.Error) and _CONFIG_FILE_FAILED not in str(error):
        # absl's message names the flag and its value.
        return f"Invalid command line: {str(error).rstrip('.')}. See --helpfull for the flags."
    return config_file_error(error)


def put_config_packages_on_path(argv: list[str]) -> None:
    """For each `--config=FILE[:args]` whose directory is a package (`configs/__init__.py`),
    puts the package's parent on `sys.path`, so that the file imports its siblings
    (`from configs import common`) whatever the working directory."""
    for arg in argv:
        if arg.startswith(("--config=", "-config=")):
            path = os.path.abspath(arg.split("=", 1)[1].split(":", 1)[0])
            package = os.path.dirname(path)
            if os.path.isfile(os.path.join(package, "__init__.py")):
                root = os.path.dirname(package)
                if root not in sys.path:
                    sys.path.insert(0, root)


def parse_absl_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing (`app.run(main, flags_parser=cli.parse_absl_flags)`), with any
    failure turned into one paragraph and exit code 2.

    Flags and config files are user input, so every exception here is a mistake to explain
    rather than a bug to trace (ml_collections reports an unknown field with a KeyError
    traceback, and a config file's own error behind a generic one).
    """
    from absl import flags  # noqa: PLC0415 (only the programs that use it load it)

    put_config_packages_on_path(argv)
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001 (see the docstring)
        fail(_flag_error(argv, e), errors.EXIT_USAGE)


def loaded_config(config_flag):
    """The value of a `config_flags.DEFINE_config_file` flag, loaded. ml_collections defers a
    missing or unreadable config file to the first access; it is made here, so that the error
    is explained like the others."""
    config = config_flag.value
    try:
        config.keys()
    except Exception as e:  # noqa: BLE001 (a user's config file can raise anything)
        fail(config_file_error(e), errors.EXIT_USAGE)
    return config


# --- logging ---------------------------------------------------------------------------------


class _Quiet(std_logging.Filter):
    """At the default verbosity: this package's records, and other libraries' warnings (less
    `_NOISE`); an exception's traceback is cut to its type and message; asyncio's reports of
    orphaned futures are dropped (see `setup_logging`)."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        ours = record.pathname.startswith(_PACKAGE_DIR)
        if not ours and (
            record.levelno < std_logging.WARNING or any(n in str(record.msg) for n in _NOISE)
        ):
            return False
        if record.name == "asyncio" and "exception was never retrieved" in record.getMessage():
            return False
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            record.msg = f"{record.getMessage()} [{type(error).__name__}: {error}]"
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


class _ShortFormatter(std_logging.Formatter):
    """`12:34:56 message`, warnings and errors marked as such."""

    def format(self, record: std_logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= std_logging.WARNING:
            kind = "warning" if record.levelno < std_logging.ERROR else "error"
            stamp, _, rest = text.partition(" ")
            text = f"{stamp} {kind}: {rest}"
        return text


def quiet_native_logs(argv: list[str]) -> None:
    """Turns off native libraries' INFO lines (TensorFlow's, printed when it loads, before
    any flag is parsed) unless the command line asks for verbosity or the
    shell set their level. Call at import of a program's main module."""
    if not any(a.startswith(("-v", "--v", "--verbosity")) for a in argv[1:]):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")


def _import_tensorflow_quietly() -> None:
    """Imports TensorFlow, when installed, with the process's stderr closed: TFDS loads it
    when it is installed (to build a dataset's builder), and its native code logs INFO
    lines as it loads.

    Those lines (oneDNN notices, absl's "before InitializeLog" warning) no environment
    variable turns off. A failed import is left for the importer to report.
    """
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                import tensorflow  # noqa: PLC0415, F401
            except Exception:  # noqa: BLE001 (reported by the code that needs it)
                pass
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def verbose() -> bool:
    """Whether absl's verbosity is above its default (`-v 1` or more)."""
    from absl import logging  # noqa: PLC0415 (only the programs that use it load it)

    return logging.get_verbosity() >= 1


def setup_logging(verbosity: int | None = None) -> None:
    """The quiet terminal described in the module docstring (nothing changes with `-v 1`).

    `verbosity` (absl's `-v`), for programs that `absl.app.run` does not start: installs absl's
    handler and sets its level.

    Besides the filter: orbax logs the exception of a failed background save with its
    traceback before raising it to the caller, and when it gives up, tensorstore reports the
    `RuntimeError: Event loop is closed` of reads that complete later as "unraisable"; those
    are dropped, as the caller explains the failure in one paragraph. Native libraries'
    INFO lines: see `quiet_native_logs`.
    """
    from absl import logging  # noqa: PLC0415 (only the programs that use it load it)

    if verbosity is not None:
        from absl import flags  # noqa: PLC0415 (only the programs that use it load it)

        if not flags.FLAGS.is_parsed():  # else absl warns that logging came before parsing
            flags.FLAGS.mark_as_parsed()
        logging.use_absl_handler()
        logging.set_verbosity(verbosity)
    if verbose():
        return
    _import_tensorflow_quietly()
    handler = logging.get_absl_handler()
    handler.addFilter(_Quiet())
    handler.python_handler.setFormatter(_ShortFormatter("%(asctime)s %(message)s", "%H:%M:%S"))
    default_hook = sys.unraisablehook

    def hook(unraisable) -> None:
        if not (
            unraisable.exc_type is RuntimeError
            and str(unraisable.exc_value) == "Event loop is closed"
        ):
            default_hook(unraisable)

    sys.unraisablehook = hook
