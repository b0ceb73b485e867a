"""Checkpoints: the only orbax user.

A checkpoint holds the `steps.TrainState` (params, optimiser state, step and rng). The data
position needs no saving: train batches are a function of the step (see `data.pipeline`), so
a run restored at step `k` reads on from batch `k` on any number of processes. Saving is
asynchronous: the device arrays are copied and written in the background while training
goes on; orbax writes each step into a temporary directory and renames it when complete, so a
killed save leaves no step behind (leftovers are removed at the next start). Restarting with
the same workdir restores the newest checkpoint that reads back, resharded to the current
mesh; a newer one that does not (a truncated or corrupted file) is moved to
`workdir/unreadable_checkpoints/` with a warning. `read_params` reads the parameters of a
run's checkpoint for another program (fine-tuning in `pretrained`, `predict`); `StopSignal`
turns SIGTERM and Ctrl-C into a save and a clean stop.

Nothing here unpickles: orbax stores arrays in its own format (OCDBT/Zarr) and JSON metadata.
"""

import functools
import logging
import os
import signal
import threading
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from nested_tnt_jax import paths
from nested_tnt_jax.errors import CheckpointError

PyTree = Any

CHECKPOINT_DIR = "checkpoints"
UNREADABLE_DIR = "unreadable_checkpoints"


@functools.cache
def _write_each_shard_once() -> None:
    """Makes orbax write each shard of a jax.Array once, from its first replica.

    Orbax's default on CPU/TPU slices every replicated array so that replicas share the
    writing; each slice is a separately compiled op (hundreds per save for a model's
    parameter shapes). Writing each shard once is as fast here and compiles nothing. Orbax
    keeps this in a global registry and warns whenever an entry is replaced; done once, when
    the first `Checkpointer` is made (not at import), with that warning held back, since it
    is this program's choice and nothing a user did.
    """
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True
        )
    finally:
        absl_logger.setLevel(level)


def _brief(error: BaseException, limit: int = 400) -> str:
    """`Type: message` of `error` on one line, at most about `limit` characters.

    Orbax and tensorstore errors can run to many lines of paths and detail that would bury
    the explanation around them; their start (what failed) and end (the OS's reason, e.g.
    "File too large") are kept.
    """
    text = " ".join(f"{type(error).__name__}: {error}".split())
    half = limit // 2
    return text if len(text) <= limit else f"{text[:half]} ... {text[-half:]}"


def _complete_steps(directory: str | epath.Path) -> list[int]:
    """Steps of the finished checkpoints in `directory`, read from storage alone.

    On local disk orbax writes a step into a temporary directory and renames it to the bare
    step number when every file is written; Cloud Storage has no renames, so there orbax
    writes the step in place and marks it finished with a `commit_success.txt` file, written
    last. `ocp.utils.checkpoint_steps` reads both marks.
    """
    directory = paths.resolve(directory)
    if not directory.is_dir():
        return []
    return sorted(ocp.utils.checkpoint_steps(directory))


def has_checkpoints(workdir: str) -> bool:
    """Whether `workdir` holds a finished checkpoint (so the run resumes); creates nothing."""
    return bool(_complete_steps(paths.resolve(workdir) / CHECKPOINT_DIR))


def _move(source: epath.Path, target: epath.Path) -> None:
    """Moves a directory: a rename on local disk, a copy then a delete on Cloud Storage."""
    if paths.is_cloud(source):
        for item in source.rglob("*"):
            if item.is_file():
                item.copy(target / item.relative_to(source))
        source.rmtree()
    else:
        source.rename(target)


class Checkpointer:
    """Periodic, asynchronous save and exact restore of a run in `workdir/checkpoints`."""

    def __init__(self, workdir: str, *, max_to_keep: int, asynchronous: bool = True):
        _write_each_shard_once()
        self.workdir = paths.resolve(workdir)
        self.directory = self.workdir / CHECKPOINT_DIR
        self._manager = ocp.CheckpointManager(
            self.directory,
            item_names=("state",),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                enable_async_checkpointing=asynchronous,
                create=True,
                cleanup_tmp_directories=True,
            ),
        )

    def save(self, state: PyTree, step: int) -> None:
        """Starts saving `state` as checkpoint `step` (a failure of the previous, asynchronous
        save surfaces here as CheckpointError).

        The caller guarantees `state` is finite (the train loop checks before calling).
        """
        try:
            self._manager.save(
                step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True
            )
        except Exception as e:  # Disk full, permissions, I/O: orbax raises many types.
            raise self._write_error(e) from e

    def _write_error(self, error: Exception) -> CheckpointError:
        complete = _complete_steps(self.directory)
        kept = (
            f"the complete checkpoints (steps {', '.join(map(str, complete))}) are intact"
            if complete
            else "no complete checkpoint was written yet"
        )
        return CheckpointError(
            f"Writing a checkpoint into {self.directory} failed ({_brief(error)}); {kept}. "
            "Free disk space or fix the directory's permissions, then run the same command "
            "again to resume from the newest complete checkpoint."
        )

    def restore(self, abstract_state: PyTree) -> PyTree | None:
        """The newest checkpoint that restores, as arrays sharded like `abstract_state`.

        `abstract_state` is a pytree of `jax.ShapeDtypeStruct`s with the current shardings
        (the checkpoint may have been written under another mesh or process count). Returns
        None when there is no checkpoint. Checkpoints that fail to read (truncated, corrupted)
        are skipped with a warning and, once an older one restores, moved to
        `workdir/unreadable_checkpoints/` so that the run can save those steps again. Raises
        CheckpointError when none restores (the directory is then left as it was).
        """
        failures = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                state = self._manager.restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
                )
            except Exception as e:  # noqa: BLE001 (torn or corrupt files fail in tensorstore, json or orbax)
                logging.warning(
                    "Checkpoint %d in %s cannot be restored (%s); trying an older one.",
                    step,
                    self.directory,
                    _brief(e),
                )
                failures.append((step, e))
                continue
            if failures:
                self._set_aside([s for s, _ in failures])
            return state["state"]
        if failures:
            raise CheckpointError(
                f"None of the checkpoints in {self.directory} can be restored (steps "
                f"{', '.join(str(s) for s, _ in failures)}; newest: {_brief(failures[0][1])}). "
                "If the model or its overrides changed since they were written, use the run's "
                "original config or another --workdir; to start afresh, move the directory "
                "away."
            )
        return None

    def _set_aside(self, steps: list[int]) -> None:
        """Moves unreadable step directories out of orbax's sight (process 0; all wait)."""
        if jax.process_index() == 0:
            aside = self.workdir / UNREADABLE_DIR
            aside.mkdir(parents=True, exist_ok=True)
            for step in steps:
                target = aside / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
                _move(self.directory / str(step), target)
                logging.warning("Moved unreadable checkpoint %d to %s.", step, target)
        multihost_utils.sync_global_devices("checkpointing:set_aside")
        self._manager.reload()

    def reached_preemption(self, step: int) -> bool:
        """True when a process of a multi-process job received SIGTERM (or the cluster
        announced a preemption) and all processes agreed to stop at this step."""
        return jax.process_count() > 1 and self._manager.reached_preemption(step)

    def close(self) -> None:
        """Waits for pending saves to finish (CheckpointError if one failed) and releases the
        manager."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # As in `save`.
            raise self._write_error(e) from e
        finally:
            self._manager.close()


class StopSignal:
    """Set when SIGTERM or SIGINT (Ctrl-C) arrives; the loop checks it each step, saves, and
    exits. A second signal stops the program at once (the default action of that signal).

    Installing a handler instead of dying lets a preempted job write a checkpoint at the
    current step. The previous handlers are restored by `uninstall()`. With several processes
    nothing is installed: `jax.distributed.initialize` set up jax's preemption notifier, which
    takes SIGTERM, and `Checkpointer.reached_preemption` makes every process stop at the same
    step even when the signal reaches only some of them (`hand_ctrl_c_to_preemption` makes a
    Ctrl-C one such signal).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self._event = threading.Event()
        self._previous = {}

    def install(self) -> "StopSignal":
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self._event.is_set():  # The second one: stop now.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        logging.warning(
            "Received %s: saving a checkpoint, then stopping (send it again to stop at once).",
            signal.Signals(signum).name,
        )
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def hand_ctrl_c_to_preemption() -> None:
    """With several processes, from `jax.distributed.initialize` on: the first Ctrl-C becomes
    a SIGTERM to this process, which jax's preemption notifier takes, so every process stops at
    one step with a checkpoint, as for SIGTERM; the next Ctrl-C interrupts at once."""

    def handle(signum, frame) -> None:
        logging.warning(
            "Received SIGINT: saving a checkpoint on every process, then stopping "
            "(press Ctrl-C again to stop at once)."
        )
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGINT, handle)


def step_directory(path: str) -> tuple[str, int | None]:
    """(checkpoints directory, step) for a run's workdir, its checkpoints/ folder or one step's
    folder in it (`RUN/checkpoints/N`); the step is None unless the path names one."""
    directory = str(paths.resolve(path))
    name = os.path.basename(directory)
    if name.isdigit() and os.path.basename(os.path.dirname(directory)) == CHECKPOINT_DIR:
        return os.path.dirname(directory), int(name)
    if (paths.resolve(directory) / CHECKPOINT_DIR).is_dir():
        directory = os.path.join(directory, CHECKPOINT_DIR)
    return directory, None


def complete_steps(path: str) -> list[int]:
    """The finished checkpoint steps of the run at `path` (see `step_directory`)."""
    return _complete_steps(step_directory(path)[0])


def load_run_params(path: str, step: int | None = None) -> PyTree:
    """The params (host numpy) of checkpoint `step` (None: the one `path` names, else the
    latest) of the run at `path`; see `read_params`."""
    return read_params(path, step)[0]


def read_params(path: str, step: int | None = None) -> tuple[PyTree, int]:
    """The params (host numpy) of a run's checkpoint, and its step.

    `path` is a workdir or its checkpoints/ folder (checkpoint `step`, or the latest complete
    one), or one step's folder, `RUN/checkpoints/N`. Raises FileNotFoundError when there is no
    such complete checkpoint, CheckpointError when it cannot be read.
    """
    directory, named = step_directory(path)
    step = named if step is None else step
    # The handler is named so that `item_metadata` can read the tree (shapes and dtypes) and
    # the restore target is host numpy: the other run's mesh, devices and process count (its
    # saved shardings) do not matter.
    manager = ocp.CheckpointManager(
        directory,
        item_handlers={"state": ocp.StandardCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(read_only=True),
    )
    try:
        complete = _complete_steps(directory)
        step = manager.latest_step() if step is None else step
        if step is None or step not in complete:
            what = "no complete checkpoint" + ("" if step is None else f" {step}")
            listed = f" (complete steps: {', '.join(map(str, complete))})" if complete else ""
            raise FileNotFoundError(
                f"{path!r} holds {what}: {directory}{listed}. Point at the workdir of a run "
                "that saved a checkpoint, its checkpoints/ folder, or one of its complete "
                "steps (RUN/checkpoints/N)."
            )
        try:
            metadata = manager.item_metadata(step)["state"]
            target = jax.tree_util.tree_map(
                lambda m: np.empty(m.shape, m.dtype),
                metadata,
                is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"),
            )
            restored = manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
            )["state"]
        except Exception as e:  # Torn or corrupt files fail in tensorstore, json or orbax.
            raise CheckpointError(
                f"Checkpoint {step} in {directory} cannot be read ({_brief(e)}): it is "
                "truncated, corrupted or not an orbax checkpoint of this program. Use another "
                "run (or restore the files from a copy)."
            ) from e
    finally:
        manager.close()
    logging.info("Loaded the params of checkpoint %d of %s", step, directory)
    return restored["params"], step
