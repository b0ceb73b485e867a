"""grain pipelines: the endless train batches from any step, and exact eval batches.

Both read one global order of the records (for training a grain `IndexSampler` that shuffles
anew each epoch and seeds each record's augmentation from (seed, position)); global batch `b`
is positions `[b * G, (b + 1) * G)` of that order, and each process reads only its rows of it,
`global_batch_size // process_count` of them, which `sharding.global_batch` assembles into the
global array. So a batch depends on the seed and the step alone: not on the number of
processes or grain workers, nor on timing, and a resumed run needs no saved iterator state,
only the step to start from.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import grain
import jax
from absl import flags, logging
import numpy as np

from nested_tnt_jax.data import augment
from nested_tnt_jax.data.datasets import DatasetInfo, dataset_info, open_source
from nested_tnt_jax.errors import check_range


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
    """Deterministic eval view; keeps `mask` (False on padding) and the example `index`.
    `viewed`: the records already hold their eval views (`DecodedSource` made them)."""

    crop: str
    size: int
    viewed: bool = False

    def map(self, element: dict[str, Any]):
        image = element["image"]
        return {
            "image": image
            if self.viewed
            else augment.eval_view(image, crop=self.crop, size=self.size),
            "label": np.int32(element["label"]),
            "mask": np.bool_(element["mask"]),
            "index": np.int32(element["index"]),
        }


class DecodedSource:
    """A source read once into memory: every record decoded, its `image` and `label` kept.

    On small images decoding is most of the host's work, and on a 2-core machine that work
    takes CPU time from the training step; read once up front, the pipeline feeds more images
    per second (benchmarks/input_pipeline.py measures it). Records, and so batches, are
    exactly those of `source`, unless `image_fn` maps each image as it is stored (how
    `create_train_iterator` and `create_eval_batches` keep large images of varying size
    small). Each grain worker process, and each of several processes (which read only their
    rows), holds a whole copy.
    """

    def __init__(self, source, image_fn: Callable[[np.ndarray], np.ndarray] | None = None):
        image_fn = image_fn or (lambda image: image)
        self._records = [
            {"image": image_fn(r["image"]), "label": r["label"]}
            for r in map(source.__getitem__, range(len(source)))
        ]
        self._name = repr(source)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._records[index]

    def __repr__(self) -> str:
        return f"DecodedSource({self._name}, length={len(self)})"


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


def check_input_config(input_config) -> None:
    """Raises ConfigError (naming the field) for an `input` config block out of range."""

    check_range(
        "input.worker_count",
        input_config.worker_count,
        low=0,
        integer=True,
        hint="grain worker processes; 0 reads in the main process",
    )
    check_range(
        "input.prefetch",
        input_config.prefetch,
        low=1,
        integer=True,
        hint="batches each worker keeps ready",
    )
    check_range(
        "input.host_image_size",
        input_config.host_image_size,
        low=0,
        integer=True,
        hint="0 ships images at image_size",
    )


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"The global batch size {global_batch_size} must be a positive multiple of the "
            f"number of processes ({process_count}), so every process reads the same number of "
            "examples per step; change batch_size."
        )
    return global_batch_size // process_count


class GlobalBatchRows:
    """grain sampler: this process's rows of each global batch of a global `order`.

    Row `r` of global batch `b` is position `b * global + process_index * local + r` of
    `order`, whose record key and rng (the augmentation seed) it hands on, so a global batch
    is the same records for any process count, and the stream starts at batch `start_batch`.
    grain's `Batch` batches within each worker: with `w` workers, worker `i` reads the
    sampler's indices `i, i + w, ...`, its `m`-th batch is the loader's batch `m * w + i`
    (workers take turns), and the sampler is laid out so that this is the right global batch
    for any `w`. `num_batches` (None: endless) bounds the batches; a multiple of `w`, so
    that each worker's last batch is full.
    """

    def __init__(
        self,
        order: Any,
        *,
        global_batch_size: int,
        process_index: int,
        process_count: int,
        worker_count: int,
        start_batch: int = 0,
        num_batches: int | None = None,
    ):
        self._order = order
        self._global = global_batch_size
        self._local = _local_batch_size(global_batch_size, process_count)
        self._process = process_index
        self._workers = max(worker_count, 1)
        self._start = start_batch
        if num_batches is not None and num_batches % self._workers:
            raise ValueError(
                f"num_batches {num_batches} is not a multiple of the {self._workers} workers"
            )
        self._length = sys.maxsize if num_batches is None else num_batches * self._local

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> grain.RecordMetadata:
        if not 0 <= index < self._length:
            raise IndexError(f"index {index} out of range [0, {self._length})")
        worker, turn = index % self._workers, index // self._workers
        batch_of_worker, row = divmod(turn, self._local)
        batch = self._start + batch_of_worker * self._workers + worker
        metadata = self._order[batch * self._global + self._process * self._local + row]
        return grain.RecordMetadata(index=index, record_key=metadata.record_key, rng=metadata.rng)

    def __repr__(self) -> str:
        return (
            f"GlobalBatchRows({self._order!r}, global_batch_size={self._global}, "
            f"process={self._process}, workers={self._workers}, "
            f"start_batch={self._start}, length={self._length})"
        )


def _loader(source, sampler, operations, worker_count, prefetch):
    """A grain DataLoader over `sampler` (already this process's records) with this
    pipeline's read settings.

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
        shard_options=grain.sharding.NoSharding(),
        read_options=_READ_OPTIONS,
    )


# With `cache_decoded`, images of varying size (crop "random_resized") are kept in memory
# smaller: training images with their shorter side at most this many times the host size
# (random resized crops are then cut from them), eval images as their eval view.
CACHED_TRAIN_SCALE = 2


def _open(
    dataset: str,
    split: str,
    data_dir: str | None,
    cache_decoded: bool,
    image_fn: Callable[[np.ndarray], np.ndarray] | None = None,
):
    source = open_source(dataset, split, data_dir)
    if not cache_decoded:
        return source
    logging.info(
        "Reading %s %s (%d records) into memory (input.cache_decoded)...",
        dataset,
        split,
        len(source),
    )
    start = time.perf_counter()
    source = DecodedSource(source, image_fn)
    logging.info("Read %s %s in %.1f s.", dataset, split, time.perf_counter() - start)
    return source


def host_image_size(input_config: Any, image_size: int) -> int:
    """The size of the uint8 images the host ships: `input.host_image_size`, or `image_size`
    when that is 0 (the device then resizes to `image_size`)."""
    return input_config.host_image_size or image_size


@dataclasses.dataclass(frozen=True)
class _Reading:
    """What both entry points settle first: the dataset's entry, the crop, the host image
    size, this process's place and its rows per batch."""

    info: DatasetInfo
    crop: str
    size: int
    process_index: int
    process_count: int
    local_batch: int


def _reading(
    dataset_config: Any,
    augment_config: Any,
    input_config: Any,
    image_size: int,
    global_batch_size: int,
    process_index: int | None,
    process_count: int | None,
) -> _Reading:
    info = dataset_info(dataset_config.name)
    crop = augment_config.crop or info.crop
    augment.check_crop(crop)
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    return _Reading(
        info,
        crop,
        host_image_size(input_config, image_size),
        index,
        count,
        _local_batch_size(global_batch_size, count),
    )


def create_train_iterator(
    dataset_config: Any,
    augment_config: Any,
    input_config: Any,
    *,
    global_batch_size: int,
    image_size: int,
    seed: int,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict]:
    """Endless shuffled, augmented train batches for this process, from batch `start_step`.

    The three blocks are the run config's: `dataset` (name, data_dir, train_split), `augment`
    (crop, pad, flip) and `input` (worker_count, prefetch, host_image_size, cache_decoded).
    Yields dicts `image` uint8 (local_batch, size, size, 3), size `host_image_size(input,
    image_size)`, and `label` int32 (local_batch,). An empty split or crop means the dataset's
    table entry. The same seed gives the same batches; an iterator made with `start_step=k`
    yields what a fresh one yields from its `k`-th batch on (how a run resumes). `worker_count`
    > 0 augments in that many processes, each keeping `prefetch` batches ready.
    `cache_decoded` reads the split into memory first (`DecodedSource`; for CIFAR, and for
    random resized crops from images of varying size, kept at `CACHED_TRAIN_SCALE` times the
    host size). `process_index`/`process_count` default to jax's (override them only to
    simulate hosts).
    """
    r = _reading(
        dataset_config,
        augment_config,
        input_config,
        image_size,
        global_batch_size,
        process_index,
        process_count,
    )
    shrink = None
    if r.crop == "random_resized":
        shrink = functools.partial(augment.shrink, short_side=CACHED_TRAIN_SCALE * r.size)
    source = _open(
        dataset_config.name,
        dataset_config.train_split or r.info.train_split,
        dataset_config.data_dir,
        input_config.cache_decoded,
        shrink,
    )
    order = grain.samplers.IndexSampler(
        num_records=len(source), shuffle=True, num_epochs=None, seed=seed
    )
    sampler = GlobalBatchRows(
        order,
        global_batch_size=global_batch_size,
        process_index=r.process_index,
        process_count=r.process_count,
        worker_count=input_config.worker_count,
        start_batch=start_step,
    )
    operations = [
        TrainTransform(crop=r.crop, pad=augment_config.pad, flip=augment_config.flip, size=r.size),
        grain.transforms.Batch(batch_size=r.local_batch, drop_remainder=True),
    ]
    return iter(
        _loader(source, sampler, operations, input_config.worker_count, input_config.prefetch)
    )


@dataclasses.dataclass(frozen=True)
class EvalBatches:
    """A split as padded eval batches; each `for` loop over it is a fresh pass.

    `num_steps` is the same on every process (computed from the split size, not the shard)
    and `num_examples` is the split size: `sum(mask)` over all processes and steps equals it.
    """

    loader: grain.DataLoader
    num_steps: int
    num_examples: int

    def __iter__(self) -> Iterator[dict]:
        # The loader may hold a few more, all padding (see `create_eval_batches`).
        return itertools.islice(iter(self.loader), self.num_steps)

    def __len__(self) -> int:
        return self.num_steps


def create_eval_batches(
    dataset_config: Any,
    augment_config: Any,
    input_config: Any,
    *,
    split: str,
    global_batch_size: int,
    image_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> EvalBatches:
    """Every example of `split` exactly once, in fixed-size padded batches with a mask.

    The blocks are the run config's, as for `create_train_iterator` (of `augment` only the
    crop is read, which picks the eval view). The split is padded to
    `num_steps * global_batch_size` records; global batch `b` is records `[b * G, (b + 1) * G)`
    whatever the process count, and every process yields its rows of each: `num_steps` batches
    of `global_batch_size // process_count` with keys `image`, `label`, `mask` (bool, False on
    padding) and `index` (int32 position in the split, -1 on padding). `cache_decoded`: as for
    `create_train_iterator` (images of varying size are stored as their eval views, so the
    batches are the same as without it); each `for` loop then reads memory only.
    """
    r = _reading(
        dataset_config,
        augment_config,
        input_config,
        image_size,
        global_batch_size,
        process_index,
        process_count,
    )
    cache_decoded = input_config.cache_decoded
    viewed = cache_decoded and r.crop == "random_resized"
    view = functools.partial(augment.eval_view, crop=r.crop, size=r.size)
    source = _open(
        dataset_config.name, split, dataset_config.data_dir, cache_decoded, view if viewed else None
    )
    num_examples = len(source)
    num_steps = math.ceil(num_examples / global_batch_size)
    # Whole turns of the workers (see `GlobalBatchRows`); batches past num_steps are padding.
    workers = max(input_config.worker_count, 1)
    loader_batches = math.ceil(num_steps / workers) * workers
    padded = PaddedSource(source, loader_batches * global_batch_size)
    sampler = GlobalBatchRows(
        grain.samplers.IndexSampler(num_records=len(padded), shuffle=False, num_epochs=1),
        global_batch_size=global_batch_size,
        process_index=r.process_index,
        process_count=r.process_count,
        worker_count=input_config.worker_count,
        num_batches=loader_batches,
    )
    operations = [
        EvalTransform(crop=r.crop, size=r.size, viewed=viewed),
        grain.transforms.Batch(batch_size=r.local_batch, drop_remainder=True),
    ]
    loader = _loader(padded, sampler, operations, input_config.worker_count, input_config.prefetch)
    return EvalBatches(loader=loader, num_steps=num_steps, num_examples=num_examples)
