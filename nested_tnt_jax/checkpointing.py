"""Checkpoints: the only orbax user.

A checkpoint holds two items: `state` (the `steps.TrainState`: params, optimizer state, step
and rng) and `data` (the grain train iterator's position, one file per process). Saving is
asynchronous: the device arrays are copied and written in the background while training goes
on. Restarting with the same workdir restores both, so the run continues exactly where it
stopped. `init_from` takes only the parameters of another run (or of a timm checkpoint file)
for fine-tuning.

Nothing here unpickles: orbax stores arrays in its own format (OCDBT/Zarr) and the iterator
state is JSON; timm files are read by `nested_tnt_jax.convert` (safetensors / weights-only).
"""

import logging
import os
import signal
import threading
from typing import Any

import flax
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any

CHECKPOINT_DIR = "checkpoints"
# Orbax's default on CPU/TPU slices every replicated array so that replicas share the writing;
# each slice is a separately compiled op (hundreds per save for a model's parameter shapes).
# Writing each shard once from its first replica is as fast here and compiles nothing.
ocp.type_handlers.register_type_handler(
    jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True
)
# timm / PyTorch checkpoint files are converted by `nested_tnt_jax.convert`.
TIMM_SUFFIXES = (".pth", ".pth.tar", ".pt", ".bin", ".safetensors")


class _IteratorSnapshot:
    """The state of a grain iterator frozen at save time.

    Saving is asynchronous, so the grain handler may read the state after training has moved
    the live iterator on; handing it this snapshot (it only needs `get_state()`) pins the
    position that belongs with the saved train state.
    """

    def __init__(self, iterator: Any):
        self._state = iterator.get_state()

    def get_state(self) -> bytes:
        return self._state


class Checkpointer:
    """Periodic, asynchronous save and exact restore of a run in `workdir/checkpoints`."""

    def __init__(self, workdir: str, *, max_to_keep: int, asynchronous: bool = True):
        self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
        self._manager = ocp.CheckpointManager(
            self.directory,
            item_names=("state", "data"),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                enable_async_checkpointing=asynchronous,
                create=True,
            ),
        )

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None for a fresh run."""
        return self._manager.latest_step()

    def save(self, state: PyTree, data_iterator: Any, step: int) -> None:
        """Starts saving `state` and the iterator's position as checkpoint `step`.

        The caller guarantees `state` is finite (the train loop checks before calling).
        """
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(_IteratorSnapshot(data_iterator)),
            ),
            force=True,
        )

    def restore(self, abstract_state: PyTree, data_iterator: Any, step: int | None = None):
        """Restores checkpoint `step` (default: latest) into arrays sharded like `abstract_state`.

        `abstract_state` is a pytree of `jax.ShapeDtypeStruct`s with shardings (from
        `jax.eval_shape` of the init); the iterator is moved to the saved position in place.
        """
        step = self.latest_step() if step is None else step
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=grain.checkpoint.CheckpointRestore(data_iterator),
            ),
        )
        return restored["state"]

    def reached_preemption(self, step: int) -> bool:
        """True when the cluster (multi-host jax) signalled a preemption at this step."""
        return jax.process_count() > 1 and self._manager.reached_preemption(step)

    def close(self) -> None:
        """Waits for pending saves to finish and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


class StopSignal:
    """Set when SIGTERM (or SIGINT) arrives; the loop checks it each step, saves, and exits.

    Installing a handler instead of dying lets a preempted job write a checkpoint at the
    current step. The previous handlers are restored by `uninstall()`.
    """

    SIGNALS = (signal.SIGTERM,)

    def __init__(self):
        self._event = threading.Event()
        self._previous = {}

    def install(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
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
    its checkpoints/ folder)."""
    directory = os.path.abspath(path)
    if os.path.isdir(os.path.join(directory, CHECKPOINT_DIR)):
        directory = os.path.join(directory, CHECKPOINT_DIR)
    manager = ocp.CheckpointManager(
        directory, item_names=("state",), options=ocp.CheckpointManagerOptions(read_only=True)
    )
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(
            f"config.init_from is {path!r}, but {directory} holds no complete checkpoint. "
            "Point init_from at the workdir of a finished run (or its checkpoints/ folder), "
            f"or at a timm checkpoint file ({', '.join(TIMM_SUFFIXES)})."
        )
    # Restore on the host as numpy: the other run's mesh and shardings do not matter here.
    metadata = manager.item_metadata(step)["state"]
    target = jax.tree_util.tree_map(
        lambda m: np.empty(m.shape, m.dtype), metadata,
        is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"),
    )
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target)
        ),
    )["state"]
    manager.close()
    logging.info("init_from: loaded step %d of %s", step, directory)
    return restored["params"]


def load_pretrained(
    init_from: str, model_name: str, image_size: int, fresh_params: PyTree
) -> PyTree:
    """Parameters for fine-tuning: `init_from`'s weights merged into `fresh_params`.

    `init_from` is another run's workdir (orbax checkpoint) or a timm checkpoint file
    (converted by `nested_tnt_jax.convert` for `model_name` at `image_size`, position
    embeddings resampled; Nested-TNT's mixers, absent from timm, start fresh). Every parameter of
    `fresh_params` is taken from the checkpoint, except the classifier `head` when its shape
    differs (another class count): that one keeps its fresh initialisation. Any other
    missing or mis-shaped parameter is an error, since silently training it from scratch
    would mislead. Returns host (numpy) arrays shaped like `fresh_params`.
    """
    if os.path.isfile(init_from) and init_from.endswith(TIMM_SUFFIXES):
        from nested_tnt_jax import convert  # Only fine-tuning from timm needs torch.

        loaded = convert.timm_to_flax(
            convert.load_checkpoint_file(init_from), model_name, img_size=image_size)
    elif os.path.isdir(init_from):
        loaded = load_run_params(init_from)
    else:
        raise FileNotFoundError(
            f"config.init_from is {init_from!r}, which is neither a run's workdir nor a timm "
            f"checkpoint file ({', '.join(TIMM_SUFFIXES)}). Fix the path, or set init_from='' "
            "to train from scratch."
        )
    return merge_pretrained(flax.core.unfreeze(loaded), fresh_params)


def merge_pretrained(loaded: PyTree, fresh: PyTree) -> PyTree:
    """`fresh`'s tree with each leaf from `loaded`, except a re-shaped `head` (see above)."""
    loaded_flat = flax.traverse_util.flatten_dict(loaded, sep="/")
    fresh_flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(fresh), sep="/")
    merged, problems = {}, []
    for name, value in fresh_flat.items():
        old = loaded_flat.get(name)
        if old is not None and np.shape(old) == np.shape(value):
            merged[name] = np.asarray(old, dtype=value.dtype)
        elif name.split("/")[0] == "head":
            logging.info("init_from: new head parameter %s %s", name, np.shape(value))
            merged[name] = np.asarray(value)
        else:
            found = "missing" if old is None else f"shape {np.shape(old)}"
            problems.append(f"{name} (model {np.shape(value)}, checkpoint {found})")
    if problems:
        raise ValueError(
            "config.init_from does not match the model: "
            + "; ".join(problems[:8]) + (" ..." if len(problems) > 8 else "")
            + ". Only the classifier head may differ. Use the same model.name, image_size and "
            "model.overrides (e.g. scan_blocks) as the run being loaded."
        )
    unused = sorted(set(loaded_flat) - set(fresh_flat))
    if unused:
        logging.warning("init_from: %d checkpoint parameters unused, e.g. %s", len(unused),
                        unused[:4])
    return flax.traverse_util.unflatten_dict(merged, sep="/")
