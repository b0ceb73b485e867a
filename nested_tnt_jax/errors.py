"""The errors a user can act on, one class per kind, each with its exit code.

Raised where the problem is found, with a message that says what is wrong and what to change;
`cli.explained` turns them into one paragraph on stderr and the exit code. Anything else that
reaches the top is a bug and keeps its traceback.
"""

import math

EXIT_OK = 0
EXIT_RUN_ERROR = 1
EXIT_USAGE = 2


class ConfigError(ValueError):
    """A command the program refuses before it reads data or writes anything: a config or
    command line that cannot run, a workdir that another trainer holds or whose run the new
    config does not continue."""

    exit_code = EXIT_USAGE


class RunError(RuntimeError):
    """A run that cannot go on for a reason outside the program (data, disk, divergence)."""

    exit_code = EXIT_RUN_ERROR


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, written or used; the message names the path. A
    ValueError, as the `init_from` mismatch it reports always was."""

    exit_code = EXIT_RUN_ERROR


# Library exceptions whose message is the whole explanation (an OSError names its path, a
# FloatingPointError the step and metric): explained like the above, with exit code 1.
EXPLAINED = (ConfigError, RunError, CheckpointError, FloatingPointError, OSError)


def exit_code(error: BaseException) -> int:
    """The exit code for an `EXPLAINED` error."""
    return getattr(error, "exit_code", EXIT_RUN_ERROR)


def check_range(
    field: str,
    value,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    hint: str = "",
) -> None:
    """Raises ConfigError unless `config.<field>` is a finite number (an integer if `integer`)
    in the interval from `low` to `high` (either bound left out: unbounded; `*_open`: the
    bound itself excluded). `hint` is added to the message (what the field means)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = number and math.isfinite(value) and (not integer or float(value).is_integer())
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if ok:
        return
    kind = "an integer" if integer else "a number"
    if low is not None and high is not None:
        where = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        where = f"{'>' if low_open else '>='} {low:g}"
    elif high is not None:
        where = f"{'<' if high_open else '<='} {high:g}"
    else:
        where = "(finite)"
    raise ConfigError(
        f"config.{field} is {value!r}; it must be {kind} {where}"
        + (f" ({hint})" if hint else "")
        + "."
    )
