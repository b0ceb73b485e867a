"""The `cpu` variants of configs/flowers102.py and configs/cifar100.py train end to end.

In CI each runs its own model at its own resolution, a few steps, under TFDS mock data. Marked
slow (`pytest -m slow tests/test_cpu_variants.py -s`), each runs whole on mock data shaped like
the real dataset (Flowers102: its split sizes and 500 px JPEGs of varying width, decoded on
every read as TFDS does), on one CPU device, and prints the time it took; run as a script
(`python tests/test_cpu_variants.py flowers102 WORKDIR [STEPS]`) it does one such run. Their
accuracy is chance, the labels being random.
"""

import functools
import io
import json
import os
import pathlib
import platform
import runpy
import subprocess
import sys
import time
import types
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from test_train import _count_mock_split

from nested_tnt_jax import checkpointing, data, metrics, train
from nested_tnt_jax.data import integrity

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = {"flowers102": "oxford_flowers102", "cifar100": "cifar100"}
# Split sizes of the real datasets.
SPLITS = {
    "oxford_flowers102": {"train": 1020, "validation": 1020, "test": 6149},
    "cifar100": {"train": 50_000, "test": 10_000},
}


def cpu_config(name: str, steps: int | None = None):
    config = runpy.run_path(str(ROOT / "configs" / f"{name}.py"))["get_config"](
        "model=nested_tnt,cpu"
    )
    if steps is not None:
        config.num_train_steps = steps
        config.batch_size = 16  # a multiple of the 8 simulated devices
        config.optim.warmup_steps = 1
        config.log_every_steps = 1
        config.eval_every_steps = 2
        config.checkpoint_every_steps = steps
        # One scanned block body to compile instead of four (the same model and numbers).
        config.model.overrides.scan_blocks = True
    return config


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cpu_variant_trains_end_to_end_on_mock_data(name, tmp_path):
    config = cpu_config(name, steps=3)
    reference = cpu_config(name)
    assert config.model.name == reference.model.name == "nested_tnt_cifar_patch8_word4_32"
    assert config.image_size == (64 if name == "flowers102" else 32)
    assert config.augment.crop == ("random_resized" if name == "flowers102" else "pad")
    num_examples = 21  # not a multiple of the batch: the last test batch is padded
    with (
        tfds.testing.mock_data(num_examples=num_examples),
        mock.patch.object(integrity, "check_split", _count_mock_split),
    ):
        results = train.train_and_evaluate(config, str(tmp_path))
    saved = json.loads((tmp_path / metrics.RESULTS_FILE).read_text())
    assert saved["steps"] == 3 and saved["test_examples"] == num_examples
    assert saved == json.loads(json.dumps(results))
    assert np.isfinite(saved["test_loss"]) and 0.0 <= saved["test_top1"] <= 1.0
    rows = metrics.read_history(str(tmp_path))
    assert [r["step"] for r in rows if r["split"] == "eval"] == [2]
    assert rows[-1]["split"] == "test" and rows[-1]["step"] == 3
    assert os.listdir(tmp_path / checkpointing.CHECKPOINT_DIR) == ["3"]


class _Records:
    """A data source like TFDS's for one split: `length` records whose images are JPEGs of
    `shape`-like sizes decoded on every read (a few distinct files, reused), random labels."""

    def __init__(self, length: int, num_classes: int, sizes: list[tuple[int, int]]):
        rng = np.random.default_rng(length)
        self._files = []
        for height, width in sizes:
            buffer = io.BytesIO()
            pixels = rng.integers(0, 256, (height, width, 3), np.uint8)
            Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
            self._files.append(buffer.getvalue())
        self._labels = rng.integers(0, num_classes, length)
        self._length = length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict:
        data = self._files[index % len(self._files)]
        image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        return {"image": image, "label": np.int64(self._labels[index])}


def _like_the_real_data(dataset: str, split: str, **kwargs):
    """`as_data_source` for `tfds.testing.mock_data`: a split of `dataset`'s real size."""
    sizes = SPLITS[dataset]
    instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(
        {name: types.SimpleNamespace(num_examples=n) for name, n in sizes.items()}
    )
    length = sum(
        (sizes[i.splitname] if i.to is None else i.to) - (i.from_ or 0) for i in instructions
    )
    if dataset == "cifar100":
        shapes = [(32, 32)] * 4
    else:  # Flowers: 500 px on the shorter side, 500 to 1,000 px on the other
        shapes = [(500, w) for w in (500, 667, 750, 1000)] + [(667, 500), (750, 500)]
    return _Records(length, data.dataset_info(dataset).num_classes, shapes)


def measure(name: str, workdir: str, steps: int = 0) -> dict:
    """The config's CPU run (`steps` > 0: only so many steps) on mock data like the real
    dataset; returns its results with the wall time measured here."""
    dataset = CONFIGS[name]
    config = cpu_config(name)
    config.num_train_steps = steps or config.num_train_steps
    with (
        tfds.testing.mock_data(as_data_source_fn=functools.partial(_like_the_real_data, dataset)),
        mock.patch.object(integrity, "check_split", _count_mock_split),
    ):
        start = time.perf_counter()
        results = train.train_and_evaluate(config, workdir)
    results["measured_wall_s"] = time.perf_counter() - start
    return results


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cpu_variant_time_on_mock_data_like_the_real_one(name, tmp_path):
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device
    proc = subprocess.run(
        [sys.executable, __file__, name, str(tmp_path / "run")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"\n{name} cpu on mock data: {results['steps']} steps, wall "
        f"{results['measured_wall_s']:.0f} s, {results['train_img_per_sec_per_device']:.0f} "
        f"img/s, test top-1 {results['test_top1']:.4f} on {results['test_examples']} mock "
        f"images (chance); commit {commit}; host {platform.processor() or platform.machine()}"
        f", {os.cpu_count()} CPUs"
    )
    assert results["test_examples"] == SPLITS[CONFIGS[name]]["test"]


if __name__ == "__main__":  # python tests/test_cpu_variants.py CONFIG WORKDIR [STEPS]
    sys.path.insert(0, str(ROOT))  # the config files import their package, `configs`
    print(json.dumps(measure(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:]))))
