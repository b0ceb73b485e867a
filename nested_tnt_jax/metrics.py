"""Reporting: the run's one clock, its TensorBoard events, JSON outputs and terminal lines.

`Chrono` is the run's only clock (as big_vision's `chrono`): it starts once the first step of
a session (its compilation and first fetch) has finished, is paused around evaluations and
checkpoint saves, and gives the steps/s of each logging interval and of the whole session.
Scalars and the config (TensorBoard's HParams tab) go to a TensorBoard event file in
tensorboard's own record format, written without TensorFlow; only process 0 writes files,
and each scalar is also logged at `-v 1`. The terminal gets one line per logging interval
(step, loss, accuracy, steps/s, img/s, ETA), an early progress line, one per evaluation and
the result. The parameter table (clu's `parameter_overview`) goes to
`workdir/parameters.txt`, the run's config to `workdir/config.json`, and the final numbers to
`workdir/results.json`. `workdir/history.jsonl` holds one JSON object per line: a training row
every `log_every_steps` (`TRAIN_KEYS`: means over the interval, the learning rate of its last
step, img/s over its training time) and a row per evaluation (split "eval" for validation,
"test"; `top1`, `top5`, `loss`, `examples`). Process 0 writes them all, through `paths`, so the
workdir may be on local disk or Cloud Storage.

Every rate the terminal shows is measured over steps that ran: the callers synchronise with
the device before they read the clock (jax dispatches steps asynchronously, so a clock read
without it counts dispatched steps, not finished ones).
"""

import io
import json
import logging
import os
import socket
import time
from typing import Any, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils
from tensorboard.compat.proto import event_pb2
from tensorboard.plugins.hparams.summary_v2 import hparams_pb
from tensorboard.plugins.scalar.summary_v2 import scalar_pb
from tensorboard.summary.writer.record_writer import RecordWriter

from nested_tnt_jax import paths

HISTORY_FILE = "history.jsonl"
RESULTS_FILE = "results.json"
CONFIG_FILE = "config.json"
PARAMETERS_FILE = "parameters.txt"
# The keys of a training row of history.jsonl, in order (other tools read them).
TRAIN_KEYS = ("step", "split", "loss", "accuracy", "learning_rate", "grad_norm", "img_per_sec")
# Steps after the clock starts at which the early progress line is printed (before the first
# logging interval ends), so that a long interval does not leave the terminal silent.
EARLY_LINE_AFTER_STEPS = 10


def duration(seconds: float) -> str:
    """`1:02:03` or `2:03` (h:mm:ss or m:ss)."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Chrono:
    """The run's one clock: training time of this session, evaluations and saves left out.

    `start(step)` once the session's first step has finished (so compilation and the first
    fetch are not timed); `pause()` / `resume()` around work that is not training;
    `interval_rate(step)` is the steps/s since the previous call (or the start), and `timed()`
    the steps and seconds of the whole session. Synchronise with the device before reading.
    """

    def __init__(self) -> None:
        self.start_step: int | None = None
        self._seconds = 0.0  # Training seconds before the current span.
        self._since: float | None = None  # When the current span began; None while paused.
        self._mark: tuple[int, float] = (0, 0.0)  # (step, training seconds) of the last read.

    @property
    def started(self) -> bool:
        return self.start_step is not None

    def start(self, step: int) -> None:
        self.start_step = step
        self._mark = (step, 0.0)
        self._since = time.perf_counter()

    def _elapsed(self) -> float:
        running = time.perf_counter() - self._since if self._since is not None else 0.0
        return self._seconds + running

    def pause(self) -> None:
        if self._since is not None:
            self._seconds = self._elapsed()
            self._since = None

    def resume(self) -> None:
        if self.started and self._since is None:
            self._since = time.perf_counter()

    def interval_rate(self, step: int) -> float | None:
        """Steps/s since the last call (or the start); None before the clock started."""
        if not self.started or step <= self._mark[0]:
            return None
        now = self._elapsed()
        rate = (step - self._mark[0]) / max(now - self._mark[1], 1e-9)
        self._mark = (step, now)
        return rate

    def timed(self, step: int) -> tuple[int, float]:
        """(steps, seconds) of training timed in this session, up to `step`."""
        if not self.started:
            return 0, 0.0
        return step - self.start_step, self._elapsed()


class EventWriter:
    """Scalars and hparams to a TensorBoard event file in `logdir` (local or `gs://`), named and
    framed as tensorboard's own writer does, without TensorFlow. Events are buffered and added
    to the file at each `flush` (a whole new object on Cloud Storage). Each scalar is also
    logged at `-v 1`."""

    def __init__(self, logdir: str):
        self.path = paths.resolve(logdir) / (
            f"events.out.tfevents.{time.time():010.0f}.{socket.gethostname()}.{os.getpid()}"
        )
        self._buffer = io.BytesIO()
        self._records = RecordWriter(self._buffer)
        self._records.write(
            event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString()
        )
        self.flush()

    def _add(self, step: int, summary) -> None:
        self._records.write(
            event_pb2.Event(
                wall_time=time.time(), step=int(step), summary=summary
            ).SerializeToString()
        )

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        for tag, value in scalars.items():
            self._add(step, scalar_pb(tag, float(value)))
        logging.debug("[%d] %s", step, ", ".join(f"{k}={v}" for k, v in scalars.items()))

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        self._add(0, hparams_pb(dict(hparams)))

    def flush(self) -> None:
        data = self._buffer.getvalue()
        if data:
            paths.append(self.path, data)
            self._buffer.seek(0)
            self._buffer.truncate()

    def close(self) -> None:
        self.flush()


class Reporter:
    """Event writer, history and terminal lines for one run in `workdir`, from `start_step`,
    with its rates read from `chrono`.

    A resumed run's history keeps only the rows of the steps before `start_step` (rows a
    stopped run wrote after its last checkpoint are written again as the run redoes those
    steps).
    """

    def __init__(
        self,
        workdir: str,
        num_train_steps: int,
        log_every_steps: int,
        batch_size: int,
        chrono: Chrono,
        start_step: int = 0,
    ):
        self.workdir = workdir
        self.chrono = chrono
        self._primary = jax.process_index() == 0
        self._total = num_train_steps
        self._batch = batch_size
        self._log_every = log_every_steps
        if self._primary:
            self._trim_history(start_step)
        self.writer = EventWriter(workdir) if self._primary else None

    def _trim_history(self, start_step: int) -> None:
        path = paths.resolve(self.workdir) / HISTORY_FILE
        if not path.exists():
            return
        rows = read_history(self.workdir)
        kept = [r for r in rows if r["step"] <= start_step]
        if len(kept) < len(rows):
            paths.write_atomically(path, "".join(json.dumps(r) + "\n" for r in kept))

    def early_line_due(self, step: int) -> bool:
        """Whether `step` gets the early progress line: `EARLY_LINE_AFTER_STEPS` after the
        clock started, when that comes before the first logging interval ends."""
        start = self.chrono.start_step
        if start is None or step != start + EARLY_LINE_AFTER_STEPS:
            return False
        first_log = (start // self._log_every + 1) * self._log_every
        return step < min(first_log, self._total)

    def write_progress(self, step: int) -> None:
        """The early progress line (call `early_line_due` first, then synchronise)."""
        rate = self.chrono.interval_rate(step)
        if rate:
            self._say(
                f"step {step}/{self._total}: {rate:.2f} steps/s, "
                f"{rate * self._batch:,.0f} img/s, ETA {duration((self._total - step) / rate)}"
            )

    def _say(self, line: str) -> None:
        if self._primary:
            logging.info("%s", line)

    def _write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if self.writer is not None:
            self.writer.write_scalars(step, scalars)

    def log_parameters(self, params: Any) -> int:
        """Writes the parameter table (shapes and statistics) to `workdir/parameters.txt` and
        returns the parameter count.

        `params` may be global arrays sharded over processes; they are gathered to the host
        first (a collective: every process calls this).
        """
        from clu import parameter_overview  # noqa: PLC0415 (clu, only for the parameter table)

        params = multihost_utils.process_allgather(params, tiled=True)
        if self._primary:
            paths.write_atomically(
                paths.resolve(self.workdir) / PARAMETERS_FILE,
                parameter_overview.get_parameter_overview(params) + "\n",
            )
        return parameter_overview.count_parameters(params)

    def log_start(self, lines: Mapping[str, str]) -> None:
        """The start block: one `name: value` line each."""
        width = max(map(len, lines))
        self._say(
            "\n".join(
                [
                    "Training:",
                    *(f"  {name + ':':<{width + 1}} {value}" for name, value in lines.items()),
                ]
            )
        )

    def write_config(self, config: Any) -> None:
        """Records the run's hyper-parameters (shown in TensorBoard's HParams tab)."""
        flat = {}

        def visit(prefix: str, node: Mapping) -> None:
            for key, value in node.items():
                name = f"{prefix}{key}"
                if isinstance(value, Mapping):
                    visit(name + ".", value)
                else:
                    flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)

        visit("", config.to_dict())
        if self.writer is not None:
            self.writer.write_hparams(flat)

    def write_train(self, step: int, metrics: Mapping[str, float]) -> None:
        """Train scalars (means over the last logging interval; `learning_rate` that of its
        last step) to the events, history.jsonl and the terminal. Its steps/s is the clock's
        interval rate: the caller has synchronised (fetching the step's metrics does)."""
        rate = self.chrono.interval_rate(step)
        img_per_sec = rate * self._batch if rate else None
        self._write_scalars(step, {f"train/{k}": v for k, v in metrics.items()})
        if rate:
            self._write_scalars(step, {"steps_per_sec": rate})
        if self.writer is not None:
            self.writer.flush()
        row = {
            "step": int(step),
            "split": "train",
            **{k: float(metrics[k]) for k in TRAIN_KEYS[2:-1]},
            "img_per_sec": img_per_sec,
        }
        self._append(row)
        line = (
            f"step {step}/{self._total}: loss {metrics['loss']:.4f}, accuracy "
            f"{100 * metrics['accuracy']:.1f}%"
        )
        if rate:
            line += (
                f", {rate:.2f} steps/s, {img_per_sec:,.0f} img/s, ETA "
                f"{duration((self._total - step) / rate)}"
            )
        self._say(line)

    def write_eval(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        """Eval scalars to the writers, one line to history.jsonl and to the terminal."""
        self._write_scalars(step, {f"{split}/{k}": v for k, v in metrics.items()})
        if self.writer is not None:
            self.writer.flush()
        self._append(
            {"step": int(step), "split": split, **{k: float(v) for k, v in metrics.items()}}
        )
        self._say(eval_line(step, split, metrics))

    def _append(self, record: Mapping[str, Any]) -> None:
        if self._primary:
            paths.append(paths.resolve(self.workdir) / HISTORY_FILE, json.dumps(record) + "\n")

    def write_results(self, results: Mapping[str, Any]) -> None:
        """Writes results.json (process 0 only)."""
        if self._primary:
            paths.write_atomically(
                paths.resolve(self.workdir) / RESULTS_FILE,
                json.dumps({k: _plain(v) for k, v in results.items()}, indent=2),
            )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()  # Flushes first.


def eval_line(step: int, split: str, metrics: Mapping[str, float]) -> str:
    """`validation at step 100: top-1 28.0%, top-5 79.6%, loss 1.964 (1,000 images)`."""
    name = "validation" if split == "eval" else split
    return (
        f"{name} at step {step}: top-1 {100 * metrics['top1']:.1f}%, top-5 "
        f"{100 * metrics['top5']:.1f}%, loss {metrics['loss']:.4f} "
        f"({int(metrics['examples']):,} images)"
    )


def write_config_file(workdir: str, config: Any, extra: Mapping[str, Any] | None = None) -> None:
    """Writes the run's config as `workdir/config.json` (the caller picks the process), with
    `extra` top-level entries (what `init_from` loaded); read back by `runs`."""
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    if extra:
        text = json.dumps({**json.loads(text), **extra}, indent=2, sort_keys=True)
    paths.write_atomically(paths.resolve(workdir) / CONFIG_FILE, text)


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers for JSON."""
    return value.item() if isinstance(value, np.generic) else value


def read_history(workdir: str) -> list[dict]:
    """The rows of `workdir/history.jsonl` (training and evaluations), in order. A last line
    cut short by a kill mid-write is left out (the resumed run writes that row again)."""
    text = (paths.resolve(workdir) / HISTORY_FILE).read_text(encoding="utf-8")
    lines = [line for line in text.splitlines(keepends=True) if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1 or line.endswith("\n"):
                raise
    return rows
