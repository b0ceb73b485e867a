"""Oxford Flowers102: the paper's fine-tuning setup (from the CIFAR-100 run).

Setup: 224 px, random-resized crops and flips on the host, SGD momentum 0.9, cosine decay after
a linear warmup, weight decay on weight matrices only, label smoothing 0.1, mixup; fine-tuned
from the CIFAR-100 checkpoint with a new 102-way head. TFDS splits: train (1020 images) for
training, validation for periodic evaluation, test (6149) for the final numbers.
  Command: python -m nested_tnt_jax.main --config=configs/flowers102.py:model=nested_tnt \
      --config.init_from=runs/c100_nested_tnt --workdir=runs/flowers_nested_tnt
  Hardware / time / accuracy: not measured here (needs an accelerator). The paper reports
  Nested-TNT above ViT by 2.78 and above TNT by 0.25 points top-1 on Flowers102 (its abstract).
"""

import pathlib
import runpy

common = runpy.run_path(str(pathlib.Path(__file__).with_name("common.py")))

PAPER = {
    **common["PAPER"],
    "num_epochs": 300.0,
    "batch_size": 64,
    "optim.learning_rate": 0.01,
    "optim.warmup_steps": 300,
    "eval_every_steps": 500,
}


def get_config(arg: str | None = None):
    """`arg`: `model=vit|tnt|nested_tnt`, `steps=N`, `batch=N` (comma separated)."""
    return common["dataset_config"]("oxford_flowers102", arg, paper=PAPER)
