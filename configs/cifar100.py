"""CIFAR-100: the paper's pre-training run, whose checkpoint CIFAR-10 and Flowers102 start from,
and the CIFAR-10 CPU recipe on CIFAR-100.

Paper setup (`configs/cifar100.py:model=nested_tnt`, also `model=vit|tnt|nested_vit`): 224 px
(bicubic upsampling on device), SGD momentum 0.9, cosine decay after a linear warmup, weight
decay on weight matrices only, label smoothing 0.1, mixup; from scratch.
  Command: python -m nested_tnt_jax.main --config=configs/cifar100.py:model=nested_tnt \\
      --workdir=runs/c100_nested_tnt
  Hardware / time / result: not measured here (needs an accelerator); the paper reports its
  CIFAR-100 top-1 for ViT, TNT and Nested-TNT with Nested-TNT the highest.

CPU variant (`configs/cifar100.py:model=nested_tnt,cpu`): exactly the CPU setup of
configs/cifar10.py (`cifar10.cpu`: 32 px, the `*_cifar_patch8_word4_32` models, AdamW, 8,000
steps of 64, flip only, logit noise 0.1, from scratch) on CIFAR-100's 100 classes. Only the
classifier head differs, so it trains at CIFAR-10's CPU speed.
  Command: python -m nested_tnt_jax.main --config=configs/cifar100.py:model=nested_tnt,cpu \\
      --config.dataset.data_dir=DIR_WITH_CIFAR100 --workdir=runs/c100_cpu
  Hardware: a 2-core x86 CPU, float32.
  Time: as configs/cifar10.py's CPU run, 12-21 min for the 8,000 steps on a 2-core CPU (the
  same model, input and steps; an expectation, not measured on CIFAR-100). The run end to end on
  TFDS mock data shaped like CIFAR-100: `python tests/test_cpu_variants.py cifar100 WORKDIR 500`.
  Result: not measured (the project's shared data holds only CIFAR-10). On the mock data
  (random pixels and labels) test top-1 is chance, 0.97% on its 10,000 images.

Arguments: as configs/cifar10.py (`model=...`, `cpu`, `steps=N`, `batch=N`).
"""

import ml_collections

from configs import cifar10, common


def paper(c: ml_collections.ConfigDict) -> None:
    """The paper's CIFAR-100 pre-training (224 px, SGD, from scratch)."""
    c.image_size = 224
    c.input.host_image_size = 32
    c.input.cache_decoded = True
    c.batch_size = 128
    c.num_epochs = 300.0
    c.optim.name = "sgd"
    c.optim.learning_rate = 0.1
    c.optim.momentum = 0.9
    c.optim.weight_decay = 1e-4
    c.optim.warmup_steps = 2000
    c.optim.grad_clip_norm = 1.0
    c.augment.mixup_alpha = 0.8
    c.augment.label_smoothing = 0.1
    c.model.overrides.drop_path_rate = 0.1


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg`: `model=...`, `cpu`, `steps=N`, `batch=N`, comma separated."""
    c, args = common.model_config("cifar100", arg)
    (cifar10.cpu if args.cpu else paper)(c)
    if args.cpu:
        c.num_epochs = 300.0  # unused: num_train_steps is set
    return common.finish(c, args)
