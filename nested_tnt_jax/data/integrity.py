"""Every split a run will read, checked end to end before the first step.

A damaged data file would otherwise surface when the pipeline first reaches it: for the test
split, after all the training. `check_split` opens the split (preparing the dataset or
explaining why it cannot, as `open_source` does), counts it, and reads each of its records'
bytes from the ArrayRecord files (without decoding the images); ArrayRecord's chunks carry a
hash that reading verifies, so a truncated or corrupted file fails here, in about a second
for CIFAR's 60,000 records, with the file and the split named.
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from nested_tnt_jax.data.datasets import open_source, resolve_data_dir
from nested_tnt_jax.errors import RunError

_READ_CHUNK = 4096  # records per read call


def _brief(error: BaseException, limit: int = 300) -> str:
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= limit else text[:limit] + " ..."


def check_split(dataset: str, split: str, data_dir: str | None, field: str) -> int:
    """The number of examples of `split` after reading all of them; RunError naming the
    file, the split and the config `field` that chose it when one cannot be read."""
    from array_record.python.array_record_module import ArrayRecordReader  # noqa: PLC0415 (array_record's reader, only for the check)

    count = len(open_source(dataset, split, data_dir))
    builder = tfds.builder(dataset, data_dir=resolve_data_dir(data_dir), file_format="array_record")
    read = 0
    for instruction in builder.info.splits[split].file_instructions:
        path = instruction.filename
        take = instruction.take
        if take is None or take < 0:
            take = instruction.examples_in_shard - instruction.skip
        try:
            reader = ArrayRecordReader(path)
            try:
                for start in range(instruction.skip, instruction.skip + take, _READ_CHUNK):
                    stop = min(start + _READ_CHUNK, instruction.skip + take)
                    read += len(reader.read(list(range(start, stop))))
            finally:
                reader.close()
        except Exception as e:
            raise RunError(
                f"The data file {path} of the {split!r} split of {dataset} "
                f"(config.{field}) cannot be read: {_brief(e)}. The file is damaged or "
                "incomplete; copy or prepare the dataset again (or point "
                "config.dataset.data_dir at an intact copy). Nothing was trained."
            ) from e
    if read != count:
        raise RunError(
            f"The {split!r} split of {dataset} (config.{field}) has {count} examples in its "
            f"metadata but {read} records in its files under {resolve_data_dir(data_dir)}. "
            "The dataset is incomplete; copy or prepare it again."
        )
    return count
