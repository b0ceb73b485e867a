"""The README's quick start, whole: `configs/cifar10.py:model=nested_tnt,cpu` on the real CIFAR-10.

Marked slow (12-21 minutes on an idle 2-core CPU; `pytest -m slow`). It checks README's accuracy
claim (at least 55% test top-1 on all 10,000 test images) through the real command line; the
time it took is printed, not asserted (speed is measured by benchmarks/).
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_cpu_config_reaches_55_percent_on_cifar10(shared_tfds, tmp_path):
    workdir = tmp_path / "c10_cpu"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "nested_tnt_jax.main",
            "--config=configs/cifar10.py:model=nested_tnt,cpu",
            f"--config.dataset.data_dir={shared_tfds}",
            f"--workdir={workdir}",
        ],
        # One CPU device, as in the README (the suite's conftest simulates eight).
        cwd=ROOT,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"},
    )
    results = json.loads((workdir / "results.json").read_text())
    print(
        f"test top-1 {results['test_top1']:.4f}, wall {results['wall_time_s']:.0f} s, "
        f"{results['train_img_per_sec_per_device']:.0f} img/s"
    )
    assert results["test_examples"] == 10_000
    assert results["test_top1"] >= 0.55, results
