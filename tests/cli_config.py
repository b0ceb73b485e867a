"""`--config=tests/cli_config.py:model=tnt,steps=12`: a CLI config that runs in seconds.

test_train's tiny model (32 px, batch 16) on small slices of the shared, read-only CIFAR-10
(tests/shared_data.py), checkpointing every 3 steps and keeping 3 checkpoints. Used by the
subprocess tests (test_faults, test_multiprocess), which drive the real
`python -m nested_tnt_jax.main`.
"""

import pathlib
import runpy

from configs import common

TESTS = pathlib.Path(__file__).resolve().parent


def get_config(arg: str | None = None):
    """`arg`: `model=vit|tnt|nested_tnt` (default tnt), `steps=N` (default 12)."""
    args = common.parse_arg(arg, model="tnt", steps=12)
    tiny_config = runpy.run_path(str(TESTS / "test_train.py"))["tiny_config"]
    config = tiny_config("cifar10", args.model, steps=args.steps)
    config.dataset.data_dir = str(runpy.run_path(str(TESTS / "shared_data.py"))["shared_tfds"]())
    config.dataset.train_split = "train[:512]"
    config.dataset.eval_split = "train[512:576]"
    config.dataset.test_split = "test[:64]"
    config.checkpoint_every_steps = config.log_every_steps = 3
    config.max_checkpoints_to_keep = 3
    config.eval_every_steps = 6
    return config
