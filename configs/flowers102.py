"""Oxford Flowers102: the paper's fine-tuning setup (from the CIFAR-100 run), and a small
variant that trains on a CPU.

Paper setup (`configs/flowers102.py:model=nested_tnt`, also `model=vit|tnt|nested_vit`): 224 px,
random-resized crops and flips on the host, SGD momentum 0.9, cosine decay after a linear
warmup, weight decay on weight matrices only, label smoothing 0.1, mixup; fine-tuned from the
CIFAR-100 checkpoint with a new 102-way head. TFDS splits: train (1,020 images) for training,
validation (1,020) for periodic evaluation, test (6,149) for the final numbers; evaluation
resizes the shorter side to 1/0.875 of the size and takes the centre crop, each test image
counted once.
  Command: python -m nested_tnt_jax.main --config=configs/flowers102.py:model=nested_tnt \
      --config.init_from=runs/c100_nested_tnt --workdir=runs/flowers_nested_tnt
  Hardware / time / result: not measured here (needs an accelerator). The paper reports
  Nested-TNT above ViT by 2.78 and above TNT by 0.25 points top-1 on Flowers102 (its abstract).

CPU variant (`configs/flowers102.py:model=nested_tnt,cpu`): the CPU recipe of configs/cifar10.py
(`cifar10.cpu`: the `*_cifar_patch8_word4_32` models, AdamW lr 5e-4, weight decay 0.05, batch
64, label smoothing 0.1, logit noise 0.1) at 64 px, from scratch, with random-resized crops and
flips on the host. 64 px gives 8x8 patches of 8x8 pixels: the flowers keep more detail than at
CIFAR's 32 px, at about four times the cost per image. The splits are read into memory once
(`input.cache_decoded`): training images with their shorter side shrunk to 128 px, from which
the random crops are cut, evaluation images as their 64 px centre crops, so the host does not
decode a full-size JPEG per step. From scratch: the 32 px CIFAR-10 CPU run cannot be its
init_from, its position embeddings having another size.
  Command: python -m nested_tnt_jax.main --config=configs/flowers102.py:model=nested_tnt,cpu \
      --config.dataset.data_dir=DIR_WITH_FLOWERS102 --workdir=runs/flowers_cpu
  Hardware: a 2-core x86 CPU, float32.
  Time: 1,500 steps (94 epochs), expected about 15 minutes on a 2-core CPU, an estimate from
  the CIFAR-10 CPU run's speed at 4x the pixels per image, not a measurement. The run end to end
  on TFDS mock data with Flowers' split sizes and 500 px JPEGs of varying width:
  `python tests/test_cpu_variants.py flowers102 WORKDIR 200`.
  Result: not measured (the project's shared data holds only CIFAR-10). On the mock data
  (random pixels and labels) test top-1 is chance, 1.1% on its 6,149 images.

Arguments: as configs/cifar10.py (`model=...`, `cpu`, `steps=N`, `batch=N`).
"""

import ml_collections

from configs import cifar10, common


def paper(c: ml_collections.ConfigDict) -> None:
    """The paper's Flowers102 fine-tuning (224 px, SGD, random-resized crops on the host)."""
    c.image_size = 224
    c.batch_size = 64
    c.num_epochs = 300.0
    c.optim.name = "sgd"
    c.optim.learning_rate = 0.01
    c.optim.momentum = 0.9
    c.optim.weight_decay = 1e-4
    c.optim.warmup_steps = 300
    c.optim.grad_clip_norm = 1.0
    c.augment.mixup_alpha = 0.8
    c.augment.label_smoothing = 0.1
    c.model.overrides.drop_path_rate = 0.1
    c.eval_every_steps = 500


def cpu(c: ml_collections.ConfigDict) -> None:
    """configs/cifar10.py's CPU recipe at 64 px, for 1,500 steps."""
    cifar10.cpu(c)
    c.image_size = 64
    c.input.host_image_size = 64
    c.input.cache_decoded = True
    c.num_train_steps = 1500
    c.num_epochs = 300.0  # unused: num_train_steps is set
    c.checkpoint_every_steps = 500
    c.eval_every_steps = 250


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg`: `model=...`, `cpu`, `steps=N`, `batch=N`, comma separated."""
    c, args = common.model_config("oxford_flowers102", arg)
    (cpu if args.cpu else paper)(c)
    return common.finish(c, args)
