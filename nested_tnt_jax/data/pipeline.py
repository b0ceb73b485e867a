"""grain pipelines: the repeating, checkpointable train iterator and exact eval batches.

Each process reads only its shard (grain ShardOptions from the jax process index) and yields
host batches of `global_batch_size // process_count` examples; `sharding.global_batch`
assembles the global array. Both pipelines use grain's `DataLoader` over an `IndexSampler`:
its iterator has `get_state()` / `set_state()` (and works with grain's orbax checkpoint
handler), shuffles with a new order each epoch, and seeds each record's augmentation from
(seed, position), so batches do not depend on timing or on where a run resumed. They do
depend on `worker_count` (grain deals records to workers round-robin and each worker batches
its own), so a resumed run must keep the worker count; grain's state check enforces that.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import grain
import jax
from absl import flags
import numpy as np

from nested_tnt_jax.data import augment
from nested_tnt_jax.data.datasets import dataset_info, open_source


@dataclasses.dataclass(frozen=True)
class TrainTransform(grain.transforms.RandomMap):
    """Random training view of one record at the host size; uint8 image, int32 label."""

    crop: str
    pad: int
    flip: bool
    size: int

    def random_map(self, element: dict[str, Any], rng: np.random.Generator):
        image = augment.train_view(
            element["image"], rng, crop=self.crop, pad=self.pad, flip=self.flip, size=self.size
        )
        return {"image": image, "label": np.int32(element["label"])}


@dataclasses.dataclass(frozen=True)
class EvalTransform(grain.transforms.Map):
    """Deterministic eval view; keeps `mask` (False on padding) and the example `index`."""

    crop: str
    size: int

    def map(self, element: dict[str, Any]):
        return {
            "image": augment.eval_view(element["image"], crop=self.crop, size=self.size),
            "label": np.int32(element["label"]),
            "mask": np.bool_(element["mask"]),
            "index": np.int32(element["index"]),
        }


class PaddedSource:
    """A source extended to `length` records; records past the end are masked padding.

    Padding repeats real records (so they decode and stack like the rest) with mask=False and
    index=-1: metrics weighted by `mask` count every real example exactly once.
    """

    def __init__(self, source, length: int):
        self._source = source
        self._length = length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, Any]:
        real = index < len(self._source)
        record = self._source[index % len(self._source)]
        return {
            "image": record["image"],
            "label": record["label"],
            "mask": real,
            "index": index if real else -1,
        }

    def __repr__(self) -> str:
        return f"PaddedSource({self._source!r}, length={self._length})"


# grain scans its whole read-ahead buffer on every element to measure prefetch depth; with
# its default of 500 that scan costs more than reading a CIFAR record, so keep it short.
_READ_OPTIONS = grain.ReadOptions(num_threads=8, prefetch_buffer_size=64)


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"The global batch size {global_batch_size} must be a positive multiple of the "
            f"number of processes ({process_count}), so every process reads the same number of "
            "examples per step; change batch_size."
        )
    return global_batch_size // process_count


def _loader(source, sampler, operations, worker_count, prefetch, shard_options):
    """A grain DataLoader with this pipeline's read settings.

    grain's worker processes read absl flags; outside an absl app (tests, notebooks) the
    flags are unparsed and the workers would fail, so their defaults are accepted here.
    """
    if worker_count > 0 and not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    return grain.DataLoader(
        data_source=source,
        sampler=sampler,
        operations=operations,
        worker_count=worker_count,
        worker_buffer_size=prefetch,
        shard_options=shard_options,
        read_options=_READ_OPTIONS,
    )


def _shard_options(process_index: int | None, process_count: int | None):
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    return grain.sharding.ShardOptions(shard_index=index, shard_count=count, drop_remainder=True)


def create_train_iterator(
    dataset: str,
    split: str | None = None,
    *,
    data_dir: str | None = None,
    global_batch_size: int,
    host_image_size: int,
    seed: int = 0,
    crop: str | None = None,
    pad: int = 4,
    flip: bool = True,
    worker_count: int = 0,
    prefetch: int = 2,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.DataLoaderIterator:
    """Endless shuffled, augmented train batches for this process, with saveable state.

    Yields dicts `image` uint8 (local_batch, host_image_size, host_image_size, 3) and `label`
    int32 (local_batch,). `split`/`crop` default to the dataset's table entry. The same seed
    gives the same batches; `it.set_state(saved)` on a fresh iterator continues exactly where
    the saved one stopped. `worker_count` > 0 augments in that many processes, each keeping
    `prefetch` batches ready. `process_index`/`process_count` default to jax's (override them
    only to simulate other hosts).
    """
    info = dataset_info(dataset)
    crop = crop or info.crop
    augment.check_crop(crop)
    shard_options = _shard_options(process_index, process_count)
    local_batch = _local_batch_size(global_batch_size, shard_options.shard_count)
    source = open_source(dataset, split or info.train_split, data_dir)
    sampler = grain.samplers.IndexSampler(
        num_records=len(source),
        shard_options=shard_options,
        shuffle=True,
        num_epochs=None,
        seed=seed,
    )
    operations = [
        TrainTransform(crop=crop, pad=pad, flip=flip, size=host_image_size),
        grain.transforms.Batch(batch_size=local_batch, drop_remainder=True),
    ]
    return iter(_loader(source, sampler, operations, worker_count, prefetch, shard_options))


@dataclasses.dataclass(frozen=True)
class EvalBatches:
    """A split as padded eval batches; each `for` loop over it is a fresh pass.

    `num_steps` is the same on every process (computed from the split size, not the shard)
    and `num_examples` is the split size: `sum(mask)` over all processes and steps equals it.
    """

    loader: grain.DataLoader
    num_steps: int
    num_examples: int

    def __iter__(self):
        return iter(self.loader)

    def __len__(self) -> int:
        return self.num_steps


def create_eval_batches(
    dataset: str,
    split: str | None = None,
    *,
    data_dir: str | None = None,
    global_batch_size: int,
    host_image_size: int,
    crop: str | None = None,
    worker_count: int = 0,
    prefetch: int = 2,
    process_index: int | None = None,
    process_count: int | None = None,
) -> EvalBatches:
    """Every example of `split` exactly once, in fixed-size padded batches with a mask.

    The split is padded to `num_steps * global_batch_size` records and cut into one
    contiguous range per process, so every process yields the same `num_steps` batches of
    `global_batch_size // process_count` with keys `image`, `label`, `mask` (bool, False on
    padding) and `index` (int32 position in the split, -1 on padding).
    """
    info = dataset_info(dataset)
    crop = crop or info.crop
    augment.check_crop(crop)
    shard_options = _shard_options(process_index, process_count)
    local_batch = _local_batch_size(global_batch_size, shard_options.shard_count)
    source = open_source(dataset, split or info.eval_split, data_dir)
    num_examples = len(source)
    num_steps = math.ceil(num_examples / global_batch_size)
    padded = PaddedSource(source, num_steps * global_batch_size)
    sampler = grain.samplers.IndexSampler(
        num_records=len(padded), shard_options=shard_options, shuffle=False, num_epochs=1
    )
    operations = [
        EvalTransform(crop=crop, size=host_image_size),
        grain.transforms.Batch(batch_size=local_batch, drop_remainder=True),
    ]
    loader = _loader(padded, sampler, operations, worker_count, prefetch, shard_options)
    return EvalBatches(loader=loader, num_steps=num_steps, num_examples=num_examples)
