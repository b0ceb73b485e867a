"""Host input-pipeline throughput (images/s of augmented uint8 train batches).

Measures `data.create_train_iterator` on this machine for
  * CIFAR-10 (the real ArrayRecord copy in ../shared/tfds) at host size 32 (pad-and-crop),
    read from the files and decoded in memory (`cache_decoded`, as the CIFAR configs do; the
    up-front read is not timed), and at host size 224 (pad-and-crop, then bicubic resize on
    the host);
  * Oxford Flowers102 at host size 224 (random resized crop) on `tfds.testing.mock_data`:
    no real Flowers here, and mocked images are small (tens of pixels a side), so this
    under-states the decode and crop cost of the real ~500x600 JPEGs.
and prints a Markdown table with the worker settings used. Run from the repo root:

  .venv/bin/python benchmarks/input_pipeline.py --workers=0,2 --batches=20
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import runpy
import sys
import time

from absl import app, flags, logging

import tensorflow_datasets as tfds

from nested_tnt_jax import data

_WORKERS = flags.DEFINE_list("workers", ["0", "2"], "grain worker counts to measure.")
_BATCHES = flags.DEFINE_integer("batches", 20, "Timed batches per setting (after 2 warm-up).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Global (= host) batch size.")
_PREFETCH = flags.DEFINE_integer("prefetch", 2, "Batches each worker keeps ready.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir",
    str(pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "tfds"),
    "TFDS data_dir holding the real CIFAR-10.",
)

# (label, dataset, host size, source of the records, cache_decoded)
_CASES = (
    ("CIFAR-10, pad-crop", "cifar10", 32, "real ../shared/tfds", False),
    ("CIFAR-10, pad-crop", "cifar10", 32, "real ../shared/tfds, decoded in memory", True),
    ("CIFAR-10, pad-crop + host resize", "cifar10", 224, "real ../shared/tfds", False),
    ("Flowers102, random resized crop", "oxford_flowers102", 224, "tfds mock_data", False),
)


_CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
sys.path.insert(0, str(_CONFIGS.parent))  # the config files import their package, `configs`
_CONFIG_FILE = {"cifar10": "cifar10.py", "oxford_flowers102": "flowers102.py"}


def _throughput(dataset: str, size: int, workers: int, data_dir: str, cached: bool) -> float:
    """img/s of the train iterator built from the dataset's shipped config, with this case's
    host size, workers and caching."""
    config = runpy.run_path(str(_CONFIGS / _CONFIG_FILE[dataset]))["get_config"]()
    with config.unlocked():
        config.dataset.data_dir = data_dir
        config.input.update(
            host_image_size=size,
            worker_count=workers,
            prefetch=_PREFETCH.value,
            cache_decoded=cached,
        )
    iterator = data.create_train_iterator(
        config.dataset,
        config.augment,
        config.input,
        global_batch_size=_BATCH_SIZE.value,
        image_size=size,
        seed=0,
    )
    for _ in range(2):  # worker start-up and first reads
        next(iterator)
    start = time.perf_counter()
    for _ in range(_BATCHES.value):
        next(iterator)
    elapsed = time.perf_counter() - start
    del iterator
    return _BATCHES.value * _BATCH_SIZE.value / elapsed


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # keep TFDS's per-dataset info lines out of the table
    rows = []
    for label, dataset, size, origin, cached in _CASES:
        mock = tfds.testing.mock_data(num_examples=4096) if "mock" in origin else None
        with mock or contextlib.nullcontext():
            for workers in map(int, _WORKERS.value):
                rate = _throughput(dataset, size, workers, _DATA_DIR.value, cached)
                rows.append((label, origin, size, workers, rate))
                print(
                    f"{label} ({origin}) @ {size}px, {workers} workers: {rate:,.0f} img/s",
                    flush=True,
                )
    print()
    print(
        f"Host pipeline throughput on {os.cpu_count()} CPU cores (batch {_BATCH_SIZE.value}, "
        f"prefetch {_PREFETCH.value}/worker, {_BATCHES.value} timed batches; the cores are "
        "shared with other jobs, so figures are lower bounds):"
    )
    print()
    print("| dataset / augmentation | records | host px | grain workers | img/s |")
    print("|---|---|---|---|---|")
    for label, origin, size, workers, rate in rows:
        print(f"| {label} | {origin} | {size} | {workers} | {rate:,.0f} |")


if __name__ == "__main__":
    app.run(main)
