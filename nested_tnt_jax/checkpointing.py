"""Checkpoints: the only orbax user.

A checkpoint holds the `steps.TrainState` (params, optimizer state, step and rng). The data
position needs no saving: train batches are a function of the step (see `data.pipeline`), so
a run restored at step `k` reads on from batch `k` on any number of processes. Saving is
asynchronous: the device arrays are copied and written in the background while training
goes on; orbax writes each step into a temporary directory and renames it when complete, so a
killed save leaves no step behind (leftovers are removed at the next start). Restarting with
the same workdir restores the newest checkpoint that reads back, resharded to the current
mesh; a newer one that does not (a truncated or corrupted file) is moved to
`workdir/unreadable_checkpoints/` with a warning. `init_from` takes only the parameters of
another run (or of a timm checkpoint file) for fine-tuning.

Nothing here unpickles: orbax stores arrays in its own format (OCDBT/Zarr) and JSON metadata;
timm files are read by `nested_tnt_jax.convert` (safetensors, or `torch.load` with
`weights_only=True`).
"""

import logging
import os
import signal
import threading
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

PyTree = Any

CHECKPOINT_DIR = "checkpoints"
UNREADABLE_DIR = "unreadable_checkpoints"
# Orbax's default on CPU/TPU slices every replicated array so that replicas share the writing;
# each slice is a separately compiled op (hundreds per save for a model's parameter shapes).
# Writing each shard once from its first replica is as fast here and compiles nothing.
ocp.type_handlers.register_type_handler(
    jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True
)
# timm / PyTorch checkpoint files are converted by `nested_tnt_jax.convert`.
TIMM_SUFFIXES = (".pth", ".pth.tar", ".pt", ".bin", ".safetensors")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, written or used; the message names the path and what
    to do (one paragraph, for the command line). A ValueError, as the `init_from` mismatch it
    reports always was."""


def _brief(error: BaseException, limit: int = 400) -> str:
    """`Type: message` of `error` on one line, at most about `limit` characters.

    Orbax and tensorstore errors can run to many lines of paths and detail that would bury
    the explanation around them; their start (what failed) and end (the OS's reason, e.g.
    "File too large") are kept.
    """
    text = " ".join(f"{type(error).__name__}: {error}".split())
    half = limit // 2
    return text if len(text) <= limit else f"{text[:half]} ... {text[-half:]}"


def _complete_steps(directory: str) -> list[int]:
    """Steps of the finished checkpoints in `directory`, read from the file system alone.

    Orbax writes a step into a temporary directory and renames it to the bare step number
    when every file is written, so a bare number is a finished step.
    """
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def has_checkpoints(workdir: str) -> bool:
    """Whether `workdir` holds a finished checkpoint (so the run resumes); creates nothing."""
    return bool(_complete_steps(os.path.join(workdir, CHECKPOINT_DIR)))


class Checkpointer:
    """Periodic, asynchronous save and exact restore of a run in `workdir/checkpoints`."""

    def __init__(self, workdir: str, *, max_to_keep: int, asynchronous: bool = True):
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, CHECKPOINT_DIR)
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
            self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                               force=True)
        except Exception as e:  # Disk full, permissions, I/O: orbax raises many types.
            raise self._write_error(e) from e

    def _write_error(self, error: Exception) -> CheckpointError:
        complete = _complete_steps(self.directory)
        kept = (f"the complete checkpoints (steps {', '.join(map(str, complete))}) are intact"
                if complete else "no complete checkpoint was written yet")
        return CheckpointError(
            f"Writing a checkpoint into {self.directory} failed ({_brief(error)}); {kept}. "
            "Free disk space or fix the directory's permissions, then run the same command "
            "again to resume from the newest complete checkpoint.")

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
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
            except Exception as e:  # Torn or corrupt files fail in tensorstore, json or orbax.
                logging.warning("Checkpoint %d in %s cannot be restored (%s); trying an older "
                                "one.", step, self.directory, _brief(e))
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
                "away.")
        return None

    def _set_aside(self, steps: list[int]) -> None:
        """Moves unreadable step directories out of orbax's sight (process 0; all wait)."""
        if jax.process_index() == 0:
            aside = os.path.join(self.workdir, UNREADABLE_DIR)
            os.makedirs(aside, exist_ok=True)
            for step in steps:
                target = os.path.join(aside, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
                os.replace(os.path.join(self.directory, str(step)), target)
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
    """Set when SIGTERM arrives; the loop checks it each step, saves, and exits.

    Installing a handler instead of dying lets a preempted job write a checkpoint at the
    current step. The previous handlers are restored by `uninstall()`. With several processes
    nothing is installed: `jax.distributed.initialize` set up jax's preemption notifier, which
    takes SIGTERM, and `Checkpointer.reached_preemption` makes every process stop at the same
    step even when the signal reaches only some of them.
    """

    SIGNALS = (signal.SIGTERM,)

    def __init__(self):
        self._event = threading.Event()
        self._previous = {}

    def install(self) -> "StopSignal":
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        logging.warning("Received signal %d: saving a checkpoint, then stopping.", signum)
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def load_run_params(path: str) -> PyTree:
    """The params (host numpy) of the latest checkpoint of the run at `path` (workdir or
    its checkpoints/ folder).

    Raises FileNotFoundError when there is no complete checkpoint, CheckpointError when the
    newest one cannot be read.
    """
    directory = os.path.abspath(path)
    if os.path.isdir(os.path.join(directory, CHECKPOINT_DIR)):
        directory = os.path.join(directory, CHECKPOINT_DIR)
    # The handler is named so that `item_metadata` can read the tree (shapes and dtypes) and
    # the restore target is host numpy: the other run's mesh, devices and process count (its
    # saved shardings) do not matter.
    manager = ocp.CheckpointManager(
        directory, item_handlers={"state": ocp.StandardCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(read_only=True),
    )
    try:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(
                f"config.init_from is {path!r}, but {directory} holds no complete checkpoint. "
                "Point init_from at the workdir of a finished run (or its checkpoints/ folder), "
                f"or at a timm checkpoint file ({', '.join(TIMM_SUFFIXES)})."
            )
        try:
            metadata = manager.item_metadata(step)["state"]
            target = jax.tree_util.tree_map(
                lambda m: np.empty(m.shape, m.dtype), metadata,
                is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"),
            )
            restored = manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
        except Exception as e:  # Torn or corrupt files fail in tensorstore, json or orbax.
            raise CheckpointError(
                f"Checkpoint {step} in {directory} cannot be read ({_brief(e)}): it is "
                "truncated, corrupted or not an orbax checkpoint of this program. Use another "
                "run (or restore the files from a copy).") from e
    finally:
        manager.close()
    logging.info("Loaded the params of checkpoint %d of %s", step, directory)
    return restored["params"]


def load_pretrained(
    init_from: str, model_name: str, image_size: int, abstract_params: PyTree
) -> dict[str, np.ndarray]:
    """The parameters `init_from` gives a model whose params look like `abstract_params`.

    `init_from` is another run's workdir (orbax checkpoint) or a timm checkpoint file
    (converted by `nested_tnt_jax.convert` for `model_name` at `image_size`, position
    embeddings resampled; Nested-TNT's mixers, absent from timm, start fresh). Returns host
    arrays by flattened name ("blocks_0/mlp/fc1/kernel"), ready for `overlay`, for every
    parameter except the classifier `head` when its shape differs (another class count),
    which keeps its fresh initialisation. `abstract_params` may be `jax.ShapeDtypeStruct`s,
    so a mismatch is refused (CheckpointError) before anything is compiled or written.
    """
    if os.path.isfile(init_from) and init_from.endswith(TIMM_SUFFIXES):
        from nested_tnt_jax import convert  # Only fine-tuning from timm needs torch.

        try:
            loaded = convert.timm_to_flax(
                convert.load_checkpoint_file(init_from), model_name, img_size=image_size)
        except Exception as e:  # safetensors, torch's weights-only loader and zip raise many types.
            raise CheckpointError(
                f"config.init_from {init_from!r} cannot be used for {model_name!r}: "
                f"{_brief(e, 600)}. Pass a timm checkpoint of this model (safetensors, or a "
                "PyTorch file of plain tensors: nothing else is unpickled).") from e
    elif os.path.isdir(init_from):
        loaded = load_run_params(init_from)
    else:
        raise FileNotFoundError(
            f"config.init_from is {init_from!r}, which is neither a run's workdir nor a timm "
            f"checkpoint file ({', '.join(TIMM_SUFFIXES)}). Fix the path, or set init_from='' "
            "to train from scratch."
        )
    return match_pretrained(flax.core.unfreeze(loaded), abstract_params)


def match_pretrained(loaded: PyTree, abstract: PyTree) -> dict[str, np.ndarray]:
    """`loaded`'s leaf for each leaf of `abstract`, by name, cast to its dtype; a re-shaped
    `head` is left out (see above) and any other gap is a CheckpointError."""
    loaded_flat = flax.traverse_util.flatten_dict(loaded, sep="/")
    abstract_flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(abstract), sep="/")
    taken, problems = {}, []
    for name, leaf in abstract_flat.items():
        old = loaded_flat.get(name)
        if old is not None and np.shape(old) == np.shape(leaf):
            taken[name] = np.asarray(old, dtype=leaf.dtype)
        elif name.split("/")[0] == "head":
            logging.info("init_from: new head parameter %s %s", name, np.shape(leaf))
        else:
            found = "missing" if old is None else f"shape {np.shape(old)}"
            problems.append(f"{name} (model {np.shape(leaf)}, checkpoint {found})")
    if problems:
        raise CheckpointError(
            "config.init_from does not match the model: "
            + "; ".join(problems[:8]) + (" ..." if len(problems) > 8 else "")
            + ". Only the classifier head may differ. Use the same model.name, image_size and "
            "model.overrides (e.g. scan_blocks) as the run being loaded."
        )
    unused = sorted(set(loaded_flat) - set(abstract_flat))
    if unused:
        logging.warning("init_from: %d checkpoint parameters unused, e.g. %s", len(unused),
                        unused[:4])
    return taken


def overlay(params: PyTree, taken: dict[str, Any]) -> PyTree:
    """`params` with the leaves named in `taken` (from `load_pretrained`) replaced; traceable,
    so the init can apply it inside `jax.jit` and create the parameters where they live."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
    flat.update({name: jnp.asarray(value) for name, value in taken.items()})
    return flax.traverse_util.unflatten_dict(flat, sep="/")
