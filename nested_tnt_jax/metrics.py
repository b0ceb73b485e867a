"""Reporting: the only clu user, plus the run's JSON outputs.

Scalars go to TensorBoard event files and log lines (clu's default writer; only process 0
writes files), progress and throughput to `periodic_actions.ReportProgress`, the parameter
table to the log at start. The run's config goes to `workdir/config.json` at start,
evaluations are appended to `workdir/history.jsonl` (one JSON object per evaluation, used for
plots) and the final numbers go to `workdir/results.json`; process 0 writes them all.
"""

import json
import os
from typing import Any, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils

HISTORY_FILE = "history.jsonl"
RESULTS_FILE = "results.json"
CONFIG_FILE = "config.json"


class Reporter:
    """Writers and progress reporting for one run in `workdir`."""

    def __init__(self, workdir: str, num_train_steps: int, log_every_steps: int):
        # clu brings in TensorFlow (seconds to import): loaded when a run starts reporting,
        # so that a refused config or dataset need not wait for it.
        from clu import metric_writers, periodic_actions

        self.workdir = workdir
        self._primary = jax.process_index() == 0
        self.writer = metric_writers.create_default_writer(
            workdir, just_logging=not self._primary, asynchronous=True
        )
        self.progress = periodic_actions.ReportProgress(
            num_train_steps=num_train_steps, writer=self.writer, every_steps=log_every_steps,
            every_secs=None,
        )

    def log_parameters(self, params: Any) -> int:
        """Logs the parameter table (shapes and statistics) and returns the parameter count.

        `params` may be global arrays sharded over processes; they are gathered to the host
        first (a collective: every process calls this).
        """
        from clu import parameter_overview

        params = multihost_utils.process_allgather(params, tiled=True)
        parameter_overview.log_parameter_overview(params, jax_logging_process=0)
        return parameter_overview.count_parameters(params)

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
        """Train scalars (means over the last logging interval)."""
        self.writer.write_scalars(step, {f"train/{k}": v for k, v in metrics.items()})

    def write_eval(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        """Eval scalars to the writers and one line to history.jsonl."""
        self.writer.write_scalars(step, {f"{split}/{k}": v for k, v in metrics.items()})
        self.writer.flush()
        if self._primary:
            record = {"step": int(step), "split": split, **{k: float(v) for k, v in metrics.items()}}
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


def write_config_file(workdir: str, config: Any) -> None:
    """Writes the run's config as `workdir/config.json` (the caller picks the process); read
    back by `predict.read_run_config`."""
    with open(os.path.join(workdir, CONFIG_FILE), "w", encoding="utf-8") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers for JSON."""
    return value.item() if isinstance(value, np.generic) else value


def read_history(workdir: str) -> list[dict]:
    """The evaluations recorded in `workdir/history.jsonl`, in order."""
    with open(os.path.join(workdir, HISTORY_FILE), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
