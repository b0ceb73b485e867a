"""A short training run on the real CIFAR-10 (shared, read-only): the whole pipeline learns.

About two minutes on a 2-core CPU: the CPU config with the small ViT for 150 steps, tested on
the first 2000 test images. Chance is 10%; the check asks for more than 25%.
"""

import pathlib
import runpy

from nested_tnt_jax import metrics, train

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_short_cifar10_run_learns(shared_tfds, tmp_path):
    config = runpy.run_path(str(ROOT / "configs" / "cifar10.py"))["get_config"](
        "model=vit,cpu,steps=150"
    )
    config.dataset.data_dir = str(shared_tfds)
    config.dataset.test_split = "test[:2000]"
    config.optim.warmup_steps = 20
    config.eval_every_steps = config.checkpoint_every_steps = 1000
    results = train.train_and_evaluate(config, str(tmp_path))
    assert results["test_examples"] == 2000
    assert results["test_top1"] > 0.25, results
    assert metrics.read_history(str(tmp_path))[-1]["top1"] == results["test_top1"]
