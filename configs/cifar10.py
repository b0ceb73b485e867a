"""CIFAR-10: the paper's fine-tuning setup, and a small variant that trains on a CPU.

Paper setup (`configs/cifar10.py:model=nested_tnt`, also `model=vit|tnt`): 224 px (CIFAR's
32 px images upsampled bicubically on device), SGD momentum 0.9, cosine decay after a linear
warmup, weight decay on weight matrices only, label smoothing 0.1, mixup; fine-tuned from the
CIFAR-100 run (`--config.init_from=runs/c100_nested_tnt`), see experiments/paper.md.
  Command: python -m nested_tnt_jax.main --config=configs/cifar10.py:model=nested_tnt \
      --config.init_from=runs/c100_nested_tnt --workdir=runs/c10_nested_tnt
  Hardware / time / accuracy: not measured here (needs an accelerator). The paper reports
  Nested-TNT above ViT by 2.25 and above TNT by 1.1 points top-1 on CIFAR-10 (its abstract).

CPU variant (`configs/cifar10.py:model=nested_tnt,cpu`): 32 px, trained from scratch, sized
for a 2-core CPU. Deviations from the paper setup, all for a short CPU run:
  - the `*_cifar_patch8_32` models (8x8 patches, 4x4 words per patch, 4 blocks) rather than
    `*_cifar_patch4_32`: on 2 cores the patch-4 Nested-TNT trains at ~12 img/s (~36 with 2x2
    words) against ~88 img/s for patch 8 (all measured while the CPU was shared, batch 128);
  - AdamW (lr 5e-4, weight decay 0.05, batch 64, 100 warmup steps) rather than SGD, the
    usual choice for small transformers trained from scratch (SGD was not tried here). Short
    runs (1000 validation images) gave 28.8% at lr 1.5e-3, 31.0% at 5e-4 and 33.6% at
    2.5e-4 after 250 steps, 35.3% for both lower rates after 375;
  - no mixup, no stochastic depth, and nested-attention logit noise scaled to 0.1 (the model's
    default is N(0, 1)): regularisers that only slow a run this short.
  Command: python -m nested_tnt_jax.main --config=configs/cifar10.py:model=nested_tnt,cpu \
      --config.dataset.data_dir=../shared/tfds --workdir=runs/c10_cpu
  Hardware / time / accuracy (measured on the 2-core CPU, idle): with
  `--config.num_train_steps=3400` (4.4 epochs, what fits 20 min at ~206 img/s) 18.5 min wall,
  test top-1 46.1%, top-5 92.4% on the 10k test set (docs/cifar10_cpu_curve.png); the default
  2000 steps take ~11 min (41.5%). This misses the 55%
  target of issue 4. Batch 128 at lr 1e-3 learned less per image (35.6% validation after one
  epoch, against 39.6% here); ViT/TNT at the same step count are compared in
  experiments/cpu_sweep/.
"""

import pathlib
import runpy

common = runpy.run_path(str(pathlib.Path(__file__).with_name("common.py")))

PAPER = {
    **common["PAPER"],
    "num_epochs": 100.0,
    "optim.warmup_steps": 1000,
    "input.host_image_size": 32,
}

CPU = {
    "image_size": 32,
    "batch_size": 64,
    "num_train_steps": 2000,
    "optim.name": "adamw",
    "optim.learning_rate": 5e-4,
    "optim.weight_decay": 0.05,
    "optim.warmup_steps": 100,
    "optim.grad_clip_norm": 1.0,
    "augment.mixup_alpha": 0.0,
    "augment.label_smoothing": 0.1,
    "model.overrides.drop_path_rate": 0.0,
    "checkpoint_every_steps": 500,
    "eval_every_steps": 250,
    "log_every_steps": 50,
}

# The nested-attention logit noise (N(0, 1) by default) scaled down for the short CPU run.
CPU_BY_FAMILY = {"nested_tnt": {"model.overrides.logit_noise": 0.1}}


def get_config(arg: str | None = None):
    """`arg`: `model=vit|tnt|nested_tnt`, `cpu`, `steps=N`, `batch=N` (comma separated)."""
    return common["dataset_config"]("cifar10", arg, paper=PAPER, cpu=CPU,
                                  cpu_by_family=CPU_BY_FAMILY)
