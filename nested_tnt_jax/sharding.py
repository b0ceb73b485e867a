"""Mesh and shardings; the one place that builds global arrays from per-process data.

One (data, model) mesh: the batch dimension is split over the `data` axis; a `model` axis
larger than 1 shards parameters and optimiser state (FSDP style), 1 replicates them. Each
process holds `global_batch // process_count` examples and
`jax.make_array_from_process_local_data` stitches them into one global array.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from nested_tnt_jax.errors import ConfigError, check_range

DATA_AXIS = "data"


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the `data` axis, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimiser state, scalars)."""
    return NamedSharding(mesh, PartitionSpec())


def global_batch(batch: Any, mesh: Mesh) -> Any:
    """Turns this process's host batch (a pytree of numpy arrays) into global jax arrays.

    Used for train and eval batches alike; every leaf is split over `data` on its first axis.
    """
    sharding = data_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
    )


def check_config(config: Any) -> None:
    """Raises ConfigError (naming the field) unless `config.mesh.model_axis` divides the
    devices and the batches split evenly over the processes and data-parallel devices (the
    train batch also into `optim.grad_accum_steps` micro-batches). Before any compilation."""
    devices, processes = jax.device_count(), jax.process_count()
    model_axis = config.mesh.model_axis
    check_range(
        "mesh.model_axis",
        model_axis,
        low=1,
        integer=True,
        hint="devices per parameter shard group; 1 replicates parameters",
    )
    if devices % model_axis:
        raise ConfigError(
            f"config.mesh.model_axis is {model_axis}, which does not divide the {devices} "
            f"devices. Set it to a divisor of {devices} (1: replicated parameters)."
        )
    data_devices = devices // model_axis
    accum = config.optim.grad_accum_steps
    unit = math.lcm(data_devices, processes) * accum
    batch = config.batch_size
    if not isinstance(batch, int) or batch <= 0 or batch % unit:
        raise ConfigError(
            f"config.batch_size is {batch}, which does not split into {accum} "
            f"micro-batch(es) over {data_devices} data-parallel device(s) and {processes} "
            f"process(es): it must be a positive multiple of {unit}. Set batch_size to e.g. "
            f"{max(1, round(batch / unit)) * unit}."
        )
    eval_unit = math.lcm(data_devices, processes)
    eval_batch = config.eval_batch_size
    if not isinstance(eval_batch, int) or eval_batch < 0 or (eval_batch or batch) % eval_unit:
        raise ConfigError(
            f"config.eval_batch_size is {eval_batch} (0 means batch_size), which must be a "
            f"multiple of {eval_unit} (the data-parallel devices and processes)."
        )


# Parameter sharding (train side). A second mesh axis `model` lets large models shard their
# parameters and optimiser state instead of replicating them; batches stay split over `data`.
MODEL_AXIS = "model"


def create_mesh(model_axis: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, model) mesh; `model_axis` devices share each parameter shard group.

    With `model_axis=1` this is plain data parallelism (parameters replicated). Raises a clear
    error when the device count is not a multiple of `model_axis`.
    """
    devices = jax.devices() if devices is None else list(devices)
    if model_axis < 1 or len(devices) % model_axis:
        raise ValueError(
            f"mesh.model_axis is {model_axis}, which does not divide the {len(devices)} devices. "
            f"Set mesh.model_axis to a divisor of {len(devices)} (1 replicates parameters)."
        )
    grid = np.asarray(devices).reshape(len(devices) // model_axis, model_axis)
    return Mesh(grid, (DATA_AXIS, MODEL_AXIS))


def param_shardings(abstract_tree: Any, mesh: Mesh) -> Any:
    """NamedShardings for a pytree of arrays (or ShapeDtypeStructs) of params / optimiser state.

    Each leaf is split over `model` along its largest dimension that the axis size divides
    (FSDP style: XLA gathers it where it is used); leaves with no such dimension, and every
    leaf when the `model` axis has size 1, are replicated.
    """
    size = mesh.shape.get(MODEL_AXIS, 1)

    def spec(leaf: Any) -> NamedSharding:
        shape = getattr(leaf, "shape", ())
        dims = [d for d in np.argsort(shape)[::-1] if size > 1 and shape[d] % size == 0]
        if not dims:
            return replicated_sharding(mesh)
        axes = [None] * len(shape)
        axes[dims[0]] = MODEL_AXIS
        return NamedSharding(mesh, PartitionSpec(*axes))

    return jax.tree.map(spec, abstract_tree)
