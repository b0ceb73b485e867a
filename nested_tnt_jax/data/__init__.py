"""Input pipeline: TFDS ArrayRecord sources read through grain, host augmentation in numpy,
and on-device batch preprocessing (see docs/architecture.md, "Data interface")."""

from nested_tnt_jax.data.datasets import (
    DATASETS,
    DatasetInfo,
    check_packages,
    dataset_info,
    open_source,
    resolve_data_dir,
    split_size,
)
from nested_tnt_jax.data.pipeline import EvalBatches, create_eval_batches, create_train_iterator
from nested_tnt_jax.data.preprocess import preprocess

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "EvalBatches",
    "check_packages",
    "create_eval_batches",
    "create_train_iterator",
    "dataset_info",
    "open_source",
    "preprocess",
    "resolve_data_dir",
    "split_size",
]
