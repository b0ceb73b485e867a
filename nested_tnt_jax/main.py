r"""Command line: train and evaluate one config.

  python -m nested_tnt_jax.main --config=configs/cifar10.py:model=nested_tnt,cpu \
      --config.dataset.data_dir=../shared/tfds --workdir=runs/c10_cpu

Any config field can be overridden (`--config.model.name=tnt_s_patch16_224`,
`--config.optim.learning_rate=0.01`); unknown fields are refused. Re-running with the same
`--workdir` resumes from its latest checkpoint. On several hosts (a TPU pod slice, SLURM, or
`JAX_COORDINATOR_ADDRESS` set) `jax.distributed.initialize()` runs first; `--distributed`
forces it on or off.
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file, with optional `:args`.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "Call jax.distributed.initialize(): 'auto' when the environment shows several hosts.")
flags.mark_flags_as_required(["config", "workdir"])


def multihost_environment() -> bool:
    """True when the environment describes a multi-process jax job."""
    env = os.environ
    return bool(
        env.get("JAX_COORDINATOR_ADDRESS")
        or int(env.get("SLURM_NTASKS", "1")) > 1
        or "," in env.get("TPU_WORKER_HOSTNAMES", "")
        or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    )


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    import jax  # After flag parsing, so XLA_FLAGS and friends from the shell apply.

    if _DISTRIBUTED.value == "on" or (_DISTRIBUTED.value == "auto" and multihost_environment()):
        jax.distributed.initialize()
    from nested_tnt_jax import train

    logging.info("JAX process %d / %d, %d local devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count())
    try:
        train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except train.ConfigError as e:
        raise app.UsageError(str(e)) from None


if __name__ == "__main__":
    app.run(main)
