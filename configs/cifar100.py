"""CIFAR-100: the paper's pre-training run, whose checkpoint CIFAR-10 and Flowers102 start from.

Setup: 224 px (bicubic upsampling on device), SGD momentum 0.9, cosine decay after a linear
warmup, weight decay on weight matrices only, label smoothing 0.1, mixup; from scratch.
  Command: python -m nested_tnt_jax.main --config=configs/cifar100.py:model=nested_tnt \
      --workdir=runs/c100_nested_tnt
  Hardware / time / accuracy: not measured here (needs an accelerator); the paper reports its
  CIFAR-100 top-1 for ViT, TNT and Nested-TNT with Nested-TNT the highest.
A `cpu` variant (32 px, the `*_cifar_patch8_word4_32` TNT models or `vit_cifar_patch8_32`,
AdamW) exists for smoke tests; it was not tuned.
"""

import pathlib
import runpy

common = runpy.run_path(str(pathlib.Path(__file__).with_name("common.py")))

PAPER = {
    **common["PAPER"],
    "num_epochs": 300.0,
    "optim.learning_rate": 0.1,
    "optim.warmup_steps": 2000,
    "input.host_image_size": 32,
    "input.cache_decoded": True,
}

CPU = {
    "image_size": 32,
    "batch_size": 128,
    "num_epochs": 10.0,
    "optim.name": "adamw",
    "optim.learning_rate": 2e-3,
    "optim.weight_decay": 0.05,
    "optim.warmup_steps": 200,
    "augment.mixup_alpha": 0.0,
    "model.overrides.drop_path_rate": 0.0,
}


def get_config(arg: str | None = None):
    """`arg`: `model=vit|tnt|nested_tnt`, `cpu`, `steps=N`, `batch=N` (comma separated)."""
    return common["dataset_config"]("cifar100", arg, paper=PAPER, cpu=CPU)
