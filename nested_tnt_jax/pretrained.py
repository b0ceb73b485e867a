"""`init_from`: another run's checkpoint or a timm file -> this model's parameters, recorded.

`load(init_from, model_name, image_size, abstract_params)` returns the parameters to overlay
on a fresh init (`overlay`, traceable, so the trainer applies it inside the jitted init and
creates the parameters where they live) and a record of what was loaded: the path, the
checkpoint step (None for a timm file) and a SHA-256 digest of the loaded parameters, which
the trainer writes to `config.json` and `results.json`, since the source may change or lose
that checkpoint later.

A source run that is still training (its workdir lock is held) is refused unless the path
names one of its checkpoints (`RUN/checkpoints/N`): its newest checkpoint is an intermediate
one that will soon be replaced. timm / PyTorch files are read by `nested_tnt_jax.models.convert`
(safetensors, or `torch.load` with `weights_only=True`: nothing else is unpickled).
"""

import hashlib
import logging
import os
from typing import Any

import flax
import jax.numpy as jnp
import numpy as np

from nested_tnt_jax import checkpointing, extras, paths, workdir
from nested_tnt_jax.errors import CheckpointError, ConfigError

PyTree = Any

# timm / PyTorch checkpoint files are converted by `nested_tnt_jax.models.convert`.
TIMM_SUFFIXES = (".pth", ".pth.tar", ".pt", ".bin", ".safetensors")


def digest(taken: dict[str, np.ndarray]) -> str:
    """SHA-256 over the parameters' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(taken):
        value = np.ascontiguousarray(taken[name])
        h.update(f"{name}:{value.dtype.str}:{value.shape};".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def check_packages(init_from: str) -> None:
    """ConfigError naming what to install when `init_from` is a timm file whose reader (torch,
    or safetensors for `.safetensors`) is not installed."""
    if init_from.endswith(TIMM_SUFFIXES):
        reader = "safetensors" if init_from.endswith(".safetensors") else "torch"
        extras.require(
            reader,
            f"config.init_from {init_from!r} (a timm checkpoint file)",
            "use the model's .safetensors file, which needs only safetensors"
            if reader == "torch"
            else "",
        )


def _check_source_not_training(init_from: str) -> None:
    """Refuses a run directory whose trainer still holds its lock (unless a step is named)."""
    directory, step = checkpointing.step_directory(init_from)
    if step is not None:
        return
    run_dir = (
        os.path.dirname(directory)
        if os.path.basename(directory) == checkpointing.CHECKPOINT_DIR
        else directory
    )
    holder = workdir.lock_holder(run_dir)
    if holder is not None:
        steps = checkpointing.complete_steps(init_from)
        raise ConfigError(
            f"config.init_from is {init_from!r}, a run that is still training "
            f"({workdir.describe_holder(holder)}), so its newest checkpoint is an intermediate "
            "one. Wait until it finishes, or name the checkpoint to start from: "
            f"--config.init_from={os.path.join(run_dir, checkpointing.CHECKPOINT_DIR, 'N')}"
            + (f" (complete steps now: {', '.join(map(str, steps))})." if steps else ".")
        )


def load(
    init_from: str, model_name: str, image_size: int, abstract_params: PyTree
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The parameters `init_from` gives a model whose params look like `abstract_params`, and
    the record of what was loaded (`path`, `step`, `digest`).

    `init_from` is another run's workdir, its checkpoints/ folder or one step's folder (orbax
    checkpoint), or a timm checkpoint file (converted by `convert` for `model_name` at
    `image_size`, position embeddings resampled; Nested-TNT's mixers, absent from timm, start
    fresh). The parameters come back as host arrays by flattened name
    ("blocks_0/mlp/fc1/kernel"), ready for `overlay`, for every parameter except the
    classifier `head` when its shape differs (another class count), which keeps its fresh
    initialisation. `abstract_params` may be `jax.ShapeDtypeStruct`s, so a mismatch is
    refused (CheckpointError) before anything is compiled or written.
    """
    step = None
    source = paths.resolve(init_from)
    if source.is_file() and init_from.endswith(TIMM_SUFFIXES):
        from nested_tnt_jax.models import convert  # noqa: PLC0415 (only fine-tuning from timm needs torch)

        try:
            loaded = convert.timm_to_flax(
                convert.load_checkpoint_file(init_from), model_name, img_size=image_size
            )
        except Exception as e:  # safetensors, torch's weights-only loader and zip raise many types.
            raise CheckpointError(
                f"config.init_from {init_from!r} cannot be used for {model_name!r}: "
                f"{checkpointing._brief(e, 600)}. Pass a timm checkpoint of this model "
                "(safetensors, or a PyTorch file of plain tensors: nothing else is "
                "unpickled)."
            ) from e
    elif source.is_dir():
        _check_source_not_training(init_from)
        loaded, step = checkpointing.read_params(init_from)
    else:
        raise FileNotFoundError(
            f"config.init_from is {init_from!r}, which is neither a run's workdir nor a timm "
            f"checkpoint file ({', '.join(TIMM_SUFFIXES)}). Fix the path, or set init_from='' "
            "to train from scratch."
        )
    taken = match(flax.core.unfreeze(loaded), abstract_params)
    record = {"path": str(source), "step": step, "digest": digest(taken)}
    logging.info(
        "init_from: loaded %s%s (params sha256 %s)",
        record["path"],
        "" if step is None else f" at step {step}",
        record["digest"][:16],
    )
    return taken, record


def match(loaded: PyTree, abstract: PyTree) -> dict[str, np.ndarray]:
    """`loaded`'s leaf for each leaf of `abstract`, by name, cast to its dtype; a re-shaped
    `head` is left out (see `load`) and any other gap is a CheckpointError."""
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
            + "; ".join(problems[:8])
            + (" ..." if len(problems) > 8 else "")
            + ". Only the classifier head may differ. Use the same model.name, image_size and "
            "model.overrides (e.g. scan_blocks) as the run being loaded."
        )
    unused = sorted(set(loaded_flat) - set(abstract_flat))
    if unused:
        logging.warning(
            "init_from: %d checkpoint parameters unused, e.g. %s", len(unused), unused[:4]
        )
    return taken


def overlay(params: PyTree, taken: dict[str, Any]) -> PyTree:
    """`params` with the leaves named in `taken` (from `load`) replaced; traceable, so the init
    can apply it inside `jax.jit` and create the parameters where they live."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
    flat.update({name: jnp.asarray(value) for name, value in taken.items()})
    return flax.traverse_util.unflatten_dict(flat, sep="/")
