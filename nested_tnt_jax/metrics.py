"""Reporting: the only clu user, plus the run's JSON outputs and its terminal lines.

Scalars go to TensorBoard event files (clu's default writer, whose per-scalar log lines show
with `-v 1`; only process 0 writes files). The terminal gets one line per logging interval
(step, loss, accuracy, steps/s, img/s, ETA), one per evaluation and the result. The parameter
table goes to `workdir/parameters.txt`, the run's config to `workdir/config.json`, and the
final numbers to `workdir/results.json`. `workdir/history.jsonl` holds one JSON object per
line: a training row every `log_every_steps` (`TRAIN_KEYS`: means over the interval, the
learning rate of its last step, img/s over its wall time) and a row per evaluation (split
"eval" for validation, "test"; `top1`, `top5`, `loss`, `examples`). Process 0 writes them all.
"""

import json
import logging
import os
import time
from typing import Any, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils

HISTORY_FILE = "history.jsonl"
RESULTS_FILE = "results.json"
CONFIG_FILE = "config.json"
PARAMETERS_FILE = "parameters.txt"
# The keys of a training row of history.jsonl, in order (other tools read them).
TRAIN_KEYS = ("step", "split", "loss", "accuracy", "learning_rate", "grad_norm", "img_per_sec")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Reporter:
    """Writers, history and terminal lines for one run in `workdir`, from `start_step`.

    A resumed run's history keeps only the rows of the steps before `start_step` (rows a
    stopped run wrote after its last checkpoint are written again as the run redoes those
    steps).
    """

    def __init__(self, workdir: str, num_train_steps: int, log_every_steps: int,
                 batch_size: int, start_step: int = 0):
        # clu brings in TensorFlow (seconds to import): loaded when a run starts reporting,
        # so that a refused config or dataset need not wait for it.
        from clu import metric_writers, periodic_actions

        self.workdir = workdir
        self._primary = jax.process_index() == 0
        self._total = num_train_steps
        self._batch = batch_size
        self._log_every = log_every_steps
        self._clock: tuple[int, float] | None = None  # (step, time) the current interval began
        self._early: int | None = None
        if self._primary:
            self._trim_history(start_step)
        self.writer = metric_writers.create_default_writer(
            workdir, just_logging=not self._primary, asynchronous=True
        )
        self.progress = periodic_actions.ReportProgress(
            num_train_steps=num_train_steps, writer=self.writer, every_steps=log_every_steps,
            every_secs=None,
        )

    def _trim_history(self, start_step: int) -> None:
        path = os.path.join(self.workdir, HISTORY_FILE)
        if not os.path.exists(path):
            return
        rows = read_history(self.workdir)
        kept = [r for r in rows if r["step"] <= start_step]
        if len(kept) < len(rows):
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)
            os.replace(path + ".tmp", path)

    def started(self, step: int) -> None:
        """The first step of this session (and its compilation) finished at `step`: the
        throughput clock starts here, and an early progress line follows a few steps on."""
        self._clock = (step, time.perf_counter())
        early = step + 10
        first_log = (step // self._log_every + 1) * self._log_every
        self._early = early if early < min(first_log, self._total) else None

    def exclude(self, seconds: float) -> None:
        """Leaves `seconds` (an evaluation) out of the current interval's throughput."""
        if self._clock is not None:
            self._clock = (self._clock[0], self._clock[1] + seconds)

    def step_done(self, step: int) -> None:
        """Per-step bookkeeping (clu's progress, and the early progress line)."""
        self.progress(step)
        if step == self._early and self._clock is not None:
            rate = (step - self._clock[0]) / max(time.perf_counter() - self._clock[1], 1e-9)
            self._say(f"step {step}/{self._total}: {rate:.2f} steps/s, "
                      f"{rate * self._batch:,.0f} img/s, ETA {_duration((self._total - step) / rate)}")

    def _say(self, line: str) -> None:
        if self._primary:
            logging.info("%s", line)

    def log_parameters(self, params: Any) -> int:
        """Writes the parameter table (shapes and statistics) to `workdir/parameters.txt` and
        returns the parameter count.

        `params` may be global arrays sharded over processes; they are gathered to the host
        first (a collective: every process calls this).
        """
        from clu import parameter_overview

        params = multihost_utils.process_allgather(params, tiled=True)
        if self._primary:
            with open(os.path.join(self.workdir, PARAMETERS_FILE), "w", encoding="utf-8") as f:
                f.write(parameter_overview.get_parameter_overview(params) + "\n")
        return parameter_overview.count_parameters(params)

    def log_start(self, lines: Mapping[str, str]) -> None:
        """The start block: one `name: value` line each."""
        width = max(map(len, lines))
        self._say("\n".join(["Training:", *(f"  {name + ':':<{width + 1}} {value}"
                                              for name, value in lines.items())]))

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
        self.writer.write_hparams(flat)

    def write_train(self, step: int, metrics: Mapping[str, float]) -> None:
        """Train scalars (means over the last logging interval; `learning_rate` that of its
        last step) to the writers, history.jsonl and the terminal."""
        self.writer.write_scalars(step, {f"train/{k}": v for k, v in metrics.items()})
        now = time.perf_counter()
        img_per_sec = None
        if self._clock is not None and step > self._clock[0]:
            steps_per_sec = (step - self._clock[0]) / max(now - self._clock[1], 1e-9)
            img_per_sec = steps_per_sec * self._batch
        self._clock = (step, now)
        row = {"step": int(step), "split": "train",
               **{k: float(metrics[k]) for k in TRAIN_KEYS[2:-1]}, "img_per_sec": img_per_sec}
        self._append(row)
        line = (f"step {step}/{self._total}: loss {metrics['loss']:.4f}, accuracy "
                f"{100 * metrics['accuracy']:.1f}%")
        if img_per_sec:
            rate = img_per_sec / self._batch
            line += (f", {rate:.2f} steps/s, {img_per_sec:,.0f} img/s, ETA "
                     f"{_duration((self._total - step) / rate)}")
        self._say(line)

    def write_eval(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        """Eval scalars to the writers, one line to history.jsonl and to the terminal."""
        self.writer.write_scalars(step, {f"{split}/{k}": v for k, v in metrics.items()})
        self.writer.flush()
        self._append({"step": int(step), "split": split,
                      **{k: float(v) for k, v in metrics.items()}})
        self._say(eval_line(step, split, metrics))

    def _append(self, record: Mapping[str, Any]) -> None:
        if self._primary:
            with open(os.path.join(self.workdir, HISTORY_FILE), "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def write_results(self, results: Mapping[str, Any]) -> None:
        """Writes results.json (process 0 only)."""
        if self._primary:
            path = os.path.join(self.workdir, RESULTS_FILE)
            with open(path, "w", encoding="utf-8") as f:
                json.dump({k: _plain(v) for k, v in results.items()}, f, indent=2)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def eval_line(step: int, split: str, metrics: Mapping[str, float]) -> str:
    """`validation at step 100: top-1 28.0%, top-5 79.6%, loss 1.964 (1,000 images)`."""
    name = "validation" if split == "eval" else split
    return (f"{name} at step {step}: top-1 {100 * metrics['top1']:.1f}%, top-5 "
            f"{100 * metrics['top5']:.1f}%, loss {metrics['loss']:.4f} "
            f"({int(metrics['examples']):,} images)")


def write_config_file(workdir: str, config: Any, extra: Mapping[str, Any] | None = None
                      ) -> None:
    """Writes the run's config as `workdir/config.json` (the caller picks the process), with
    `extra` top-level entries (what `init_from` loaded); read back by `runs`."""
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    if extra:
        text = json.dumps({**json.loads(text), **extra}, indent=2, sort_keys=True)
    path = os.path.join(workdir, CONFIG_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers for JSON."""
    return value.item() if isinstance(value, np.generic) else value


def read_history(workdir: str) -> list[dict]:
    """The rows of `workdir/history.jsonl` (training and evaluations), in order. A last line
    cut short by a kill mid-write is left out (the resumed run writes that row again)."""
    with open(os.path.join(workdir, HISTORY_FILE), encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1 or line.endswith("\n"):
                raise
    return rows
